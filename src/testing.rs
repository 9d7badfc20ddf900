//! The crate's internals, declared here so that only this hidden module
//! makes them reachable from outside (the project's tests, benches and
//! examples); the crate itself names them `crate::<module>` (lib.rs).

#[path = "app_version.rs"]
pub mod app_version;
#[cfg(feature = "service")]
#[path = "config/mod.rs"]
pub mod config;
#[cfg(feature = "service")]
#[path = "database/mod.rs"]
pub mod database;
#[cfg(feature = "service")]
#[path = "emf.rs"]
pub mod emf;
#[path = "error.rs"]
pub mod error;
#[cfg(feature = "service")]
#[path = "grants.rs"]
pub mod grants;
#[path = "ingest/mod.rs"]
pub mod ingest;
#[cfg(feature = "service")]
#[path = "poll/mod.rs"]
pub mod poll;
#[path = "privacy/mod.rs"]
pub mod privacy;
#[path = "profile.rs"]
pub mod profile;
#[cfg(feature = "service")]
#[path = "secrets.rs"]
pub mod secrets;
#[cfg(feature = "service")]
#[path = "table/mod.rs"]
pub mod table;

/// The contract's columns as the crate's SQL names them (the contract's
/// modules are its own; these are what the tests and benches compare).
#[cfg(feature = "service")]
pub mod contract_columns {
    pub use crate::contract::columns::{array_types, names, select_list};
}
