//! What a failed statement's SQLSTATE says can be done about it: the one
//! classification the batch's write, `migrate` and `maintain` share, so
//! that they never disagree on what is worth trying again (PostgreSQL's
//! Appendix A names the classes). `rotate-key` retries its own chunks on a
//! deadlock or a serialization failure alone (`privacy::rekey`).

/// A failure, by what can be done about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Another transaction was in the way (serialization failure,
    /// deadlock, a lock or statement timeout): the connection is healthy,
    /// and the same work can succeed on it when tried again.
    Conflict,
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
    /// Anything else, login-etl's own refusals (LE...) among them: trying
    /// again will not help.
    Other,
}

impl Class {
    /// The class of `code` (`None`: the error carried no SQLSTATE).
    pub fn of_code(code: Option<&str>) -> Class {
        let Some(code) = code else {
            return Class::Unavailable;
        };
        match code {
            "40001" | "40P01" | "55P03" | "57014" => return Class::Conflict,
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
        matches!(self, Class::Conflict | Class::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::Class;

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
            (Some("40001"), Class::Conflict, true),
            (Some("40P01"), Class::Conflict, true),
            (Some("55P03"), Class::Conflict, true),
            (Some("57014"), Class::Conflict, true),
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
