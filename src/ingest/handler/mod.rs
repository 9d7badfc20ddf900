//! The batch handler: turns one SQS batch into rows, dead letters and a
//! partial-batch response. Callable without the Lambda runtime (tests call
//! it directly).
//!
//! A batch's path reads top-down in this file: [`BatchHandler::handle`]
//! transforms and writes it (each record validated, masked and streamed
//! into the sink as it is read), then reports it (`batchItemFailures`,
//! refused rows to the DLQ, the visibility backoff, the counts); below the
//! handler, the batch's working state ([`BatchWork`]) and the report's
//! parts. Which keys a batch is masked with, and the erasure list it is
//! filtered by, the handler asks `crate::privacy::keys::Keys` once per
//! batch, on the way down to the sink (again when a record is signed at a
//! newer key version, or the write finds them out of date). Beside this file:
//! - [`build`]: the handler's settings, set once at a cold start;
//! - [`outcome`]: the response, the summary and the deadline (the handler's
//!   answer, which the metrics and `login-etl poll` read too).

mod build;
mod outcome;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use chrono::Utc;
use tokio::sync::Mutex;
use tracing::{trace, warn};

use crate::contract::{LoginRow, Rejection};
use crate::error::{DbError, HandlerError};
use crate::config::backoff::Schedule;
use crate::ingest::backoff::{Hold, Visibility, jitter};
use crate::ingest::dlq::{CopyFacts, DeadLetterQueue, Rejected};
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::metrics::{InvocationMetrics, Metrics};
use crate::ingest::record;
use crate::ingest::sink::{BatchWriter, InsertReport, PgSink};
use crate::ingest::trace::{BatchTrace, MessageOutcome, Tracer};
use crate::privacy::dead_letter::rebuilt::{Rebuilt, RebuiltVerifier, Verdict};
use crate::privacy::keys::{BatchKeys, Keys};
use crate::privacy::masking::Masker;
use crate::privacy::vault::{DataKey, VaultBatch, VaultWrite};
pub use crate::ingest::summary::BatchSummary;
pub use outcome::{Deadline, Outcome};

/// How often the handler reads the partitions made ahead (one catalog read
/// after a batch's write, on its connection); each batch reports the last
/// reading as `PartitionDaysAhead`.
pub const PARTITIONS_READ_EVERY: Duration = Duration::from_secs(600);

/// The last reading of the partitions made ahead: when, and what.
type DaysAhead = std::sync::Mutex<Option<(Instant, Option<i64>)>>;

/// Processes SQS batches. Built once per cold start, shared by invocations.
pub struct BatchHandler {
    /// Every key version known to this environment, and how to read them again.
    keys: Arc<Keys>,
    /// One sink (one connection) per batch in flight: one in Lambda, the
    /// consumer's concurrency in `login-etl poll`.
    sinks: Vec<Mutex<PgSink>>,
    dlq: Option<DeadLetterQueue>,
    /// Checks the seals of logins rebuilt from dead-letter copies.
    rebuilt: Option<RebuiltVerifier>,
    /// The DLQ operator's role id: what it sends must be `dlq-redrive`'s.
    operator_role_id: Option<String>,
    metrics: Metrics,
    vault: Option<DataKey>,
    backoff: Option<(Schedule, Visibility)>,
    refused_max_receives: u32,
    /// What becomes of fields outside the contract.
    contract: crate::contract::Contract,
    days_ahead: DaysAhead,
    /// Each batch's spans, or none (tracing off).
    tracer: Tracer,
}

impl BatchHandler {
    /// Handles one batch that must be answered by `deadline`: the one entry
    /// point (the Lambda function, `login-etl poll`, the tests and the
    /// benches all come in here). The sink stops retrying early enough to
    /// answer before the deadline; the response lists the records to
    /// redeliver (`batchItemFailures`), the summary counts what happened.
    ///
    /// Every call writes its EMF document, a failed one too (with
    /// `InvocationFailed` and its class), so the metrics and the ingest-lag
    /// alarm keep running through a database outage.
    pub async fn handle(
        &self,
        batch: &SqsBatch,
        deadline: Deadline,
    ) -> Result<Outcome, HandlerError> {
        let deadline = deadline.instant();
        let started = Instant::now();
        // A batch comes from one queue: the first record that names its
        // queue tells (the later ones are not parsed yet).
        let fifo = batch
            .records()
            .find_map(|m| m.event_source_arn.as_deref())
            .is_some_and(|arn| arn.ends_with(".fifo"));
        let mut work = BatchWork::new(fifo, deadline);
        let trace = self.tracer.batch(batch);
        let result = match self.write(batch, started, &mut work, &trace).await {
            Ok((report, failure)) => Ok(self.report(batch, report, failure, work, &trace).await),
            Err(e) => {
                // The whole batch comes back: each message read so far says so.
                let ids = work.ids.iter().enumerate();
                trace.messages(batch, ids.map(|(pos, id)| (pos, *id, MessageOutcome::Redelivered)));
                Err(e)
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        let mut metrics = InvocationMetrics {
            duration_ms: started.elapsed().as_millis() as u64,
            ingest_lag_ms: ingest_lag_ms(batch, now_ms),
            fifo,
            ..InvocationMetrics::default()
        };
        match &result {
            Ok(outcome) => {
                metrics.summary = outcome.summary.clone();
                metrics.partition_days_ahead = self.days_ahead_read().and_then(|(_, d)| d);
            }
            Err(e) => {
                metrics.summary = BatchSummary {
                    received: batch.len(),
                    failure: Some(e.class()),
                    ..BatchSummary::default()
                };
                metrics.invocation_failed = true;
            }
        }
        self.metrics.emit(&metrics, now_ms);
        let summary = &metrics.summary;
        trace.end(
            &[
                ("login_etl.inserted", summary.inserted as i64),
                ("login_etl.duplicates", summary.duplicates as i64),
                ("login_etl.failed", summary.failed as i64),
                ("login_etl.sent_to_dlq", summary.sent_to_dlq as i64),
            ],
            summary.failure,
        );
        result
    }

    /// Transforms and writes the batch on a free sink. A failed write is an
    /// error when there is no backoff; with one, it is the failure's class
    /// (the caller reports and backs off every record not otherwise finished).
    async fn write<'b>(
        &self,
        batch: &'b SqsBatch,
        started: Instant,
        valid: &mut BatchWork<'b>,
        trace: &BatchTrace,
    ) -> Result<(InsertReport, Option<&'static str>), HandlerError> {
        let mut sink = self.sink().await;
        let written = self.transform_and_write(&mut sink, batch, valid, trace).await;
        if matches!(written, Ok(Ok(_))) {
            self.read_days_ahead(&mut sink, valid.deadline).await;
        }
        drop(sink);
        let written = written.inspect_err(|e| {
            warn!(received = batch.len(), error = %e, "batch refused");
        })?;
        let e = match written {
            Ok(report) => return Ok((report, None)),
            Err(e) => e,
        };
        let backing_off = self.backoff.is_some();
        warn!(
            received = batch.len(),
            valid = valid.rows.len(),
            rejected = valid.rejected.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            retryable = e.is_retryable(),
            class = HandlerError::class_of(&e),
            error = %e,
            "{}",
            if backing_off {
                "batch write failed; its valid records are reported and backed off, its rejects still go to the DLQ"
            } else {
                "batch failed; nothing of it is reported done, so the whole batch will be redelivered"
            }
        );
        if !backing_off {
            return Err(e.into());
        }
        Ok((InsertReport::default(), Some(HandlerError::class_of(&e))))
    }

    /// Validates and masks every record, streaming the valid rows into the
    /// sink (a COPY for large batches) as they come, then commits them.
    /// Each record is read from the payload as the loop reaches it, so the
    /// first rows are in the COPY while the later ones are still unread. The
    /// outer error: the batch cannot be handled (a record without
    /// `messageId`, not an SQS message, or a payload that breaks off),
    /// found before anything commits.
    async fn transform_and_write<'b>(
        &self,
        sink: &mut PgSink,
        batch: &'b SqsBatch,
        out: &mut BatchWork<'b>,
        trace: &BatchTrace,
    ) -> Result<Result<InsertReport, DbError>, HandlerError> {
        let (fifo, deadline) = (out.fifo, out.deadline);
        // The keys and the erasure list, in memory (their versions are
        // checked by the write). When the database fails before the write
        // begins, every record is still validated, at the key version the
        // database last stated, so the rejects reach the DLQ all the same;
        // nothing is written.
        let (mut keys, mut early) = self.batch_keys(sink, deadline).await;
        // From the COPY's start (its rows stream while records are read).
        let write_span = trace.write();
        // A record signed at a key version newer than the batch's: the
        // database moved (rotate-key) since this environment last read it.
        // No claim is judged by a version the database has left: the keys
        // are read again, and the batch from its start, once.
        let mut moved = false;
        let (writer, unhandled) = loop {
            out.masker = Some(keys.masker.clone());
            let mut writer = None;
            if early.is_none() {
                match sink.start_batch(batch.size_hint(), deadline).await {
                    Ok(w) => writer = Some(w),
                    Err(e) => early = Some(e),
                }
            }
            let newer = match (early.is_some(), moved) {
                (true, _) => Newer::Hold,
                (false, false) => Newer::ReadAgain,
                (false, true) => Newer::Judge,
            };
            match self.read_records(batch, out, &keys, writer.as_mut(), newer).await {
                Read::KeysMoved => {
                    if let Some(writer) = writer {
                        writer.abandon().await;
                    }
                    sink.forget_key_state();
                    *out = BatchWork::new(fifo, deadline);
                    (keys, early) = self.batch_keys(sink, deadline).await;
                    moved = true;
                }
                Read::Done(unhandled) => break (writer, unhandled),
            }
        };
        if let Some(e) = unhandled.or_else(|| rest_of_ids(batch, out).err()) {
            if let Some(writer) = writer {
                writer.abandon().await;
            }
            return Err(e);
        }
        self.send_fifo_rejects(batch, out, trace).await;
        if let Some(e) = early {
            write_span.end(&[], Some(HandlerError::class_of(&e)));
            return Ok(Err(e));
        }
        let writer = writer.expect("a writer whenever nothing failed before it");
        let vault = self.vault.as_ref().map(|key| VaultWrite {
            key,
            batch: &out.vault,
        });
        let written = match writer.finish(&out.rows, keys.versions, fifo, vault).await {
            Err(DbError::BatchOutdated) => self.write_again(sink, out).await,
            written => written,
        };
        match &written {
            Ok(report) => write_span.end_named(
                Some(if report.copied { "COPY" } else { "INSERT" }),
                &[
                    ("db.operation.batch.size", out.rows.len() as i64),
                    ("login_etl.inserted", report.inserted as i64),
                    ("login_etl.statements", i64::from(report.statements)),
                ],
                None,
            ),
            Err(e) => write_span.end(&[], Some(HandlerError::class_of(e))),
        }
        Ok(written)
    }

    /// The batch's keys from `sink`; when the database cannot say them,
    /// [`Keys::unchecked`], with the error.
    async fn batch_keys(
        &self,
        sink: &mut PgSink,
        deadline: Option<Instant>,
    ) -> (BatchKeys, Option<DbError>) {
        match sink.batch_keys(&self.keys, deadline, true).await {
            Ok(keys) => (keys, None),
            Err(e) => (self.keys.unchecked(), Some(e)),
        }
    }

    /// Validates and masks each record with `keys`, in batch order, each
    /// valid row into `writer` (when there is one) as it comes. A record
    /// signed at a key version newer than `keys`'
    /// ([`record::signed_after`]) is treated as `newer` says.
    async fn read_records<'b>(
        &self,
        batch: &'b SqsBatch,
        out: &mut BatchWork<'b>,
        keys: &BatchKeys,
        mut writer: Option<&mut BatchWriter<'_>>,
        newer: Newer,
    ) -> Read {
        let fifo = out.fifo;
        for pos in (0..).take_while(|&pos| batch.has(pos)) {
            let id = match message_id(batch, pos) {
                Ok(id) => id,
                Err(e) => return Read::Done(Some(e)),
            };
            out.ids.push(id);
            let message = batch.record(pos);
            if newer != Newer::Judge && record::signed_after(message, &keys.masker) {
                if newer == Newer::ReadAgain {
                    return Read::KeysMoved;
                }
                // No key state to judge its claim by: it comes back.
                out.held.push(pos);
                if fifo {
                    break;
                }
                continue;
            }
            let transformed = if message.claims_rebuilt() {
                match self.rebuilt_row(message, &keys.masker).await {
                    Some(row) => row,
                    None => {
                        out.held.push(pos);
                        if fifo {
                            // Later records must wait for this one.
                            break;
                        }
                        continue;
                    }
                }
            } else {
                record::check_sender(id, message, &keys.masker, self.operator_role_id.as_deref())
                    .and_then(|()| {
                        record::transform_with(id, message, &keys.masker, &self.contract)
                    })
            };
            let transformed = transformed.map(|mut row| {
                let admitted = keys.admit(&mut row);
                (row, admitted)
            });
            match transformed {
                Ok((_, false)) => {
                    trace!(message_id = id, "record of an erased user");
                    out.erased.push(pos);
                }
                Ok((row, true)) => {
                    trace!(message_id = id, "record valid");
                    if let Some(key) = &self.vault {
                        out.vault.add(key, &row);
                    }
                    if let Some(writer) = writer.as_mut() {
                        writer.push(&row).await;
                    }
                    out.rows.push(row);
                    out.row_positions.push(pos);
                }
                // Erasure first: an erased user's message is skipped, never
                // dead-lettered (its copy would keep what was erased).
                Err(_) if record::user_id_of(message).is_some_and(|u| keys.is_erased(&u)) => {
                    trace!(
                        message_id = id,
                        "rejected record of an erased user: skipped"
                    );
                    out.erased.push(pos);
                }
                Err(reason) => {
                    log_rejection(id, &reason);
                    out.rejected.push((pos, reason.code().into_owned()));
                    if fifo && self.dlq.is_none() {
                        // Later records must wait for this one: do not even validate them.
                        break;
                    }
                }
            }
        }
        Read::Done(None)
    }

    /// The row of a rebuilt login whose seal opens; a reject when it does
    /// not; `None` (the record waits and comes back) when it could not be
    /// checked: no dead-letter key here, or KMS did not answer or refused.
    async fn rebuilt_row<'b>(
        &self,
        message: &'b SqsRecord,
        masker: &Masker,
    ) -> Option<Result<LoginRow<'b>, Rejection>> {
        let Some((claim, seal)) = message.rebuilt() else {
            return Some(Err(Rejection::RebuiltLoginUnverified));
        };
        // Only a copy the function made, of a producer's message (its row
        // key signed), is rebuilt: the copy's signature covers the tokens
        // and the row key the operator's seal vouches for (checked first:
        // no KMS call for a claim the function never made).
        let copy = CopyFacts {
            source_message_id: claim.message_id,
            source_sent_timestamp: claim.sent_timestamp,
            source_signature: claim.source_signature,
            code: claim.rejection_code,
            token_key_version: claim.key_version,
            masked_body: message.body.as_deref().unwrap_or_default(),
            sealed: None,
        };
        if claim.source_signature.is_empty() || !copy.signed_by(masker, claim.copy_signature)
        {
            return Some(Err(Rejection::RebuiltLoginUnverified));
        }
        let Some(verifier) = &self.rebuilt else {
            warn!(
                message_id = claim.message_id,
                "a login rebuilt from a dead-letter copy waits: this environment has no dead-letter key to check its seal (DLQ_KMS_KEY_ID, the stack's DlqKeyArn)"
            );
            return None;
        };
        let rebuilt = Rebuilt {
            source_message_id: claim.message_id,
            sent_timestamp: claim.sent_timestamp,
            key_version: claim.key_version,
            body: message.body.as_deref().unwrap_or_default(),
        };
        match verifier.verify(&rebuilt, seal).await {
            Ok(Verdict::Sealed) => Some(record::transform_rebuilt(
                claim,
                message,
                masker,
                &self.contract,
                chrono::Utc::now(),
            )),
            Ok(Verdict::Broken) => Some(Err(Rejection::RebuiltLoginUnverified)),
            Err(e) => {
                warn!(message_id = claim.message_id, error = %e, "the seal of a rebuilt login could not be checked; it comes back");
                None
            }
        }
    }

    /// FIFO: a rejected record sent to the DLQ is finished, so the records
    /// after it may go on; the first one that could not be sent holds back
    /// every later row.
    async fn send_fifo_rejects<'b>(
        &self,
        batch: &'b SqsBatch,
        out: &mut BatchWork<'b>,
        trace: &BatchTrace,
    ) {
        let (true, Some(dlq)) = (out.fifo, &self.dlq) else {
            return;
        };
        let masker = out.masker.as_ref().expect("set before any record");
        let rejected = out.rejected_records(batch);
        let asked = rejected.len();
        let span = trace.dead_letter_send(dlq.name(), asked);
        let sent = dlq.send(&rejected, masker, true, out.deadline).await;
        span.end_sent(asked, sent.len());
        out.sent = sent;
        if let Some(&(held, _)) = out
            .rejected
            .iter()
            .find(|(pos, _)| out.sent.binary_search(pos).is_err())
        {
            let keep = out.row_positions.partition_point(|&p| p < held);
            out.rows.truncate(keep);
            out.row_positions.truncate(keep);
        }
    }

    /// The erasure list or the key version changed while the batch was being
    /// written (`login-etl forget` erased someone, `login-etl rotate-key`
    /// began): asks for the keys again, re-keys the rows' tokens to the new
    /// version, drops the rows of erased users (handled: not stored, not
    /// failed, not dead-lettered) and writes the rest. A few rounds, as
    /// another change may land in between.
    async fn write_again(
        &self,
        sink: &mut PgSink,
        out: &mut BatchWork<'_>,
    ) -> Result<InsertReport, DbError> {
        for _ in 0..3 {
            sink.forget_erased();
            let keys = sink.batch_keys(&self.keys, out.deadline, true).await?;
            self.drop_erased(&keys, out)?;
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            match sink
                .insert_until(&out.rows, keys.versions, out.fifo, vault, out.deadline)
                .await
            {
                Err(DbError::BatchOutdated) => continue,
                written => return written,
            }
        }
        Err(DbError::Transient {
            op: "writing a batch while users were being erased",
            cause: "the erasure list kept changing".into(),
        })
    }

    /// Re-keys the rows to `keys`' version and moves the rows of users
    /// erased since to `out.erased`; the vault entries follow the rows.
    fn drop_erased(&self, keys: &BatchKeys, out: &mut BatchWork<'_>) -> Result<(), DbError> {
        for row in out.rows.iter_mut() {
            keys.rekey(row)?;
        }
        let keep: Vec<bool> = out
            .rows
            .iter()
            .map(|r| !keys.is_erased(&r.user_id))
            .collect();
        for (i, pos) in out.row_positions.iter().enumerate() {
            if !keep[i] {
                out.erased.push(*pos);
            }
        }
        out.erased.sort_unstable();
        let mut flags = keep.iter();
        out.rows
            .retain(|_| *flags.next().expect("one flag per row"));
        let mut flags = keep.iter();
        out.row_positions
            .retain(|_| *flags.next().expect("one flag per row"));
        if let Some(key) = &self.vault {
            out.vault = VaultBatch::default();
            for row in &out.rows {
                out.vault.add(key, row);
            }
        }
        Ok(())
    }

    /// Reports the batch: its rejects and refused rows to the DLQ, the
    /// records to redeliver (backed off after a failed write), and its
    /// counts.
    async fn report(
        &self,
        batch: &SqsBatch,
        report: InsertReport,
        failure: Option<&'static str>,
        mut valid: BatchWork<'_>,
        trace: &BatchTrace,
    ) -> Outcome {
        let (fifo, deadline) = (valid.fifo, valid.deadline);
        let masker = valid
            .masker
            .take()
            .unwrap_or_else(|| self.keys.unchecked().masker);
        let ids = &valid.ids;
        // Standard queues: rejected records go to the DLQ once their
        // neighbours are written, or failed (FIFO batches sent them before
        // writing): a reject is never held back by the database.
        if !fifo && let Some(dlq) = &self.dlq {
            let rejected = valid.rejected_records(batch);
            let asked = rejected.len();
            let span = trace.dead_letter_send(dlq.name(), asked);
            let sent = dlq.send(&rejected, &masker, false, deadline).await;
            span.end_sent(asked, sent.len());
            valid.sent = sent;
        }
        let refused_sent = match &self.dlq {
            Some(dlq) => {
                let to = (dlq, self.refused_max_receives, &masker);
                send_refused(to, batch, &report, &valid, (fifo, deadline), trace).await
            }
            None => Vec::new(),
        };
        let failed = failed_positions(
            batch.len(),
            &valid,
            &report,
            &refused_sent,
            failure.is_some(),
            fifo,
        );
        let (held, visibility_change_failed) = match (&self.backoff, failure) {
            (Some((schedule, visibility)), Some(_)) => {
                let how = (*schedule, visibility);
                let span = trace.visibility_change(failed.len());
                let held = back_off(how, batch, &failed, fifo, deadline).await;
                span.end_sent(failed.len(), held.len());
                let missed = failed.len() - held.len();
                (held, missed)
            }
            _ => (Vec::new(), 0),
        };
        let backed_off = held.len();
        if trace.is_on() {
            let outcomes = message_outcomes(&valid, &report, (&failed, &held), &refused_sent);
            trace.messages(batch, outcomes);
        }
        let mut response = SqsBatchResponse::default();
        for &pos in &failed {
            response.add_failure(ids[pos]);
        }
        let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
        for (_, code) in &valid.rejected {
            *rejected.entry(code.clone()).or_default() += 1;
        }
        let mut defects: BTreeMap<String, usize> = BTreeMap::new();
        for defect in valid.rows.iter().flat_map(|r| &r.defects) {
            *defects.entry(defect.code().into_owned()).or_default() += 1;
        }
        let unknown_fields = valid.rows.iter().filter(|r| !r.unknown.is_empty()).count();
        warn_unknown_fields_once(unknown_fields);
        let summary = BatchSummary {
            received: batch.len(),
            inserted: report.inserted,
            duplicates: report.duplicates,
            rejected,
            with_defects: valid.rows.iter().filter(|r| !r.defects.is_empty()).count(),
            defects,
            copied: report.copied,
            sent_to_dlq: valid.sent.len(),
            refused: report.refused.len(),
            failed: failed.len(),
            statements: report.statements,
            refused_to_dlq: refused_sent.len(),
            erased: valid.erased.len(),
            unknown_fields,
            failure,
            backed_off,
            visibility_change_failed,
        };
        Outcome { response, summary }
    }

    fn days_ahead_read(&self) -> Option<(Instant, Option<i64>)> {
        *self.days_ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the partitions made ahead on `sink` when the last reading is
    /// [`PARTITIONS_READ_EVERY`] old (or there is none), within the
    /// batch's `deadline`. A failed read reports nothing until the next
    /// try, one interval later (a stale value could hide partitions running
    /// out): the batch is written, and the database's trouble shows in the
    /// next batch's write.
    async fn read_days_ahead(&self, sink: &mut PgSink, deadline: Option<Instant>) {
        let last = self.days_ahead_read();
        if last.is_some_and(|(at, _)| at.elapsed() < PARTITIONS_READ_EVERY) {
            return;
        }
        let days = match sink
            .partition_days_ahead(Utc::now().date_naive(), deadline)
            .await
        {
            Ok(days) => days,
            Err(e) => {
                warn!(error = %e, "could not read the partitions made ahead; trying again in 10 minutes");
                None
            }
        };
        *self.days_ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), days));
    }

    /// A free sink, or (all busy) the first one's turn.
    async fn sink(&self) -> tokio::sync::MutexGuard<'_, PgSink> {
        for sink in &self.sinks {
            if let Ok(free) = sink.try_lock() {
                return free;
            }
        }
        self.sinks[0].lock().await
    }
}

/// One batch at work: how it is handled (its queue's order, its deadline)
/// and what validation made of its records (rows, rejects, erased users'
/// records, held rebuilt logins), where each came from in the batch.
#[derive(Default)]
struct BatchWork<'b> {
    /// A FIFO queue's batch: later records wait for a failed one.
    fifo: bool,
    /// When the batch must be answered.
    deadline: Option<Instant>,
    /// Every record's `messageId`, in batch order (all of them once the
    /// batch could be handled).
    ids: Vec<&'b str>,
    /// Valid rows, in batch order.
    rows: Vec<LoginRow<'b>>,
    /// Position in the batch of each row.
    row_positions: Vec<usize>,
    /// Positions and codes of rejected records, in batch order.
    rejected: Vec<(usize, String)>,
    /// Positions of rejected records now in the DLQ, ascending.
    sent: Vec<usize>,
    /// The rows' vault entries (empty without a vault).
    vault: VaultBatch,
    /// Positions of records of erased users (handled, not stored), ascending.
    erased: Vec<usize>,
    /// Positions of rebuilt logins whose seal could not be checked (KMS did
    /// not answer, or refused the function), and of records signed at a key
    /// version no key state read could judge: failed, to come back.
    held: Vec<usize>,
    /// The masker the batch was validated with: what its DLQ copies are
    /// masked and signed with.
    masker: Option<Masker>,
}

impl<'b> BatchWork<'b> {
    fn new(fifo: bool, deadline: Option<Instant>) -> Self {
        Self {
            fifo,
            deadline,
            ..Self::default()
        }
    }

    fn rejected_records<'a>(&'a self, batch: &'b SqsBatch) -> Vec<Rejected<'a>>
    where
        'b: 'a,
    {
        self.rejected
            .iter()
            .map(|(pos, code)| Rejected {
                position: *pos,
                message: batch.record(*pos),
                message_id: self.ids[*pos],
                code,
            })
            .collect()
    }
}

/// What becomes of a record signed at a key version newer than the
/// batch's keys ([`BatchHandler::read_records`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Newer {
    /// The batch stops, to be read again once the keys are read again.
    ReadAgain,
    /// The keys were read again: its claim is judged by them (a version no
    /// database is at is no claim).
    Judge,
    /// The keys could not be read, or the write could not begin (the
    /// database did not answer, or this environment cannot reach its
    /// version): the record is held, to come back, rather than judged by
    /// keys the database may have left.
    Hold,
}

/// How reading a batch's records ended ([`BatchHandler::read_records`]).
enum Read {
    /// Every record read, or the batch cannot be handled (the error).
    Done(Option<HandlerError>),
    /// A record is signed at a key version newer than the batch's keys.
    KeysMoved,
}

/// The record's `messageId`; without one (or when the record is not an
/// SQS message at all) it cannot be reported on its own, so the invocation
/// fails.
fn message_id(batch: &SqsBatch, index: usize) -> Result<&str, HandlerError> {
    let Some(record) = batch.get(index) else {
        return Err(if batch.unreadable_at(index) {
            HandlerError::UnreadablePayload { index }
        } else {
            HandlerError::MalformedRecord { index }
        });
    };
    match record.message_id.as_deref() {
        Some(id) if !id.is_empty() => Ok(id),
        _ => Err(HandlerError::MissingMessageId { index }),
    }
}

/// The ids of the records a FIFO reject held back (the loop stopped there).
fn rest_of_ids<'b>(batch: &'b SqsBatch, out: &mut BatchWork<'b>) -> Result<(), HandlerError> {
    for index in (out.ids.len()..).take_while(|&index| batch.has(index)) {
        out.ids.push(message_id(batch, index)?);
    }
    Ok(())
}

fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
}

/// Rows the database kept refusing, on their `max_receives`-th receive
/// (0: never): to the DLQ with their SQLSTATE (`refused.<SQLSTATE>`).
/// Returns the positions SQS accepted, ascending.
async fn send_refused(
    (dlq, max_receives, masker): (&DeadLetterQueue, u32, &Masker),
    batch: &SqsBatch,
    report: &InsertReport,
    valid: &BatchWork<'_>,
    (fifo, deadline): (bool, Option<Instant>),
    trace: &BatchTrace,
) -> Vec<usize> {
    if max_receives == 0 {
        return Vec::new();
    }
    let codes: Vec<String> = report
        .refused_codes
        .iter()
        .map(|state| format!("refused.{state}"))
        .collect();
    let due: Vec<Rejected<'_>> = report
        .refused
        .iter()
        .zip(&codes)
        .map(|(&i, code)| (valid.row_positions[i], code))
        .filter(|&(pos, _)| receive_count(batch.record(pos)) >= max_receives)
        .map(|(pos, code)| Rejected {
            position: pos,
            message: batch.record(pos),
            message_id: valid.ids[pos],
            code,
        })
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    let span = trace.dead_letter_send(dlq.name(), due.len());
    let sent = dlq.send(&due, masker, fifo, deadline).await;
    span.end_sent(due.len(), sent.len());
    sent
}

/// What became of each message of the batch, for its span: erased,
/// rejected (with its code) or refused, whether or not it is redelivered;
/// else redelivered (backed off after a failed write) when it failed;
/// else stored. `Duplicate` only when every row was there already: the
/// write counts duplicates per batch.
fn message_outcomes<'a>(
    valid: &'a BatchWork<'_>,
    report: &InsertReport,
    (failed, held): (&[usize], &[usize]),
    refused_sent: &[usize],
) -> Vec<(usize, &'a str, MessageOutcome<'a>)> {
    let mut outcomes = vec![MessageOutcome::Redelivered; valid.ids.len()];
    let stored = if report.inserted == 0 && report.duplicates > 0 {
        MessageOutcome::Duplicate
    } else {
        MessageOutcome::Stored
    };
    for &pos in &valid.row_positions {
        outcomes[pos] = stored;
    }
    for &pos in failed {
        outcomes[pos] = MessageOutcome::Redelivered;
    }
    for &pos in held {
        outcomes[pos] = MessageOutcome::BackedOff;
    }
    for &i in &report.refused {
        let pos = valid.row_positions[i];
        outcomes[pos] = MessageOutcome::Refused {
            dead_lettered: refused_sent.binary_search(&pos).is_ok(),
        };
    }
    for (pos, code) in &valid.rejected {
        outcomes[*pos] = MessageOutcome::Rejected {
            code,
            dead_lettered: valid.sent.binary_search(pos).is_ok(),
        };
    }
    for &pos in &valid.erased {
        outcomes[pos] = MessageOutcome::Erased;
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(pos, outcome)| (pos, valid.ids[pos], outcome))
        .collect()
}

/// The positions to report in `batchItemFailures`, ascending: rejects not
/// in the DLQ, refused rows not in the DLQ, and (`write_failed`) every record
/// not otherwise finished, whether or not it got as far as validation. On
/// FIFO, everything from the first of them on (order must hold), except
/// records already finished (in the DLQ, as after a redrive, or erased).
fn failed_positions(
    received: usize,
    valid: &BatchWork<'_>,
    report: &InsertReport,
    refused_sent: &[usize],
    write_failed: bool,
    fifo: bool,
) -> Vec<usize> {
    let unfinished = |pos: &usize| {
        valid.sent.binary_search(pos).is_err()
            && refused_sent.binary_search(pos).is_err()
            && valid.erased.binary_search(pos).is_err()
    };
    let mut failed: Vec<usize> = valid
        .rejected
        .iter()
        .map(|&(pos, _)| pos)
        .chain(report.refused.iter().map(|&i| valid.row_positions[i]))
        .chain(valid.held.iter().copied())
        .chain((0..received).filter(|_| write_failed))
        .filter(unfinished)
        .collect();
    if fifo && let Some(&first) = failed.iter().min() {
        failed = (first..received).filter(unfinished).collect();
    }
    failed.sort_unstable();
    failed.dedup();
    failed
}

/// Extends the visibility of the failed records by the schedule: each by
/// its own receive count, or (FIFO) the whole held tail by the highest,
/// so it comes back together and in order. Returns the positions whose
/// visibility SQS extended.
async fn back_off(
    (schedule, visibility): (Schedule, &Visibility),
    batch: &SqsBatch,
    positions: &[usize],
    fifo: bool,
    deadline: Option<Instant>,
) -> Vec<usize> {
    let tail = positions
        .iter()
        .map(|&p| receive_count(batch.record(p)))
        .max()
        .unwrap_or(1);
    let together = schedule.delay(tail, jitter());
    let holds: Vec<Hold<'_>> = positions
        .iter()
        .map(|&pos| Hold {
            position: pos,
            receipt_handle: batch.record(pos).receipt_handle.as_deref(),
            seconds: if fifo {
                together
            } else {
                schedule.delay(receive_count(batch.record(pos)), jitter())
            },
        })
        .collect();
    let source = batch.records().find_map(|m| m.event_source_arn.as_deref());
    let held = visibility.hold(&holds, source, deadline).await;
    let missed = positions.len() - held.len();
    if missed > 0 {
        warn!(
            records = missed,
            "visibility not extended for some failed records; they are redelivered after the queue's visibility timeout"
        );
    }
    held
}

/// The record's `ApproximateReceiveCount` (1 when absent or unreadable).
fn receive_count(record: &SqsRecord) -> u32 {
    record
        .attributes
        .as_ref()
        .and_then(|a| a.approximate_receive_count.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Warns once per environment that producers send fields outside the
/// contract, which are counted (`UnknownFields`) and never stored. Never
/// their names: a name may be anything (an address or an email as a key);
/// `login-etl validate` on a producer's message names them.
fn warn_unknown_fields_once(count: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if count > 0 && !WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            messages = count,
            "messages carry fields outside the contract: counted (UnknownFields) and never stored; `login-etl validate` on a producer's message names them: declare one in EXTRA_FIELDS if it holds no PII and should be kept, or set UNKNOWN_FIELDS=reject to refuse such messages"
        );
    }
}

/// Now minus the oldest `SentTimestamp` of the batch.
fn ingest_lag_ms(batch: &SqsBatch, now_ms: i64) -> Option<u64> {
    let oldest = batch
        .records()
        .filter_map(|m| m.sent_timestamp()?.parse::<i64>().ok())
        .min()?;
    Some(now_ms.saturating_sub(oldest).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Eight messages: rows at 0, 1, 2 (2 refused), 6; 3 rejected and in
    /// the DLQ, 4 rejected and not; 5 erased; 7 held (a rebuilt login).
    fn work() -> BatchWork<'static> {
        BatchWork {
            ids: vec!["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"],
            row_positions: vec![0, 1, 2, 6],
            rejected: vec![(3, "invalid_json".into()), (4, "missing_field.user_id".into())],
            sent: vec![3],
            erased: vec![5],
            held: vec![7],
            ..BatchWork::default()
        }
    }

    fn outcomes_of(report: &InsertReport, failed: &[usize], held: &[usize]) -> Vec<String> {
        let work = work();
        message_outcomes(&work, report, (failed, held), &[])
            .into_iter()
            .enumerate()
            .map(|(i, (pos, id, outcome))| {
                assert_eq!((pos, id), (i, work.ids[i]));
                format!("{outcome:?}")
            })
            .collect()
    }

    #[test]
    fn each_message_says_what_became_of_it() {
        let report = InsertReport {
            inserted: 3,
            refused: vec![2],
            refused_codes: vec!["23514".into()],
            ..InsertReport::default()
        };
        // Failed: the unsent reject, the refused row, the held login.
        let failed = [2, 4, 7];
        assert_eq!(
            outcomes_of(&report, &failed, &[]),
            [
                "Stored",
                "Stored",
                "Refused { dead_lettered: false }",
                "Rejected { code: \"invalid_json\", dead_lettered: true }",
                "Rejected { code: \"missing_field.user_id\", dead_lettered: false }",
                "Erased",
                "Stored",
                "Redelivered",
            ]
        );
    }

    #[test]
    fn a_refused_row_in_the_dlq_says_so() {
        let report = InsertReport {
            refused: vec![2],
            refused_codes: vec!["23514".into()],
            ..InsertReport::default()
        };
        let work = work();
        let outcomes = message_outcomes(&work, &report, (&[], &[]), &[2]);
        assert_eq!(outcomes[2].2, MessageOutcome::Refused { dead_lettered: true });
    }

    #[test]
    fn a_failed_write_backs_off_what_sqs_held_and_redelivers_the_rest() {
        // Every record not otherwise finished failed; SQS held two of them.
        let failed = [0, 1, 2, 4, 6, 7];
        let outcomes = outcomes_of(&InsertReport::default(), &failed, &[0, 6]);
        assert_eq!(outcomes[0], "BackedOff");
        assert_eq!(outcomes[1], "Redelivered");
        assert_eq!(outcomes[6], "BackedOff");
        assert!(outcomes[4].starts_with("Rejected"), "{outcomes:?}");
        assert_eq!(outcomes[5], "Erased");
    }

    #[test]
    fn a_redelivered_batch_is_duplicates() {
        let report = InsertReport {
            duplicates: 4,
            ..InsertReport::default()
        };
        let outcomes = outcomes_of(&report, &[4, 7], &[]);
        assert_eq!(outcomes[0], "Duplicate");
        assert_eq!(outcomes[6], "Duplicate");
        // Some new and some duplicates: stored, the batch span counts them.
        let mixed = InsertReport {
            inserted: 1,
            duplicates: 3,
            ..InsertReport::default()
        };
        assert_eq!(outcomes_of(&mixed, &[4, 7], &[])[0], "Stored");
    }
}
