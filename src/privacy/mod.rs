//! Privacy: what keeps an ip or a device_id from being read by anyone
//! without the right to.
//!
//! What it owns:
//! - [`masking`]: keyed, deterministic tokens under a chain of key versions;
//! - [`keys`]: the keys a batch is masked with, at the database's key
//!   version, and the erasure list it is filtered by, looked up at every
//!   key version (what the handler asks once per batch);
//! - [`vault`]: the PII vault (KMS envelope, AES-256-GCM);
//! - [`dead_letter`]: the original body of a dead-letter copy, sealed for
//!   the DLQ operator alone (the same envelope, a context of its own);
//! - [`reveal`]: `login-etl reveal`, the audited way back from a token, and
//!   the error the operator commands share;
//! - [`audit`]: the audit trail as `login-etl audit` reads it, and the
//!   caller every record names;
//! - [`forget`]: `login-etl forget`, erasure of one user;
//! - [`vault_upgrade`]: `login-etl vault-upgrade`, old vault entries bound
//!   to their key version;
//! - [`rekey`]: `login-etl rotate-key`, everything stored moved to the
//!   newest key version, online.
//!
//! The audit trail is SQL (migrations/0003 and 0007): every reveal,
//! erasure and re-key writes a record there, in the same transaction as
//! what it records.
//!
//! What it may call: the contract (the row it masks,
//! [`crate::contract::LoginRow`]); the partition list of
//! [`crate::table::maintain`] and the migration's lock key (re-key and
//! erasure walk the partitions, never while `maintain` moves one). A
//! batch's keys are checked against the erasure list, read and recorded
//! here ([`key_state::KeyState`]) on the connection the ingest sink lends:
//! nothing here names the ingest path.

pub mod masking;
cfg_if::cfg_if! {
    // What needs tokio, PostgreSQL and the AWS SDK (the "service" feature;
    // the fuzz target builds the masking alone).
    if #[cfg(feature = "service")] {
        pub mod audit;
        pub mod dead_letter;
        pub mod forget;
        pub mod key_check;
        pub mod key_state;
        pub mod keys;
        pub mod rekey;
        pub mod reveal;
        pub mod vault;
        pub mod vault_upgrade;
    }
}
