//! The message contract: what a login message is, what the function
//! accepts, and the row it becomes. The ground floor: every other room may
//! use it, and it uses none of them (only the shared
//! [`crate::app_version`]).
//!
//! What it owns:
//! - `field`: the fields of a login and the names of fields outside them;
//! - `body`: a message body to a [`LoginEvent`] with its [`Defect`]s, or
//!   a [`Rejection`] when it is not a login; both name a field, never its
//!   value;
//! - `address` and [`crate::app_version`]: the address and the version a
//!   field carries, with what was set aside to find them;
//! - `policy`: `CONTRACT` (keep a login with defects, or reject it) and
//!   what becomes of a field outside the contract (`UNKNOWN_FIELDS`,
//!   `EXTRA_FIELDS`);
//! - `copy`: a dead-letter copy's masked body read back as a login (a
//!   login rebuilt from a copy that kept no original);
//! - `row`: the row a valid login becomes, its masked values as tokens;
//! - `columns`: that row's columns, declared once;
//! - `schema`: the contract as a JSON Schema for producers
//!   (docs/contract/login-event.schema.json).

pub(crate) mod address;
pub(crate) mod body;
pub(crate) mod defect;
pub(crate) mod field;
pub(crate) mod policy;
pub(crate) mod rebuilt_login;
pub(crate) mod rejection;
pub(crate) mod row;
// What the function's SQL and the producers' JSON Schema are made from:
// the "service" feature's (the fuzz target parses bodies only). Not in a
// cfg_if block: columns exports a macro the crate names by its path.
#[cfg(feature = "service")]
#[doc(hidden)]
pub mod columns;
#[cfg(feature = "service")]
pub(crate) mod schema;

pub use body::{LoginEvent, parse_body, parse_body_with};
pub use defect::Defect;
pub use field::{FIELDS, Field, FieldName};
pub use policy::{Contract, Mode, PolicyError, UnknownFields};
pub use rejection::{ExtraProblem, MAX_MESSAGE_ID_CHARS, NOT_A_PRODUCERS, Rejection};
pub use row::{LoginRow, RowKeyAndTokens, TOKEN_LEN, Token};
