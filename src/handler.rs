//! The batch handler: turns one SQS batch into rows, dead letters and a
//! partial-batch response. Callable without the Lambda runtime (tests call
//! it directly).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use chrono::Utc;
use tokio::sync::Mutex;
use tracing::{trace, warn};

use crate::backoff::{Hold, Schedule, Visibility, jitter};
use crate::dlq::{DeadLetterQueue, Rejected};
use crate::error::{HandlerError, SinkError};
use crate::event::SqsBatch;
use crate::masking::Masker;
use crate::metrics::{DEFAULT_NAMESPACE, DEFAULT_SERVICE, InvocationMetrics, Metrics};
use crate::record::{self, LoginRow, Rejection};
use crate::sink::{ErasedUsers, ErasureList, InsertReport, PgSink, Versions};
use crate::vault::{DataKey, VaultBatch, VaultWrite};

/// Counts of one invocation, also written as its summary line (an EMF
/// document, see [`crate::metrics`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    /// Records in the batch.
    pub received: usize,
    /// New rows written.
    pub inserted: u64,
    /// Records already in the table (redelivery).
    pub duplicates: u64,
    /// Records that failed validation, by [`Rejection::code`].
    pub rejected: BTreeMap<String, usize>,
    /// Rejected records the function sent to the dead-letter queue itself.
    pub sent_to_dlq: usize,
    /// Records the database refused.
    pub refused: usize,
    /// Records reported in `batchItemFailures` (unsent rejections + refused + FIFO tail).
    pub failed: usize,
    /// Database transactions tried: 1, plus about 2·log2(n) per refused row.
    pub statements: u32,
    /// Refused rows sent to the DLQ (`refused.<SQLSTATE>`) after
    /// `REFUSED_MAX_RECEIVES` receives.
    pub refused_to_dlq: usize,
    /// Records of users erased by `login-etl forget`: handled, not stored.
    pub erased: usize,
    /// The write of the batch failed as a whole (its class, see
    /// `HandlerError::class`); its records are reported and backed off.
    pub failure: Option<&'static str>,
    /// Failed records whose visibility was extended.
    pub backed_off: usize,
    /// Failed records whose visibility change SQS did not confirm (plain
    /// redelivery after the queue's visibility timeout).
    pub visibility_change_failed: usize,
}

/// What [`BatchHandler::handle`] made of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The answer to the event-source mapping (or the consumer): the records
    /// to redeliver.
    pub response: SqsBatchResponse,
    /// The counts, as written in the batch's EMF document.
    pub summary: BatchSummary,
}

impl Outcome {
    /// The response and the summary, as a pair.
    pub fn into_parts(self) -> (SqsBatchResponse, BatchSummary) {
        (self.response, self.summary)
    }
}

/// When a batch must be answered by: the Lambda invocation's deadline, the
/// consumer's batch timeout, or none (tests, benchmarks, library use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: only the per-operation bounds apply.
    pub const NONE: Deadline = Deadline(None);

    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// The deadline of a Lambda invocation (its context's wall-clock
    /// deadline). One already past on arrival is no real one (Lambda would
    /// have ended the invocation): emulators such as `cargo lambda watch`
    /// set it before their first, lazy compile; it is ignored, with a warning.
    pub fn from_wall_clock(deadline: SystemTime) -> Self {
        match deadline.duration_since(SystemTime::now()) {
            Ok(left) => Self::at(Instant::now() + left),
            Err(_) => {
                warn!("the invocation's deadline is already past on arrival; ignoring it");
                Self::NONE
            }
        }
    }

    /// The instant, if any.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }
}

/// Reads the masking and erasure keys again (from Secrets Manager): how a
/// warm function learns the version `login-etl rotate-key` moved to.
pub type KeyReload =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Masker, String>> + Send>> + Send + Sync>;

/// The least time between two key reloads: a database ahead of the secret
/// (an operator's mistake) costs one Secrets Manager call per this, not per batch.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Processes SQS batches. Built once per cold start, shared by invocations.
pub struct BatchHandler {
    /// Every key version known to this environment (at the newest).
    masker: std::sync::RwLock<Arc<Masker>>,
    /// How to read the keys again, and when that was last tried.
    reload: Option<(KeyReload, Mutex<Option<Instant>>)>,
    /// One sink (one connection) per batch in flight: one in Lambda, the
    /// consumer's concurrency in `login-etl poll`.
    sinks: Vec<Mutex<PgSink>>,
    dlq: Option<DeadLetterQueue>,
    metrics: Metrics,
    vault: Option<DataKey>,
    backoff: Option<(Schedule, Visibility)>,
    refused_max_receives: u32,
}

impl BatchHandler {
    /// A handler that masks with `masker` and writes through `sink`; rejected
    /// records are reported (no dead-letter queue of its own), metrics go to
    /// stdout under the default namespace.
    pub fn new(masker: Masker, sink: PgSink) -> Self {
        Self {
            masker: std::sync::RwLock::new(Arc::new(masker)),
            reload: None,
            sinks: vec![Mutex::new(sink)],
            dlq: None,
            metrics: Metrics::new(DEFAULT_NAMESPACE, DEFAULT_SERVICE, "login-etl"),
            vault: None,
            backoff: None,
            refused_max_receives: crate::config::DEFAULT_REFUSED_MAX_RECEIVES,
        }
    }

    /// Lets `n` batches write at once, each on a connection of its own (the
    /// sink's siblings); Lambda sends one batch at a time per environment.
    pub fn with_connections(mut self, n: usize) -> Self {
        let first = self.sinks[0].get_mut();
        let more: Vec<Mutex<PgSink>> = (1..n.max(1)).map(|_| Mutex::new(first.sibling())).collect();
        self.sinks.extend(more);
        self
    }

    /// A sink with the handler's settings and a connection of its own (the
    /// consumer's database probe).
    pub async fn spare_sink(&self) -> PgSink {
        self.sinks[0].lock().await.sibling()
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

    /// After an infrastructure failure of the write, reports the batch's
    /// records in `batchItemFailures` and backs each one off (its visibility,
    /// by `schedule`, through `visibility`) instead of failing the
    /// invocation; see [`crate::backoff`]. Without it a failed write fails
    /// the invocation.
    pub fn with_backoff(mut self, schedule: Schedule, visibility: Visibility) -> Self {
        self.backoff = Some((schedule, visibility));
        self
    }

    /// Sends a row the database refused to the DLQ (`refused.<SQLSTATE>`)
    /// on its `receives`-th receive (0: never). Default 3.
    pub fn with_refused_max_receives(mut self, receives: u32) -> Self {
        self.refused_max_receives = receives;
        self
    }

    /// Keeps each batch's original ip and device_id in the PII vault,
    /// encrypted under `key` (see [`crate::vault`]).
    pub fn with_vault(mut self, key: DataKey) -> Self {
        self.vault = Some(key);
        self
    }

    /// Sends rejected records to `dlq` directly (`DLQ_URL`).
    pub fn with_dead_letter_queue(mut self, dlq: DeadLetterQueue) -> Self {
        self.dlq = Some(dlq);
        self
    }

    /// Writes metrics with `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reads the keys again with `reload` when the database's key version is
    /// newer than any this handler holds (a rotation began after its cold
    /// start). Without it such a batch fails as retryable.
    pub fn with_key_reload(mut self, reload: KeyReload) -> Self {
        self.reload = Some((reload, Mutex::new(None)));
        self
    }

    /// The erasure list and its versions, and the masker at the database's
    /// key version, its keys checked against the values the database
    /// records (recorded first when it has none; a mismatch is refused, as
    /// it would write tokens or user keys that match nothing stored).
    async fn list_and_masker(
        &self,
        sink: &mut PgSink,
        deadline: Option<Instant>,
    ) -> Result<(Versions, ErasedUsers, Masker), SinkError> {
        let list: ErasureList = sink.erased_users(deadline).await?;
        let mut masker = self.masker_at(list.versions.key).await?;
        if list.checks.erasure_derived && !masker.users().is_derived() {
            // The list predates erasure keys: its user keys are derived
            // from the masking key, whatever ERASURE_KEY_SECRET_ID holds.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                warn!("the erasure list predates erasure keys: user keys are derived from the masking key, ERASURE_KEY_SECRET_ID is not used (docs/operations.md, \"The masking key leaked\")")
            });
            masker = masker.with_derived_users();
        }
        let (mine_m, mine_e) = (masker.check(), masker.users().check());
        let recorded =
            |r: &Option<String>, mine: &crate::masking::Token| r.as_deref() == Some(mine.as_str());
        if !recorded(&list.checks.masking, &mine_m) || !recorded(&list.checks.erasure, &mine_e) {
            sink.check_keys(
                list.versions.key,
                mine_m.as_str(),
                mine_e.as_str(),
                deadline,
            )
            .await?;
            // Recorded (the next batch reloads the list with them). The
            // batch keeps this list's versions, which its masker matches;
            // a rotation since is caught by the write's own check.
        }
        Ok((list.versions, list.users, masker))
    }

    /// The masker at the database's key `version`, reading the keys again
    /// when this handler holds none that new.
    async fn masker_at(&self, version: u16) -> Result<Masker, SinkError> {
        let held = Arc::clone(&self.masker.read().expect("never poisoned"));
        if let Some(m) = held.at(version) {
            return Ok(m);
        }
        let behind = |latest: u16, detail: &str| {
            SinkError::Misconfigured {
            what: crate::error::Misconfiguration::KeyVersionBehind,
            op: "masking the batch",
            cause: format!(
                "the database is at masking-key version {version} (login-etl rotate-key) and this function holds versions up to {latest}{detail}"
            ),
            hint: "; the batch is retried: append the new version to the masking secret (docs/operations.md, \"The masking key leaked\")".into(),
        }
        };
        let Some((reload, last)) = &self.reload else {
            return Err(behind(held.latest(), ""));
        };
        let mut last = last.lock().await;
        // Another batch may have reloaded while this one waited.
        let current = Arc::clone(&self.masker.read().expect("never poisoned"));
        if let Some(m) = current.at(version) {
            return Ok(m);
        }
        if last.is_some_and(|t| t.elapsed() < KEY_RELOAD_INTERVAL) {
            return Err(behind(
                current.latest(),
                ", and the secret had no newer one moments ago",
            ));
        }
        *last = Some(Instant::now());
        let fresh = reload().await.map_err(|e| {
            behind(
                current.latest(),
                &format!("; reading the keys again failed: {e}"),
            )
        })?;
        warn!(
            from = current.latest(),
            to = fresh.latest(),
            "masking keys read again: the database moved to a newer key version"
        );
        let found = fresh.at(version);
        let latest = fresh.latest();
        *self.masker.write().expect("never poisoned") = Arc::new(fresh);
        found.ok_or_else(|| behind(latest, " after reading the secret again"))
    }

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
        let fifo = batch.records.iter().any(|m| {
            m.event_source_arn
                .as_deref()
                .is_some_and(|arn| arn.ends_with(".fifo"))
        });
        let result = self.process(batch, fifo, deadline, started).await;
        let now_ms = Utc::now().timestamp_millis();
        let mut metrics = InvocationMetrics {
            received: batch.records.len(),
            duration_ms: started.elapsed().as_millis() as u64,
            ingest_lag_ms: ingest_lag_ms(batch, now_ms),
            fifo,
            ..InvocationMetrics::default()
        };
        match &result {
            Ok((_, summary, copied)) => {
                metrics.inserted = summary.inserted;
                metrics.duplicates = summary.duplicates;
                metrics.rejected = summary.rejected.clone();
                metrics.refused = summary.refused;
                metrics.batch_item_failures = summary.failed;
                metrics.sent_to_dlq = summary.sent_to_dlq;
                metrics.statements = summary.statements;
                metrics.copied = *copied;
                metrics.failure = summary.failure;
                metrics.backed_off = summary.backed_off;
                metrics.visibility_change_failed = summary.visibility_change_failed;
                metrics.refused_to_dlq = summary.refused_to_dlq;
                metrics.erased = summary.erased;
            }
            Err(e) => {
                metrics.failure = Some(e.class());
                metrics.invocation_failed = true;
            }
        }
        self.metrics.emit(&metrics, now_ms);
        result.map(|(response, summary, _)| Outcome { response, summary })
    }

    /// The batch's work; `copied` tells whether the rows went in by COPY.
    async fn process(
        &self,
        batch: &SqsBatch,
        fifo: bool,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<(SqsBatchResponse, BatchSummary, bool), HandlerError> {
        let ids = message_ids(batch)?;
        let mut valid = Transformed::default();
        let (report, failure) = self
            .write(batch, &ids, fifo, deadline, started, &mut valid)
            .await?;
        // Standard queues: rejected records go to the DLQ once their
        // neighbours are written, or failed (FIFO batches sent them before
        // writing): a reject is never held back by the database.
        if !fifo && let Some(dlq) = &self.dlq {
            valid.sent = dlq
                .send(&valid.rejected_records(batch, &ids), false, deadline)
                .await;
        }
        let refused_sent = self
            .send_refused(batch, &ids, &report, &valid, fifo, deadline)
            .await;
        let failed = failed_positions(
            batch.records.len(),
            &valid,
            &report,
            &refused_sent,
            failure.is_some(),
            fifo,
        );
        let (backed_off, visibility_change_failed) = match (&self.backoff, failure) {
            (Some((schedule, visibility)), Some(_)) => {
                self.back_off(batch, &failed, fifo, *schedule, visibility, deadline)
                    .await
            }
            _ => (0, 0),
        };
        let mut response = SqsBatchResponse::default();
        for &pos in &failed {
            response.add_failure(ids[pos]);
        }
        let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
        for (_, code) in &valid.rejected {
            *rejected.entry(code.clone()).or_default() += 1;
        }
        let summary = BatchSummary {
            received: batch.records.len(),
            inserted: report.inserted,
            duplicates: report.duplicates,
            rejected,
            sent_to_dlq: valid.sent.len(),
            refused: report.refused.len(),
            failed: failed.len(),
            statements: report.statements,
            refused_to_dlq: refused_sent.len(),
            erased: valid.erased.len(),
            failure,
            backed_off,
            visibility_change_failed,
        };
        Ok((response, summary, report.copied))
    }

    /// Transforms and writes the batch on a free sink. A failed write is an
    /// error when there is no backoff; with one, it is the failure's class
    /// (the caller reports and backs off every record not otherwise finished).
    async fn write<'b>(
        &self,
        batch: &'b SqsBatch,
        ids: &[&'b str],
        fifo: bool,
        deadline: Option<Instant>,
        started: Instant,
        valid: &mut Transformed<'b>,
    ) -> Result<(InsertReport, Option<&'static str>), HandlerError> {
        let mut sink = self.sink().await;
        let written = self
            .transform_and_write(&mut sink, batch, ids, fifo, deadline, valid)
            .await;
        drop(sink);
        let e = match written {
            Ok(report) => return Ok((report, None)),
            Err(e) => e,
        };
        let backing_off = self.backoff.is_some();
        warn!(
            received = batch.records.len(),
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

    /// Rows the database kept refusing, on their `refused_max_receives`-th
    /// receive: to the DLQ with their SQLSTATE (`refused.<SQLSTATE>`).
    /// Returns the positions SQS accepted, ascending.
    async fn send_refused(
        &self,
        batch: &SqsBatch,
        ids: &[&str],
        report: &InsertReport,
        valid: &Transformed<'_>,
        fifo: bool,
        deadline: Option<Instant>,
    ) -> Vec<usize> {
        let Some(dlq) = &self.dlq else {
            return Vec::new();
        };
        if self.refused_max_receives == 0 {
            return Vec::new();
        }
        let records = &batch.records;
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
            .filter(|&(pos, _)| receive_count(&records[pos]) >= self.refused_max_receives)
            .map(|(pos, code)| Rejected {
                position: pos,
                message: &records[pos],
                message_id: ids[pos],
                code,
            })
            .collect();
        if due.is_empty() {
            return Vec::new();
        }
        dlq.send(&due, fifo, deadline).await
    }

    /// Extends the visibility of the failed records by the schedule: each by
    /// its own receive count, or (FIFO) the whole held tail by the highest,
    /// so it comes back together and in order. Returns (backed off, not
    /// confirmed).
    async fn back_off(
        &self,
        batch: &SqsBatch,
        positions: &[usize],
        fifo: bool,
        schedule: Schedule,
        visibility: &Visibility,
        deadline: Option<Instant>,
    ) -> (usize, usize) {
        let records = &batch.records;
        let tail = positions
            .iter()
            .map(|&p| receive_count(&records[p]))
            .max()
            .unwrap_or(1);
        let together = schedule.delay(tail, jitter());
        let holds: Vec<Hold<'_>> = positions
            .iter()
            .map(|&pos| Hold {
                position: pos,
                receipt_handle: records[pos].receipt_handle.as_deref(),
                seconds: if fifo {
                    together
                } else {
                    schedule.delay(receive_count(&records[pos]), jitter())
                },
            })
            .collect();
        let source = records.iter().find_map(|m| m.event_source_arn.as_deref());
        let held = visibility.hold(&holds, source, deadline).await;
        let missed = positions.len() - held.len();
        if missed > 0 {
            warn!(
                records = missed,
                "visibility not extended for some failed records; they are redelivered after the queue's visibility timeout"
            );
        }
        (held.len(), missed)
    }

    /// Validates and masks every record, streaming the valid rows into the
    /// sink (a COPY for large batches) as they come, then commits them.
    async fn transform_and_write<'b>(
        &self,
        sink: &mut PgSink,
        batch: &'b SqsBatch,
        ids: &[&'b str],
        fifo: bool,
        deadline: Option<Instant>,
        out: &mut Transformed<'b>,
    ) -> Result<InsertReport, SinkError> {
        // The erasure list, in memory (its version is checked by the write).
        // When the database fails before the write begins, every record is
        // still validated, so the rejects reach the DLQ all the same.
        let mut early = None;
        // Mask at the database's key version, with keys the database
        // recognises. Without them (nor after reading them again) the
        // records are still validated, with the newest key held, for the
        // DLQ; nothing is written.
        let (versions, erased, masker) = match self.list_and_masker(sink, deadline).await {
            Ok(ready) => ready,
            Err(e) => {
                early = Some(e);
                (
                    Versions::at(1),
                    Default::default(),
                    Masker::clone(&self.masker.read().expect("never poisoned")),
                )
            }
        };
        let mut writer = match early {
            Some(_) => None,
            None => match sink.start_batch(batch.records.len(), deadline).await {
                Ok(writer) => Some(writer),
                Err(e) => {
                    early = Some(e);
                    None
                }
            },
        };
        for (pos, (message, &id)) in batch.records.iter().zip(ids).enumerate() {
            match record::transform(id, message, &masker) {
                Ok(row) if erased.contains(&masker, &row.user_id) => {
                    trace!(message_id = id, "record of an erased user");
                    out.erased.push(pos);
                }
                Ok(row) => {
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
        if fifo && let Some(dlq) = &self.dlq {
            // A rejected record sent to the DLQ is finished, so the records
            // after it may go on; the first one that could not be sent holds
            // back every later row.
            out.sent = dlq
                .send(&out.rejected_records(batch, ids), true, deadline)
                .await;
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
        let vault = self.vault.as_ref().map(|key| VaultWrite {
            key,
            batch: &out.vault,
        });
        if let Some(e) = early {
            return Err(e);
        }
        let writer = writer.expect("a writer whenever nothing failed before it");
        match writer.finish(&out.rows, versions, fifo, vault).await {
            Err(SinkError::BatchOutdated) => {
                self.write_without_erased(sink, fifo, deadline, out).await
            }
            written => written,
        }
    }

    /// The erasure list or the key version changed while the batch was being
    /// written (`login-etl forget` erased someone, `login-etl rotate-key`
    /// began): reloads both, re-keys the rows' tokens to the new version (one
    /// step of the chain each, no original needed), drops the rows of erased
    /// users (handled: not stored, not failed, not dead-lettered) and writes
    /// the rest. A few rounds, as another change may land in between.
    async fn write_without_erased(
        &self,
        sink: &mut PgSink,
        fifo: bool,
        deadline: Option<Instant>,
        out: &mut Transformed<'_>,
    ) -> Result<InsertReport, SinkError> {
        for _ in 0..3 {
            sink.forget_erased();
            let (version, erased, masker) = self.list_and_masker(sink, deadline).await?;
            for row in out.rows.iter_mut() {
                rekey_row(&masker, row)?;
            }
            let keep: Vec<bool> = out
                .rows
                .iter()
                .map(|r| !erased.contains(&masker, &r.user_id))
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
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            match sink
                .insert_until(&out.rows, version, fifo, vault, deadline)
                .await
            {
                Err(SinkError::BatchOutdated) => continue,
                written => return written,
            }
        }
        Err(SinkError::Transient {
            op: "writing a batch while users were being erased",
            cause: "the erasure list kept changing".into(),
        })
    }
}

/// Moves a row's tokens to `masker`'s version, one step of the chain at a
/// time. A database whose version went down is refused: no step undoes a key.
fn rekey_row(masker: &Masker, row: &mut LoginRow<'_>) -> Result<(), SinkError> {
    if row.key_version > masker.version() {
        return Err(SinkError::Fatal {
            op: "masking the batch",
            cause: format!(
                "the database's masking-key version went down from {} to {}",
                row.key_version,
                masker.version()
            ),
            hint: "; key versions only grow: check that user_logins_key_state was not restored from an older backup".into(),
        });
    }
    while row.key_version < masker.version() {
        row.key_version += 1;
        row.masked_ip = masker.rekey(&row.masked_ip, row.key_version);
        row.masked_device_id = masker.rekey(&row.masked_device_id, row.key_version);
    }
    Ok(())
}

/// The batch split by validation.
#[derive(Default)]
struct Transformed<'b> {
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
}

impl<'b> Transformed<'b> {
    fn rejected_records<'a>(&'a self, batch: &'b SqsBatch, ids: &[&'b str]) -> Vec<Rejected<'a>>
    where
        'b: 'a,
    {
        self.rejected
            .iter()
            .map(|(pos, code)| Rejected {
                position: *pos,
                message: &batch.records[*pos],
                message_id: ids[*pos],
                code,
            })
            .collect()
    }
}

/// The positions to report in `batchItemFailures`, ascending: rejects not
/// in the DLQ, refused rows not in the DLQ, and (`write_failed`) every record
/// not otherwise finished, whether or not it got as far as validation. On
/// FIFO, everything from the first of them on (order must hold), except
/// records already finished (in the DLQ, as after a redrive, or erased).
fn failed_positions(
    received: usize,
    valid: &Transformed<'_>,
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

/// The record's `ApproximateReceiveCount` (1 when absent or unreadable).
fn receive_count(record: &crate::event::SqsRecord) -> u32 {
    record
        .attributes
        .as_ref()
        .and_then(|a| a.approximate_receive_count.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Now minus the oldest `SentTimestamp` of the batch.
fn ingest_lag_ms(batch: &SqsBatch, now_ms: i64) -> Option<u64> {
    let oldest = batch
        .records
        .iter()
        .filter_map(|m| m.sent_timestamp()?.parse::<i64>().ok())
        .min()?;
    Some(now_ms.saturating_sub(oldest).max(0) as u64)
}

/// Every record's `messageId`; without one, a record cannot be reported on
/// its own, so the invocation fails.
fn message_ids(batch: &SqsBatch) -> Result<Vec<&str>, HandlerError> {
    batch
        .records
        .iter()
        .enumerate()
        .map(|(index, message)| match message.message_id.as_deref() {
            Some(id) if !id.is_empty() => Ok(id),
            _ => {
                let e = HandlerError::MissingMessageId { index };
                warn!(received = batch.records.len(), error = %e, "batch refused");
                Err(e)
            }
        })
        .collect()
}

fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
}
