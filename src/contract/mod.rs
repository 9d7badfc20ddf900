//! The message contract: what a login message is, what the function
//! accepts, and the row it becomes. The ground floor: every other room may
//! use it, and it uses none of them (only the shared
//! [`crate::app_version`]).
//!
//! What it owns:
//! - [`field`]: the fields of a login and the names of fields outside them;
//! - [`body`]: a message body to a validated [`LoginEvent`], or a
//!   [`Rejection`] that names a field and never its value;
//! - [`policy`]: what becomes of a field outside the contract
//!   (`UNKNOWN_FIELDS`, `EXTRA_FIELDS`);
//! - [`row`] and [`token`]: the row a valid login becomes;
//! - [`columns`]: that row's columns, declared once;
//! - [`schema`]: the contract as a JSON Schema for producers
//!   (docs/contract/login-event.schema.json).

pub mod body;
pub mod columns;
pub mod field;
pub mod policy;
pub mod rejection;
pub mod row;
pub mod schema;
pub mod token;

pub use body::{LoginEvent, parse_body, parse_body_with};
pub use field::{FIELDS, Field, FieldName};
pub use policy::{Contract, UnknownFields};
pub use rejection::{MAX_MESSAGE_ID_CHARS, Rejection};
pub use row::{LoginRow, RowKeyAndTokens};
pub use token::{TOKEN_LEN, Token};
