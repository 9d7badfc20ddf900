//! The INSERT path's policy, one part per reason to change:
//! - [`PgSink::insert_rows`]: bisection around refused rows (and the FIFO
//!   stop at the first one), one transaction per range;
//! - [`PgSink::try_range`]: one attempt at a range: its connection, its
//!   vault entries, the floor to recount from were its reply lost;
//! - [`PgSink::after_failure`]: the retry policy (split, retry, reconnect,
//!   give up) for each kind of [`WriteFailure`].

use std::ops::Range;

use tracing::{debug, trace, warn};

use super::budget::Budget;
use super::classify::{self, WriteFailure, Unframed};
use super::insert;
use super::path::{self, Carries, WritePath};
use super::tx::VaultRows;
use super::tx::XidFloor;
use super::{CONFLICT_PAUSE, InsertReport, PgSink};
use crate::contract::LoginRow;
use crate::error::DbError;
use crate::privacy::keys::Versions;
use crate::privacy::vault::VaultWrite;

const OP: &str = "inserting the batch";

/// What becomes of a range after one attempt.
enum Next {
    /// Committed: the rows this invocation wrote.
    Committed(u64),
    /// Its one row was refused, for this reason (SQLSTATE and constraint).
    Refused(String),
    /// Some row in it was refused: try each half.
    Split,
    /// The one statement refused a row, and its check comes after its
    /// INSERT: the rest of the batch is written framed, the check first,
    /// so that a row of a user erased since is skipped (`Own::ErasuresChanged`), not
    /// refused (a range of one row is tried again, a longer one split).
    Reframe,
    /// Try it again, recounting from this floor (the lost attempt's) if any.
    Retry(Option<XidFloor>),
}

/// One range of the batch still to write, and the floor to recount it from.
type Todo = (Range<usize>, Option<XidFloor>);

impl PgSink {
    /// The INSERT path: the rows in one transaction, bisecting around refused
    /// rows (k bad rows in n cost O(k log n) transactions). With
    /// `preserve_order` (FIFO) it stops at the first refused row: every row
    /// before it is committed, none after it is attempted. `recount_since`:
    /// the xid floor before an attempt whose outcome is unknown (see
    /// [`insert::insert_tx`]).
    pub(super) async fn insert_rows(
        &mut self,
        rows: &[&LoginRow<'_>],
        erased_version: Versions,
        preserve_order: bool,
        budget: &mut Budget,
        recount_since: Option<XidFloor>,
        vault: Option<VaultWrite<'_>>,
    ) -> Result<InsertReport, DbError> {
        let mut report = InsertReport::default();
        let mut committed = 0usize;
        // Ranges to try, popped in batch order (right half pushed first).
        let mut todo: Vec<Todo> = vec![(0..rows.len(), recount_since)];
        // Whether the rest of the batch is written framed (after a refusal).
        let mut framed = false;
        while let Some((range, recount)) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            report.statements += 1;
            let attempt = (range.clone(), recount);
            match self
                .try_range(rows, attempt, erased_version, budget, vault, framed)
                .await?
            {
                Next::Committed(inserted) => {
                    report.inserted += inserted;
                    committed += range.len();
                }
                Next::Refused(why) => {
                    warn!(
                        message_id = rows[range.start].message_id,
                        error = %why,
                        "row refused by the database"
                    );
                    report.refused.push(range.start);
                    report.refused_codes.push(classify::sqlstate_of(&why));
                    if preserve_order {
                        // Rows after it stay unattempted; the caller reports them.
                        break;
                    }
                }
                // After a refused row the rest of the batch is framed: a
                // refused range of one row is tried again so (its check
                // first), a longer one is split as ever.
                Next::Reframe if range.len() == 1 => {
                    framed = true;
                    todo.push((range, recount));
                }
                Next::Split | Next::Reframe => {
                    framed = true;
                    let mid = range.start + range.len() / 2;
                    todo.push((mid..range.end, recount));
                    todo.push((range.start..mid, recount));
                }
                Next::Retry(since) => todo.push((range, since)),
            }
        }
        report.duplicates = (committed as u64).saturating_sub(report.inserted);
        Ok(report)
    }

    /// One INSERT attempt at `rows[range]`, with the vault entries of
    /// exactly those rows, and what the policy makes of its outcome; the
    /// one statement (`insert::write_alone`) or the framed transaction, as
    /// [`path::for_range`] chooses.
    async fn try_range(
        &mut self,
        rows: &[&LoginRow<'_>],
        (range, recount): Todo,
        erased_version: Versions,
        budget: &mut Budget,
        vault: Option<VaultWrite<'_>>,
        framed: bool,
    ) -> Result<Next, DbError> {
        let bound = budget.bound(self.per_operation(), OP)?;
        trace!(first = range.start, rows = range.len(), "inserting");
        if let Err(e) = self.client(budget).await {
            if !e.is_retryable() || matches!(e, DbError::Deadline { .. }) {
                return Err(e);
            }
            // Nothing was sent: nothing new to recount.
            self.reconnect_or_fail(budget, OP, e.to_string()).await?;
            return Ok(Next::Retry(recount));
        }
        // The floor this attempt is recounted from, were its reply lost
        // (read after connecting: the first connection sets it).
        let since = recount.or(self.floor);
        let client = self.client.as_ref().expect("connected above");
        let vault_rows = vault.map(|v| VaultRows::of(v, range.clone()));
        let carries = Carries {
            after_refusal: framed,
            recount: recount.is_some(),
            vault: vault_rows.is_some(),
            connection_framed: self.frame_writes,
        };
        let alone = path::for_range(range.len(), carries) == WritePath::OneStatement;
        let attempt = if alone {
            insert::write_alone(
                client,
                &rows[range.clone()],
                erased_version,
                &insert::write_alone_sql(&self.tables_schema),
                self.server_bound(bound),
                bound,
            )
            .await
        } else {
            insert::insert_tx(
                client,
                &rows[range.clone()],
                erased_version,
                &self.begin_sql(bound),
                bound,
                recount,
                vault_rows.as_ref(),
            )
            .await
        };
        match attempt {
            Ok(done) => {
                if done.floor.is_some() {
                    self.floor = done.floor;
                }
                Ok(Next::Committed(done.inserted))
            }
            Err(WriteFailure::Row(_)) if alone => Ok(Next::Reframe),
            Err(failure) => {
                let single = range.len() == 1;
                self.after_failure(failure, single, recount, since, budget)
                    .await
            }
        }
    }

    /// The retry policy for a failed attempt at a range (`single`: of one
    /// row). `recount` is the floor the attempt was recounting from, `since`
    /// the floor before it: a retry after a lost reply recounts from there.
    async fn after_failure(
        &mut self,
        failure: WriteFailure,
        single: bool,
        recount: Option<XidFloor>,
        since: Option<XidFloor>,
        budget: &mut Budget,
    ) -> Result<Next, DbError> {
        match failure {
            WriteFailure::Row(why) if single => Ok(Next::Refused(why)),
            WriteFailure::Row(_) => Ok(Next::Split),
            WriteFailure::Conflict(cause) => {
                if !budget.take_conflict_retry() {
                    return Err(DbError::Conflicts {
                        op: "inserting the batch",
                        cause,
                    });
                }
                debug!(error = %cause, "conflict with another transaction; retrying on the same connection");
                tokio::time::sleep(CONFLICT_PAUSE).await;
                Ok(Next::Retry(recount))
            }
            WriteFailure::Transient(cause) => {
                // The COMMIT may have landed: recount from before it.
                self.reconnect_or_fail(budget, OP, cause).await?;
                Ok(Next::Retry(since))
            }
            WriteFailure::Fatal(e) => Err(e),
            WriteFailure::Unframed(why) => {
                match why {
                    Unframed::Isolation => warn!(
                        "the write's transaction was not at READ COMMITTED (a default_transaction_isolation stored for the database role since it connected): this connection's writes take the framed transaction; `login-etl doctor` names the setting and its fix"
                    ),
                    Unframed::NoExecute => warn!(
                        "the database role may not execute login_etl_write_tx (granted what an earlier version's `login-etl grants` printed): this connection's writes take the framed transaction, one round trip as before but slower; run the output of `login-etl grants --role ingest` as the tables' owner, or register the role (docs/configuration.md, \"Database roles\")"
                    ),
                }
                self.frame_writes = true;
                Ok(Next::Retry(recount))
            }
            // Raised beside the COMMIT sent with it, which ended the
            // transaction: nothing to roll back.
            WriteFailure::Outdated => Err(DbError::BatchOutdated),
            WriteFailure::RecountDenied => {
                warn!(
                    "the database role may not read user_logins_rows.xmin, so rows a lost attempt committed count as duplicates; GRANT SELECT (message_id, sent_at, xmin) ON user_logins_rows to count them as inserted"
                );
                Ok(Next::Retry(None))
            }
        }
    }
}
