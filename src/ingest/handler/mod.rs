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
mod records;

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
use crate::ingest::dlq::{CopyFacts, DeadLetterQueue};
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::metrics::{InvocationMetrics, Metrics};
use crate::ingest::record;
use crate::ingest::sink::{BatchWriter, InsertReport, PgSink};
use crate::ingest::trace::{BatchTrace, MessageOutcome, Tracer};
use crate::privacy::dead_letter::rebuilt::{Rebuilt, RebuiltVerifier, Verdict};
use crate::privacy::keys::{BatchKeys, Keys};
use crate::privacy::masking::Masker;
use crate::privacy::vault::{DataKey, VaultWrite};
pub use crate::ingest::summary::BatchSummary;
pub use outcome::{Deadline, Outcome};
use records::{BatchWork, State};

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
                let ids = work.records.iter().enumerate();
                trace.messages(batch, ids.map(|(pos, r)| (pos, r.id, MessageOutcome::Redelivered)));
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
        let tally = valid.tally();
        warn!(
            received = batch.len(),
            valid = tally.rows,
            rejected = tally.rejected.values().sum::<usize>(),
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
        let first = {
            let rows = out.rows();
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            writer.finish(&rows, keys.versions, fifo, vault).await
        };
        let written = match first {
            Err(DbError::BatchOutdated) => self.write_again(sink, out).await,
            written => written,
        };
        match &written {
            Ok(report) => write_span.end_named(
                Some(if report.copied { "COPY" } else { "INSERT" }),
                &[
                    ("db.operation.batch.size", out.rows().len() as i64),
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
            let message = batch.record(pos);
            if newer != Newer::Judge && record::signed_after(message, &keys.masker) {
                if newer == Newer::ReadAgain {
                    return Read::KeysMoved;
                }
                // No key state to judge its claim by: it comes back.
                out.push(id, State::Held);
                if fifo {
                    break;
                }
                continue;
            }
            let transformed = if message.claims_rebuilt() {
                match self.rebuilt_row(message, &keys.masker).await {
                    Some(row) => row,
                    None => {
                        out.push(id, State::Held);
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
                    out.push(id, State::Erased);
                }
                Ok((row, true)) => {
                    trace!(message_id = id, "record valid");
                    if let Some(key) = &self.vault {
                        out.vault.add(key, &row);
                    }
                    if let Some(writer) = writer.as_mut() {
                        writer.push(&row).await;
                    }
                    out.push(id, State::Row(row));
                }
                // Erasure first: an erased user's message is skipped, never
                // dead-lettered (its copy would keep what was erased).
                Err(_) if record::user_id_of(message).is_some_and(|u| keys.is_erased(&u)) => {
                    trace!(
                        message_id = id,
                        "rejected record of an erased user: skipped"
                    );
                    out.push(id, State::Erased);
                }
                Err(reason) => {
                    log_rejection(id, &reason);
                    let code = reason.code().into_owned();
                    out.push(id, State::Rejected { code, sent: false });
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
        let rejected = out.unsent_rejects(batch);
        let asked = rejected.len();
        let span = trace.dead_letter_send(dlq.name(), asked);
        let sent = dlq.send(&rejected, masker, true, out.deadline).await;
        span.end_sent(asked, sent.len());
        out.sent(&sent);
        out.hold_back_behind_unsent_reject();
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
            out.rekey(&keys, self.vault.as_ref())?;
            let rows = out.rows();
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            match sink
                .insert_until(&rows, keys.versions, out.fifo, vault, out.deadline)
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
        valid.refused_by(&report);
        // Standard queues: rejected records go to the DLQ once their
        // neighbours are written, or failed (FIFO batches sent them before
        // writing): a reject is never held back by the database.
        if !fifo && let Some(dlq) = &self.dlq {
            let rejected = valid.unsent_rejects(batch);
            let asked = rejected.len();
            let span = trace.dead_letter_send(dlq.name(), asked);
            let sent = dlq.send(&rejected, &masker, false, deadline).await;
            span.end_sent(asked, sent.len());
            valid.sent(&sent);
        }
        // Rows the database kept refusing, on their `refused_max_receives`-th
        // receive (0: never): to the DLQ with their SQLSTATE.
        if let Some(dlq) = &self.dlq
            && self.refused_max_receives > 0
        {
            let most = self.refused_max_receives;
            let due = valid.refused_due(batch, |pos| receive_count(batch.record(pos)) >= most);
            if !due.is_empty() {
                let span = trace.dead_letter_send(dlq.name(), due.len());
                let sent = dlq.send(&due, &masker, fifo, deadline).await;
                span.end_sent(due.len(), sent.len());
                valid.sent(&sent);
            }
        }
        let failed = valid.failed_positions(failure.is_some());
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
        if trace.is_on() {
            trace.messages(batch, valid.outcomes(&report, &failed, &held));
        }
        let mut response = SqsBatchResponse::default();
        for &pos in &failed {
            response.add_failure(valid.records[pos].id);
        }
        let tally = valid.tally();
        warn_unknown_fields_once(tally.unknown_fields);
        let summary = BatchSummary {
            received: batch.len(),
            inserted: report.inserted,
            duplicates: report.duplicates,
            rejected: tally.rejected,
            with_defects: tally.with_defects,
            defects: tally.defects,
            copied: report.copied,
            sent_to_dlq: tally.sent_to_dlq,
            refused: report.refused.len(),
            failed: failed.len(),
            statements: report.statements,
            refused_to_dlq: tally.refused_to_dlq,
            erased: tally.erased,
            unknown_fields: tally.unknown_fields,
            failure,
            backed_off: held.len(),
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

/// The records a FIFO batch did not read (the loop stopped at one that
/// could not be finished): each unread, with its id.
fn rest_of_ids<'b>(batch: &'b SqsBatch, out: &mut BatchWork<'b>) -> Result<(), HandlerError> {
    for index in (out.records.len()..).take_while(|&index| batch.has(index)) {
        out.push(message_id(batch, index)?, State::Unread);
    }
    Ok(())
}

fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
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
