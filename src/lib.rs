//! login-etl: an AWS Lambda that moves user-login events from SQS into
//! PostgreSQL, masking PII (`ip`, `device_id`) with a keyed HMAC.
//!
//! One module per concern:
//! - [`config`]: typed settings from the environment;
//! - [`event`]: the Lambda payload, an SQS batch reduced to what is read;
//! - [`record`]: one SQS record to a validated, masked row, or a rejection;
//! - [`app_version`]: the sortable integer encoding of versions;
//! - [`masking`]: HMAC-SHA256 tokens;
//! - [`secrets`]: AWS Secrets Manager (database secret, masking key);
//! - [`tls`]: TLS to PostgreSQL;
//! - [`schema`]: the embedded DDL, its migration, the online conversion of an unpartitioned table;
//! - [`maintain`]: the table's life: partitions made ahead, retention, the DEFAULT partition;
//! - [`sink`]: PostgreSQL I/O (COPY fast path, bulk insert, refusal isolation, reconnects);
//! - [`handler`]: one batch to a partial-batch response and a summary;
//! - [`cli`]: the binary's command line (clap);
//! - [`dlq`]: rejected records straight to the dead-letter queue;
//! - [`backoff`]: per-message visibility backoff after an infrastructure failure;
//! - [`metrics`]: the summary as a CloudWatch EMF document;
//! - [`vault`]: the PII vault (KMS envelope, AES-256-GCM);
//! - [`reveal`]: the operators' `reveal` and `forget` commands;
//! - [`poll`]: `login-etl poll`, the long-running SQS consumer;
//! - [`logging`]: the log subscriber and its PII guard;
//! - [`startup`]: cold start, configuration to a ready handler;
//! - [`synth`]: synthetic, realistic events for tests, demos and benchmarks;
//! - [`grants`]: the database roles as GRANT statements (`login-etl grants`);
//! - [`error`]: error types, none of which carries PII or secrets.
//!
//! `src/main.rs` is the Lambda entry point.

#![warn(missing_docs)]

pub mod app_version;
#[cfg(feature = "service")]
pub mod backoff;
#[cfg(feature = "service")]
pub mod cli;
#[cfg(feature = "service")]
pub mod config;
#[cfg(feature = "service")]
pub mod dlq;
pub mod error;
pub mod event;
pub mod grants;
#[cfg(feature = "service")]
pub mod handler;
#[cfg(feature = "service")]
pub mod logging;
#[cfg(feature = "service")]
pub mod maintain;
pub mod masking;
#[cfg(feature = "service")]
pub mod metrics;
#[cfg(feature = "service")]
pub mod poll;
pub mod record;
#[cfg(feature = "service")]
pub mod rekey;
#[cfg(feature = "service")]
pub mod reveal;
#[cfg(feature = "service")]
pub mod schema;
#[cfg(feature = "service")]
pub mod secrets;
#[cfg(feature = "service")]
pub mod sink;
#[cfg(feature = "service")]
pub mod startup;
pub mod synth;
#[cfg(feature = "service")]
pub mod tls;
#[cfg(feature = "service")]
pub mod vault;

#[cfg(feature = "service")]
pub use config::Config;
pub use error::{ConfigError, HandlerError, Misconfiguration, SecretError, SinkError};
pub use event::SqsBatch;
#[cfg(feature = "service")]
pub use handler::{BatchHandler, BatchSummary, Deadline, Outcome};
