//! SQLSTATE classification: what the sink does about each kind of failure,
//! and error text that never quotes a row value.

use crate::database::sqlstate::{Class, Own, denied, names_own_function};
use crate::error::{DbError, Misconfiguration, describe};

/// How one database operation failed, by what can be done about it.
#[derive(Debug)]
pub(crate) enum WriteFailure {
    /// The data of some row was refused (data or constraint error, also at
    /// COMMIT): bisect to find it.
    Row(String),
    /// A conflict with another transaction (deadlock, serialization failure,
    /// lock or statement timeout): the connection is healthy, try again on it.
    Conflict(String),
    /// The connection is gone or the server cannot serve it now: reconnect.
    Transient(String),
    /// Retrying will not help.
    Fatal(DbError),
    /// The role may not read `xmin`, so rows a lost attempt committed cannot
    /// be told from older ones (see `insert::insert_tx`).
    RecountDenied,
    /// The batch was prepared with an erasure list or a key version that is
    /// no longer current ([`Own::ErasuresChanged`]: `login-etl forget`
    /// erased someone; [`Own::KeyVersionChanged`]: `login-etl rotate-key`
    /// began; both raised by `login_etl_check_write`): nothing was written.
    Outdated,
    /// The one-statement write cannot run on this connection; nothing was
    /// written: write in the framed transaction.
    Unframed(Unframed),
}

/// Why the one-statement write cannot run on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unframed {
    /// It refused the isolation level a role stored since the
    /// connection's check ([`Own::IsolationRefused`], raised before it
    /// read anything); the framed transaction pins READ COMMITTED.
    Isolation,
    /// The role may not execute `login_etl_write_tx`: one granted what an
    /// earlier version's `login-etl grants` printed, not registered for
    /// `migrate` to grant it more.
    NoExecute,
}

/// Sorts a statement failure by what can be done about it: the shared
/// classification ([`Class`]), with what only the batch's write adds (its
/// own refusals, and which undefined function is the schema's fault).
pub(crate) fn classify(e: &tokio_postgres::Error) -> WriteFailure {
    let code = e.code().map_or("", |state| state.code());
    match Own::of(e) {
        Some(Own::ErasuresChanged | Own::KeyVersionChanged) => return WriteFailure::Outdated,
        Some(Own::IsolationRefused) => return WriteFailure::Unframed(Unframed::Isolation),
        _ => {}
    }
    if Class::of(e) == Class::Privilege
        && matches!(denied(e), Some(("function", "login_etl_write_tx")))
    {
        return WriteFailure::Unframed(Unframed::NoExecute);
    }
    match Class::of(e) {
        Class::Conflict(_) => WriteFailure::Conflict(describe(e)),
        Class::Unavailable => WriteFailure::Transient(describe(e)),
        Class::Row => WriteFailure::Row(describe_refusal(e)),
        // The configuration, not the database: a missing grant, a schema
        // not migrated (a table, column or function of login-etl's
        // missing; another function's is a trigger's or an extension's:
        // below). Their own failure classes.
        Class::Privilege => WriteFailure::Fatal(DbError::Misconfigured {
            what: Misconfiguration::PrivilegeMissing,
            op: "the insert into user_logins",
            cause: describe(e),
            hint: crate::grants::privilege_hint(e).into(),
        }),
        Class::Schema if code != "42883" || names_own_function(e) => {
            WriteFailure::Fatal(DbError::Misconfigured {
                what: Misconfiguration::SchemaIncomplete,
                op: "the insert into user_logins",
                cause: describe(e),
                hint: "; the schema is missing or not upgraded: run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true".into(),
            })
        }
        _ => WriteFailure::Fatal(DbError::Fatal {
            op: "the insert into user_logins",
            // Class 42 (syntax, undefined objects, privileges) names objects,
            // never values; any other class may be a trigger's own code with
            // a message that quotes a row: the SQLSTATE only.
            cause: if code.starts_with("42") {
                describe(e)
            } else {
                describe_refusal(e)
            },
            hint: "".into(),
        }),
    }
}

/// The SQLSTATE in a refusal's text ([`describe_refusal`]); `XXXXX` if none.
pub(crate) fn sqlstate_of(refusal: &str) -> String {
    refusal
        .strip_prefix("SQLSTATE ")
        .and_then(|rest| rest.get(..5))
        .filter(|code| code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("XXXXX")
        .to_owned()
}

/// A refusal as SQLSTATE and constraint only: its message can name values
/// (a trigger's `RAISE` text, "Failing row contains ...").
fn describe_refusal(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.constraint() {
            Some(c) => format!("SQLSTATE {} on constraint {c}", db.code().code()),
            None => format!("SQLSTATE {}", db.code().code()),
        },
        None => describe(e),
    }
}
