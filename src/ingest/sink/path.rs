//! How a batch's rows are written: the one place the sink chooses among
//! its three paths, each kept because a benchmark shows where it pays
//! (docs/performance.md, "The write paths"):
//! - [`WritePath::Copy`]: one binary COPY, streamed while the records are
//!   read; from [`COPY_MIN_ROWS`](super::COPY_MIN_ROWS) rows, where it
//!   saves more than its second round trip costs;
//! - [`WritePath::OneStatement`]: `login_etl_write_tx`, one statement
//!   committed by its Sync (one answer, not three): a small batch's;
//! - [`WritePath::Framed`]: `BEGIN; SET LOCAL ...; INSERT; COMMIT`, which
//!   bounds a long INSERT on the server and carries what the one statement
//!   cannot (vault entries, a recount after a lost reply, the erasure check
//!   before the rows after a refusal).
//!
//! Bisecting refused rows ([`super::bisect`]) is a separate concern: any
//! range it tries takes the path [`for_range`] says.

use super::COPY_MIN_ROWS;

/// How one attempt writes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WritePath {
    Copy,
    OneStatement,
    Framed,
}

/// What an attempt at a range carries, beside its size: each a reason the
/// one statement cannot take it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Carries {
    /// A refused row came before it: the erasure check must run before the
    /// rows (a row of a user erased since is skipped, not refused).
    pub after_refusal: bool,
    /// A reply was lost: rows written since the floor count as inserted.
    pub recount: bool,
    /// The rows' vault entries, in the same transaction.
    pub vault: bool,
    /// The connection cannot run the one statement (its role may not
    /// execute it, or refused its isolation): framed from then on.
    pub connection_framed: bool,
}

/// The path a batch of about `expected_rows` opens as its records are
/// read: a COPY for a large one, else nothing yet (its rows take
/// [`for_range`] when they are written).
pub(crate) fn at_start(expected_rows: usize) -> Option<WritePath> {
    (expected_rows >= COPY_MIN_ROWS).then_some(WritePath::Copy)
}

/// The path an INSERT attempt at `rows` rows takes.
pub(crate) fn for_range(rows: usize, carries: Carries) -> WritePath {
    let Carries {
        after_refusal,
        recount,
        vault,
        connection_framed,
    } = carries;
    if after_refusal || recount || vault || connection_framed || rows >= COPY_MIN_ROWS {
        // A range of a COPY's size: a long INSERT, which the framed
        // transaction's statement_timeout bounds on the server.
        WritePath::Framed
    } else {
        WritePath::OneStatement
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_plain_range_is_one_statement_and_anything_it_cannot_carry_is_framed() {
        assert_eq!(at_start(COPY_MIN_ROWS - 1), None);
        assert_eq!(at_start(COPY_MIN_ROWS), Some(WritePath::Copy));
        assert_eq!(for_range(10, Carries::default()), WritePath::OneStatement);
        assert_eq!(for_range(COPY_MIN_ROWS, Carries::default()), WritePath::Framed);
        for carries in [
            Carries { after_refusal: true, ..Carries::default() },
            Carries { recount: true, ..Carries::default() },
            Carries { vault: true, ..Carries::default() },
            Carries { connection_framed: true, ..Carries::default() },
        ] {
            assert_eq!(for_range(10, carries), WritePath::Framed, "{carries:?}");
        }
    }
}
