//! What a failed statement's SQLSTATE says can be done about it: the one
//! classification the batch's write, `migrate`, `maintain`, `forget` and
//! `rotate-key` share (PostgreSQL's Appendix A names the classes), and
//! login-etl's own SQLSTATEs a caller acts on ([`Own`]). Each conflict a
//! retry loop retries is named here, and the loop says which; a few
//! callers still match one SQLSTATE of their own (an undefined function,
//! a password refused), to be moved here.

/// A failure, by what can be done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Another transaction was in the way: the connection is healthy,
    /// and the same work can succeed on it when tried again.
    Conflict(Conflict),
    /// The connection or the server, not the statement: no SQLSTATE at all
    /// (I/O, TLS, a closed connection), a connection exception (08), too
    /// many connections or no disk (53), a shutdown by an operator (57;
    /// a statement cancelled, 57014, is a [`Conflict`](Class::Conflict)), a
    /// system error (58), another rollback (40), an object in use (55), an
    /// invalid transaction state (25: above all a read-only transaction
    /// after a failover), an internal error (XX). Tried again later, on a new connection,
    /// it can succeed.
    Unavailable,
    /// The data of a row was refused: a data exception (22), a constraint
    /// (23), a PL/pgSQL raise (P0: a trigger), a program limit (54, an
    /// index row too large).
    Row,
    /// The schema is not what login-etl's statements expect: an undefined
    /// table (42P01), column (42703), conflict target (42P10) or function
    /// (42883): `migrate` has not run, or the role cannot see the schema.
    Schema,
    /// The role lacks a privilege (42501): `login-etl grants`.
    Privilege,
    /// Anything else, login-etl's own refusals ([`Own`]) among them: trying
    /// again will not help.
    Other,
}

/// How another transaction was in the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// A serialization failure (40001).
    Serialization,
    /// A deadlock, this transaction the one rolled back (40P01).
    Deadlock,
    /// A lock not had within `lock_timeout` (55P03).
    LockTimeout,
    /// A statement cancelled by `statement_timeout` (57014).
    Cancelled,
}

/// login-etl's own SQLSTATEs, raised by the owner's functions
/// (migrations/functions/*.sql): the refusals a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// LE001: the erasure list changed since the batch read it (a forget).
    ErasuresChanged,
    /// LE002: the key version changed since the batch read it (a rotation).
    KeyVersionChanged,
    /// LE003: a forget between its deletes and its end holds tokens of
    /// the current key version.
    ErasureUnfinished,
    /// LE004: the keys given are not the database's (their check values).
    KeysDiffer,
    /// LE005: vault entries of the old form remain (`vault-upgrade`).
    VaultNotUpgraded,
    /// LE006: the vault's index a rotation needs is missing (`migrate`).
    VaultIndexMissing,
    /// LE007: `maintain` is draining a swapped-out DEFAULT partition.
    DrainUnderWay,
    /// LE013: no rotation armed by the tables' owner with these keys.
    RotationNotArmed,
    /// LE016: the one-statement write refused the session's isolation
    /// level (one a role stored for itself).
    IsolationRefused,
}

impl Own {
    const ALL: [(Own, &'static str); 9] = [
        (Own::ErasuresChanged, "LE001"),
        (Own::KeyVersionChanged, "LE002"),
        (Own::ErasureUnfinished, "LE003"),
        (Own::KeysDiffer, "LE004"),
        (Own::VaultNotUpgraded, "LE005"),
        (Own::VaultIndexMissing, "LE006"),
        (Own::DrainUnderWay, "LE007"),
        (Own::RotationNotArmed, "LE013"),
        (Own::IsolationRefused, "LE016"),
    ];

    /// Its SQLSTATE.
    pub fn code(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(own, _)| *own == self)
            .map(|(_, code)| *code)
            .expect("every refusal has its code")
    }

    /// The refusal a failed statement carries, if it is one of these.
    pub fn of(e: &tokio_postgres::Error) -> Option<Own> {
        let code = e.code()?.code();
        Self::ALL
            .iter()
            .find(|(_, c)| *c == code)
            .map(|(own, _)| *own)
    }
}

impl Class {
    /// The class of `code` (`None`: the error carried no SQLSTATE).
    pub fn of_code(code: Option<&str>) -> Class {
        let Some(code) = code else {
            return Class::Unavailable;
        };
        match code {
            "40001" => return Class::Conflict(Conflict::Serialization),
            "40P01" => return Class::Conflict(Conflict::Deadlock),
            "55P03" => return Class::Conflict(Conflict::LockTimeout),
            "57014" => return Class::Conflict(Conflict::Cancelled),
            "42P01" | "42703" | "42P10" | "42883" => return Class::Schema,
            "42501" => return Class::Privilege,
            _ => {}
        }
        match code.get(..2).unwrap_or("") {
            "08" | "53" | "57" | "58" | "40" | "55" | "25" | "XX" => Class::Unavailable,
            "22" | "23" | "P0" | "54" => Class::Row,
            _ => Class::Other,
        }
    }

    /// The class of a failed statement.
    pub fn of(e: &tokio_postgres::Error) -> Class {
        Class::of_code(e.code().map(|state| state.code()))
    }

    /// True when trying again can succeed with no change by a human.
    pub fn is_transient(self) -> bool {
        matches!(self, Class::Conflict(_) | Class::Unavailable)
    }

    /// Whether `e` is one of these conflicts (a retry loop's policy).
    pub fn conflict_among(e: &tokio_postgres::Error, retried: &[Conflict]) -> bool {
        matches!(Class::of(e), Class::Conflict(c) if retried.contains(&c))
    }
}

/// The kind and name of what a 42501 denies ("permission denied for table
/// user_logins_pii_vault": `("table", "user_logins_pii_vault")`): what a
/// hint names, never what decides a class.
pub fn denied(e: &tokio_postgres::Error) -> Option<(&str, &str)> {
    e.as_db_error()?
        .message()
        .strip_prefix("permission denied for ")?
        .split_once(' ')
        .filter(|(_, name)| !name.is_empty())
}

/// A 42883 (undefined function) about one of login-etl's own functions
/// (a schema not migrated), not a trigger's or an extension's; named by
/// schema or not (the one-statement write names its schema).
pub fn names_own_function(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .and_then(|db| db.message().strip_prefix("function "))
        .and_then(|rest| rest.split('(').next())
        .and_then(|name| name.rsplit('.').next())
        .is_some_and(|name| name.starts_with("login_etl_"))
}

#[cfg(test)]
mod tests {
    use super::{Class, Conflict};

    #[test]
    fn each_class_of_sqlstate_has_one_answer() {
        for (code, class, transient) in [
            (None, Class::Unavailable, true),
            (Some("08006"), Class::Unavailable, true),
            (Some("53300"), Class::Unavailable, true),
            (Some("57P01"), Class::Unavailable, true),
            (Some("58030"), Class::Unavailable, true),
            (Some("40003"), Class::Unavailable, true),
            (Some("55006"), Class::Unavailable, true),
            (Some("25006"), Class::Unavailable, true),
            (Some("XX000"), Class::Unavailable, true),
            (Some("40001"), Class::Conflict(Conflict::Serialization), true),
            (Some("40P01"), Class::Conflict(Conflict::Deadlock), true),
            (Some("55P03"), Class::Conflict(Conflict::LockTimeout), true),
            (Some("57014"), Class::Conflict(Conflict::Cancelled), true),
            (Some("22001"), Class::Row, false),
            (Some("23514"), Class::Row, false),
            (Some("P0001"), Class::Row, false),
            (Some("54000"), Class::Row, false),
            (Some("42P01"), Class::Schema, false),
            (Some("42703"), Class::Schema, false),
            (Some("42P10"), Class::Schema, false),
            (Some("42883"), Class::Schema, false),
            (Some("42501"), Class::Privilege, false),
            (Some("42601"), Class::Other, false),
            (Some("LE010"), Class::Other, false),
            (Some("0A000"), Class::Other, false),
        ] {
            assert_eq!(Class::of_code(code), class, "{code:?}");
            assert_eq!(class.is_transient(), transient, "{code:?}");
        }
    }
}
