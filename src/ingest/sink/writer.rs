//! One batch being written: for large batches a COPY opened first and fed
//! while the rows are transformed ([`PgSink::start_batch`],
//! [`BatchWriter::push`]), committed if every row went in; otherwise, and
//! for small batches, the INSERT path ([`super::bisect`]).

use std::time::Instant;

use tracing::debug;

use super::budget::Budget;
use super::classify::WriteFailure;
use super::copy_in::CopyIn;
use super::tx::VaultRows;
use super::tx::XidFloor;
use super::path::{self, WritePath};
use super::{InsertReport, PgSink};
use crate::contract::LoginRow;
use crate::error::DbError;
use crate::privacy::keys::Versions;
use crate::privacy::vault::VaultWrite;

impl PgSink {
    /// Starts writing a batch of about `expected_rows` rows that must be done
    /// by `deadline` (the invocation's). Large batches open a COPY that
    /// [`BatchWriter::push`] feeds while the caller transforms the next rows.
    pub async fn start_batch(
        &mut self,
        expected_rows: usize,
        deadline: Option<Instant>,
    ) -> Result<BatchWriter<'_>, DbError> {
        let mut budget = Budget::new(deadline);
        let copy_tried = path::at_start(expected_rows) == Some(WritePath::Copy);
        let copy = if copy_tried {
            self.begin_copy(&mut budget).await?
        } else {
            None
        };
        Ok(BatchWriter {
            sink: self,
            budget,
            copy,
            copy_tried,
            pushed: 0,
        })
    }

    /// Opens the COPY; `None` when it could not start (the batch then takes
    /// the INSERT path).
    async fn begin_copy(&mut self, budget: &mut Budget) -> Result<Option<CopyIn>, DbError> {
        const OP: &str = "starting the COPY";
        let bound = budget.bound(self.per_operation(), OP)?;
        let failure = match self.client(budget).await {
            Ok(_) => match CopyIn::begin(
                self.client.as_ref().expect("connected above"),
                &self.begin_sql(bound),
                bound,
            )
            .await
            {
                Ok(copy) => return Ok(Some(copy)),
                Err(failure) => failure,
            },
            Err(e) if e.is_retryable() && !matches!(e, DbError::Deadline { .. }) => {
                WriteFailure::Transient(e.to_string())
            }
            Err(e) => return Err(e),
        };
        self.copy_failed(failure, budget, OP, false).await?;
        Ok(None)
    }

    /// Commits the COPY: `Ok(report)` when every row went in; otherwise the
    /// rows must take the INSERT path, with the xid floor to recount from
    /// when the COMMIT's outcome is unknown.
    async fn end_copy(
        &mut self,
        copy: CopyIn,
        budget: &mut Budget,
        vault: Option<VaultRows<'_>>,
        erased_version: Versions,
    ) -> Result<Result<InsertReport, Option<XidFloor>>, DbError> {
        let floor_before = self.floor;
        let Some(client) = self.client.as_ref() else {
            return Ok(Err(None));
        };
        match copy.commit(client, vault.as_ref(), erased_version).await {
            Ok((inserted, floor)) => {
                if floor.is_some() {
                    self.floor = floor;
                }
                Ok(Ok(InsertReport {
                    inserted,
                    statements: 1,
                    copied: true,
                    ..InsertReport::default()
                }))
            }
            Err(failed) => {
                self.copy_failed(failed.failure, budget, "committing the COPY", failed.ended)
                    .await?;
                Ok(Err(floor_before.filter(|_| failed.outcome_unknown)))
            }
        }
    }

    /// After a failed COPY: reconnects (a transient failure, using the
    /// batch's one reconnect) or rolls back, so the INSERT path can run;
    /// unless the transaction has `ended` (its COMMIT answered).
    async fn copy_failed(
        &mut self,
        failure: WriteFailure,
        budget: &mut Budget,
        op: &'static str,
        ended: bool,
    ) -> Result<(), DbError> {
        match failure {
            WriteFailure::Transient(cause) => return self.reconnect_or_fail(budget, op, cause).await,
            // A refused or duplicate row, a conflict; or permissions / schema,
            // which the INSERT path reports with its hint.
            WriteFailure::Row(why) | WriteFailure::Conflict(why) => {
                debug!(error = %why, "COPY refused; inserting with ON CONFLICT instead")
            }
            WriteFailure::Fatal(e) => debug!(error = %e, "COPY failed; inserting instead"),
            WriteFailure::RecountDenied | WriteFailure::Unframed(_) => {
                debug!("COPY failed; inserting instead")
            }
            // The INSERT path meets the same refusal and reports it.
            WriteFailure::Outdated => debug!("COPY refused: the batch holds an erased user"),
        }
        if !ended {
            self.rollback().await;
        }
        Ok(())
    }
}

/// One batch being written: see [`PgSink::start_batch`].
pub struct BatchWriter<'s> {
    sink: &'s mut PgSink,
    budget: Budget,
    copy: Option<CopyIn>,
    copy_tried: bool,
    /// Rows handed to the COPY.
    pushed: usize,
}

impl BatchWriter<'_> {
    /// Hands one row to the COPY, if one is open (the rows given to
    /// [`finish`](Self::finish) must be these, or a prefix of them: then
    /// the COPY is abandoned and the prefix takes the INSERT path).
    pub async fn push(&mut self, row: &LoginRow<'_>) {
        if let Some(copy) = self.copy.as_mut() {
            copy.write(row).await;
            self.pushed += 1;
        }
    }

    /// Writes nothing: the COPY, if one is open, is aborted and its
    /// transaction rolled back (the batch could not be handled after all).
    pub async fn abandon(mut self) {
        if self.copy.take().is_some() {
            self.sink.rollback().await;
        }
    }

    /// Commits the batch: the COPY if one is open and every row went in,
    /// else `rows` by the INSERT path. With `vault`, each transaction also
    /// writes the vault entries of its rows (`vault.batch` was filled in
    /// the order of `rows`), so a row never commits without them.
    ///
    /// `erased_version` is the version of the erasure list the rows were
    /// filtered with ([`PgSink::batch_keys`]): if the list has changed
    /// since, the transaction is refused with nothing written
    /// ([`DbError::BatchOutdated`]) and the caller filters again.
    pub async fn finish(
        mut self,
        rows: &[&LoginRow<'_>],
        erased_version: Versions,
        preserve_order: bool,
        vault: Option<VaultWrite<'_>>,
    ) -> Result<InsertReport, DbError> {
        let mut recount_since = None;
        if self.copy.is_some() && self.pushed != rows.len() {
            // The caller held back rows it had already streamed (a FIFO
            // batch whose rejected record's DLQ copy was refused): the COPY
            // holds rows that must not commit. Dropping it aborts it
            // (CopyFail); the INSERT path writes `rows`.
            debug!(
                pushed = self.pushed,
                rows = rows.len(),
                "COPY abandoned; inserting the rows kept"
            );
            drop(self.copy.take());
            self.sink.rollback().await;
        }
        if let Some(copy) = self.copy.take() {
            let vault_rows = vault.map(|v| VaultRows::of(v, 0..rows.len()));
            match self
                .sink
                .end_copy(copy, &mut self.budget, vault_rows, erased_version)
                .await?
            {
                Ok(report) => return Ok(report),
                Err(floor) => recount_since = floor,
            }
        }
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        let mut report = self
            .sink
            .insert_rows(
                rows,
                erased_version,
                preserve_order,
                &mut self.budget,
                recount_since,
                vault,
            )
            .await?;
        report.statements += u32::from(self.copy_tried);
        Ok(report)
    }
}
