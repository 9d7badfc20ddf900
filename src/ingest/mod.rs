//! The ingest path: one SQS batch in, rows in `user_logins`, dead letters and
//! a partial-batch response out.
//!
//! What it owns, in the order a batch meets it:
//! - [`event`]: the Lambda payload, an SQS batch reduced to what is read;
//! - [`record`]: one SQS record to a validated, masked row, or a rejection;
//! - [`handler`]: one batch to a partial-batch response and a summary;
//! - [`sink`]: PostgreSQL I/O (COPY fast path, bulk insert, refusal
//!   isolation, reconnects);
//! - [`dlq`]: rejected records straight to the dead-letter queue, masked,
//!   their originals sealed;
//! - [`redrive`]: `login-etl dlq-redrive`, the originals sent back;
//! - [`backoff`]: per-message visibility backoff after an infrastructure failure;
//! - [`sqs_batch`]: how SQS's batch calls are cut (ten entries, 900 KiB a send);
//! - [`metrics`]: the summary as a CloudWatch EMF document;
//! - [`trace`]: the batch's spans (OpenTelemetry), when tracing is on.
//!
//! What it may call: [`crate::privacy`] for the batch's keys (masker, key
//! version, erasure list) and the vault's entries, the schema guard of
//! [`crate::table::schema`] when a connection opens, and what every part
//! shares (configuration, secrets, TLS, errors, the grants' hints). Nothing
//! here runs DDL or reads the vault back.

pub mod event;
pub mod record;
cfg_if::cfg_if! {
    // What needs tokio, PostgreSQL and the AWS SDK (the "service" feature;
    // the fuzz target builds the parser alone).
    if #[cfg(feature = "service")] {
        pub mod backoff;
        pub mod dlq;
        pub mod handler;
        pub mod metrics;
        pub mod redrive;
        pub mod sink;
        pub mod sqs_batch;
        pub mod summary;
        pub mod trace;
    }
}
