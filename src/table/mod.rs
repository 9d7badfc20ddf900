//! The table's life: the `user_logins` schema and its migrations, the
//! online conversion of an unpartitioned table, and `login-etl maintain`
//! (partitions made ahead, the DEFAULT partition emptied, retention).
//!
//! What it owns:
//! - [`schema`]: the embedded migrations, how they are applied, the guard
//!   that refuses to write into a table that could double rows, and
//!   [`schema::convert`];
//! - [`maintain`]: the partitions of the coming days, DEFAULT rows moved
//!   into their own partition;
//! - [`partitions`]: making one partition, the partition list and the
//!   segments other walks use (`forget`, `rotate-key`);
//! - [`privileges`]: what each role may do, as GRANT statements;
//! - [`retry`]: a failed statement as an error, and the retries of a step
//!   that waited too long for its lock;
//! - [`doctor`]: what an operator must keep true of the database, checked
//!   (`login-etl doctor`);
//! - [`retention`]: what `RETENTION_DAYS` removes: rows, partitions, and
//!   the PII vault's entries no row within it uses (the vault's table is
//!   privacy's, its age is the table's life).
//!
//! What it may call: the contract ([`crate::contract::columns`]: the
//! columns the write function takes) and what every room shares
//! ([`crate::emf`] for `maintain`'s EMF document, configuration, errors);
//! nothing of the ingest path or of privacy.

pub mod doctor;
pub mod maintain;
pub mod partitions;
pub mod privileges;
pub mod retention;
pub mod retry;
pub mod schema;
