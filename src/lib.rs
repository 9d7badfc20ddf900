//! login-etl: an AWS Lambda that moves user-login events from SQS into
//! PostgreSQL, masking PII (`ip`, `device_id`) with a keyed HMAC.
//!
//! Four folders, one concern each, the lower never using the higher:
//! - [`contract`]: the message contract at the bottom: a body to a
//!   validated login or a rejection, the row it becomes, its columns, the
//!   JSON Schema for producers;
//! - [`ingest`]: the batch path: event, record, handler, sink, DLQ,
//!   backoff, metrics;
//! - [`table`]: the table's life: schema and migrations, the online
//!   conversion, `maintain` (partitions, the DEFAULT partition, retention);
//! - [`privacy`]: masking and key versions, the vault, `reveal`, `forget`,
//!   `rotate-key`, the audit trail.
//!
//! Around them, the entry points and what they all share:
//! - [`cli`]: the binary's command line (clap); [`poll`]: `login-etl poll`,
//!   the long-running SQS consumer; `src/main.rs`: the Lambda entry point;
//! - [`startup`]: cold start, configuration to a ready handler;
//! - [`config`]: typed settings from the environment;
//! - [`profile`]: which tables and roles a deployment has (masking-only or full);
//! - [`secrets`]: AWS Secrets Manager (database secret, masking key);
//! - [`database`]: the connection every part opens: its settings with
//!   PostgreSQL's conventions, passwords or RDS IAM tokens, TLS;
//! - [`grants`]: the database roles as GRANT statements (`login-etl grants`);
//! - [`logging`]: the log subscriber and its PII guard;
//! - [`app_version`]: the sortable integer encoding of versions;
//! - [`synth`]: synthetic, realistic events for tests, demos and benchmarks;
//! - [`emf`]: what every EMF document shares (namespace, service, level);
//! - [`error`]: error types, none of which carries PII or secrets.

#![warn(missing_docs)]

pub mod app_version;
#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
pub mod config;
pub mod contract;
#[cfg(feature = "service")]
pub mod database;
#[cfg(feature = "service")]
pub mod emf;
pub mod error;
#[cfg(feature = "service")]
pub mod grants;
pub mod ingest;
#[cfg(feature = "service")]
pub mod logging;
#[cfg(feature = "service")]
pub mod poll;
pub mod privacy;
pub mod profile;
#[cfg(feature = "service")]
pub mod raw_payload;
#[cfg(feature = "service")]
pub mod secrets;
#[cfg(feature = "service")]
pub mod startup;
pub mod synth;
#[cfg(feature = "service")]
pub mod table;

#[cfg(feature = "service")]
pub use config::Config;
pub use error::{ConfigError, HandlerError, Misconfiguration, SecretError, SinkError};
pub use ingest::event::SqsBatch;
#[cfg(feature = "service")]
pub use ingest::handler::{BatchHandler, BatchSummary, Deadline, Outcome};
