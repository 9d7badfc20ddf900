//! login-etl: an AWS Lambda that moves user-login events from SQS into
//! PostgreSQL, masking PII (`ip`, `device_id`) with a keyed HMAC.
//!
//! Four folders, one concern each, the lower never using the higher (the
//! crate's own: hidden from the docs, see below):
//! - [`contract`]: the message contract at the bottom: a body to a
//!   validated login or a rejection, the row it becomes, its columns, the
//!   JSON Schema for producers;
//! - `ingest`: the batch path: event, record, handler, sink, DLQ,
//!   backoff, metrics;
//! - `table`: the table's life: schema and migrations, the online
//!   conversion, `maintain` (partitions, the DEFAULT partition, retention);
//! - `privacy`: masking and key versions, the vault, `reveal`, `forget`,
//!   `rotate-key`, the audit trail.
//!
//! Around them, the entry points and what they all share:
//! - [`cli`]: the binary's command line (clap); `poll`: `login-etl poll`,
//!   the long-running SQS consumer; `src/main.rs`: the Lambda entry point;
//! - [`startup`]: cold start, configuration to a ready handler;
//! - `config`: typed settings from the environment;
//! - `profile`: which tables and roles a deployment has (masking-only or full);
//! - `secrets`: AWS Secrets Manager (database secret, masking key);
//! - `database`: the connection every part opens: its settings with
//!   PostgreSQL's conventions, passwords or RDS IAM tokens, TLS;
//! - `grants`: the database roles as GRANT statements (`login-etl grants`);
//! - [`logging`]: the log subscriber and its PII guard;
//! - [`telemetry`]: traces, OpenTelemetry spans exported by OTLP/HTTP
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
//! - `app_version`: the sortable integer encoding of versions;
//! - [`synth`]: synthetic, realistic events for tests, demos and benchmarks;
//! - `emf`: what every EMF document shares (namespace, service, level);
//! - `error`: error types, none of which carries PII or secrets.

#![warn(missing_docs)]
// The internals' docs are read with `cargo doc --document-private-items`
// (make lint), where a link to a private item resolves: what a module's
// doc names is often its private part.
#![allow(rustdoc::private_intra_doc_links)]

// The library's surface: the handler, its batch, deadline and outcome; the
// configuration and start-up; the message contract; synthetic events; and
// what the binary's entry points need (the command line, the log
// subscriber, the Lambda runtime's payload layer). The rest is the crate's
// own (below).
pub mod contract;
pub mod synth;
cfg_if::cfg_if! {
    // The "service" feature: left out of the fuzz target's build.
    if #[cfg(feature = "service")] {
        pub mod cli;
        pub mod logging;
        pub mod raw_payload;
        pub mod startup;
        pub mod telemetry;
    }
}

// The internals: reached by the project's tests, benches and examples, not
// an API (no stability; the code is its documentation), so hidden from the
// docs. Their docs are for the people who work on them (`cargo doc
// --document-private-items`, where a link to a private item resolves).
// Under `--cfg login_etl_dead_code` (make dead-code) they are private, so
// that rustc's dead-code lint sees an item nothing in the crate uses; what
// only tests use is behind the "test-support" feature.
macro_rules! internals {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(not(login_etl_dead_code))]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(login_etl_dead_code)]
        mod $name;
    )*};
}
internals!(app_version, error, ingest, privacy, profile);
#[cfg(feature = "service")]
internals!(config, database, emf, grants, poll, secrets, table);

#[cfg(feature = "service")]
pub use config::Config;
pub use error::{ConfigError, DbError, HandlerError, Misconfiguration, SecretError};
pub use ingest::event::SqsBatch;
#[cfg(feature = "service")]
pub use ingest::handler::{BatchHandler, BatchSummary, Deadline, Outcome};
pub use profile::Profile;
