//! The batch handler: turns one SQS batch into rows, dead letters and a
//! partial-batch response. Callable without the Lambda runtime (tests call
//! it directly).
//!
//! It deals with a batch: parse, transform, write, report. Which keys a
//! batch is masked with, and the erasure list it is filtered by, it asks
//! `crate::privacy::keys::Keys` once per batch, on the way down to the
//! sink. One file per step:
//! - this file: the handler, its settings, and the batch from end to end;
//! - [`transform`]: records validated, masked and streamed into the sink;
//! - [`failures`]: what is reported back (`batchItemFailures`, refused rows
//!   to the DLQ, visibility backoff);
//! - [`outcome`]: the response, the summary and the deadline.

mod failures;
mod outcome;
mod transform;

use crate::privacy::dead_letter::rebuilt::RebuiltVerifier;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use chrono::Utc;
use tokio::sync::Mutex;
use tracing::warn;

use crate::error::{HandlerError, SinkError};
use crate::ingest::backoff::{Schedule, Visibility};
use crate::ingest::dlq::DeadLetterQueue;
use crate::ingest::event::SqsBatch;
use crate::ingest::metrics::{DEFAULT_NAMESPACE, DEFAULT_SERVICE, InvocationMetrics, Metrics};
use crate::ingest::sink::{InsertReport, PgSink};
use crate::privacy::keys::{KeyReload, Keys};
use crate::privacy::masking::Masker;
use crate::privacy::vault::DataKey;
pub use outcome::{BatchSummary, Deadline, Outcome};
use transform::Transformed;

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
}

impl BatchHandler {
    /// A handler that masks with `masker` and writes through `sink`; rejected
    /// records are reported (no dead-letter queue of its own), metrics go to
    /// stdout under the default namespace.
    pub fn new(masker: Masker, sink: PgSink) -> Self {
        Self {
            keys: Arc::new(Keys::new(masker)),
            sinks: vec![Mutex::new(sink)],
            dlq: None,
            rebuilt: None,
            operator_role_id: None,
            metrics: Metrics::new(DEFAULT_NAMESPACE, DEFAULT_SERVICE, "login-etl"),
            vault: None,
            backoff: None,
            refused_max_receives: crate::config::DEFAULT_REFUSED_MAX_RECEIVES,
            contract: crate::contract::Contract::default(),
            days_ahead: DaysAhead::default(),
        }
    }

    /// Stores the logins `dlq-redrive --rebuild` makes from dead-letter
    /// copies that kept no original, when their seals open under
    /// `verifier`'s key (the dead-letter key).
    pub fn with_rebuilt_verifier(mut self, verifier: RebuiltVerifier) -> Self {
        self.rebuilt = Some(verifier);
        self
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

    /// Whether the keys this environment holds are the ones the database
    /// records (what every batch would otherwise be refused for), asked
    /// within `within` and recording nothing: `login-etl poll`'s start.
    pub async fn verify_keys(&self, within: Duration) -> Result<(), SinkError> {
        let mut sink = self.sink().await;
        sink.batch_keys(&self.keys, Some(Instant::now() + within), false)
            .await
            .map(|_| ())
    }

    /// The keys, for a check outside any batch (the consumer's probe
    /// asking again what its start refused: `PgSink::batch_keys` without
    /// recording).
    pub fn key_checker(&self) -> Arc<Keys> {
        Arc::clone(&self.keys)
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

    /// After an infrastructure failure of the write, reports the batch's
    /// records in `batchItemFailures` and backs each one off (its visibility,
    /// by `schedule`, through `visibility`) instead of failing the
    /// invocation; see `crate::ingest::backoff`. Without it a failed write fails
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

    /// Refuses what the DLQ operator's role (`DLQ_OPERATOR_ROLE_ID`, its
    /// `AROA…` id) sends unless it is what `dlq-redrive` sends.
    pub fn with_dlq_operator(mut self, role_id: Option<String>) -> Self {
        self.operator_role_id = role_id;
        self
    }

    /// Holds messages to `contract` (`UNKNOWN_FIELDS`, `EXTRA_FIELDS`).
    pub fn with_contract(mut self, contract: crate::contract::Contract) -> Self {
        self.contract = contract;
        self
    }

    /// Keeps each batch's original ip and device_id in the PII vault,
    /// encrypted under `key` (see `crate::privacy::vault`).
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
        let keys =
            Arc::into_inner(self.keys).expect("the keys are shared only once the handler is built");
        self.keys = Arc::new(keys.with_reload(reload));
        self
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
        // A batch comes from one queue: the first record that names its
        // queue tells (the later ones are not parsed yet).
        let fifo = batch
            .records()
            .find_map(|m| m.event_source_arn.as_deref())
            .is_some_and(|arn| arn.ends_with(".fifo"));
        let result = self.process(batch, fifo, deadline, started).await;
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
        result
    }

    /// The batch's work: its response and its counts.
    async fn process(
        &self,
        batch: &SqsBatch,
        fifo: bool,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Outcome, HandlerError> {
        let mut valid = Transformed::new(fifo, deadline);
        let (report, failure) = self.write(batch, started, &mut valid).await?;
        let masker = valid
            .masker
            .take()
            .unwrap_or_else(|| self.keys.unchecked().masker);
        let ids = &valid.ids;
        // Standard queues: rejected records go to the DLQ once their
        // neighbours are written, or failed (FIFO batches sent them before
        // writing): a reject is never held back by the database.
        if !fifo && let Some(dlq) = &self.dlq {
            valid.sent = dlq
                .send(&valid.rejected_records(batch), &masker, false, deadline)
                .await;
        }
        let refused_sent = match &self.dlq {
            Some(dlq) => {
                let to = (dlq, self.refused_max_receives, &masker);
                failures::send_refused(to, batch, &report, &valid, fifo, deadline).await
            }
            None => Vec::new(),
        };
        let failed = failures::failed_positions(
            batch.len(),
            &valid,
            &report,
            &refused_sent,
            failure.is_some(),
            fifo,
        );
        let (backed_off, visibility_change_failed) = match (&self.backoff, failure) {
            (Some((schedule, visibility)), Some(_)) => {
                let how = (*schedule, visibility);
                failures::back_off(how, batch, &failed, fifo, deadline).await
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
        let mut defects: BTreeMap<String, usize> = BTreeMap::new();
        for defect in valid.rows.iter().flat_map(|r| &r.defects) {
            *defects.entry(defect.code().into_owned()).or_default() += 1;
        }
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
            unknown_fields: valid.rows.iter().filter(|r| !r.unknown.is_empty()).count(),
            unknown_field_names: unknown_names(&valid.rows),
            failure,
            backed_off,
            visibility_change_failed,
        };
        Ok(Outcome { response, summary })
    }

    /// Transforms and writes the batch on a free sink. A failed write is an
    /// error when there is no backoff; with one, it is the failure's class
    /// (the caller reports and backs off every record not otherwise finished).
    async fn write<'b>(
        &self,
        batch: &'b SqsBatch,
        started: Instant,
        valid: &mut Transformed<'b>,
    ) -> Result<(InsertReport, Option<&'static str>), HandlerError> {
        let mut sink = self.sink().await;
        let written = self.transform_and_write(&mut sink, batch, valid).await;
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
}

/// Now minus the oldest `SentTimestamp` of the batch.
fn ingest_lag_ms(batch: &SqsBatch, now_ms: i64) -> Option<u64> {
    let oldest = batch
        .records()
        .filter_map(|m| m.sent_timestamp()?.parse::<i64>().ok())
        .min()?;
    Some(now_ms.saturating_sub(oldest).max(0) as u64)
}

/// The names of the fields outside the contract the rows carried (at most
/// `crate::ingest::metrics::MAX_UNKNOWN_NAMES`); each name new to this
/// environment is logged once, at WARN: a producer sends a field nobody
/// declared, which is counted and never stored.
fn unknown_names(rows: &[crate::contract::LoginRow<'_>]) -> std::collections::BTreeSet<String> {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    /// Names already logged by this environment (bounded).
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut names = BTreeSet::new();
    for name in rows.iter().flat_map(|r| r.unknown.iter()) {
        if names.len() == crate::ingest::metrics::MAX_UNKNOWN_NAMES {
            break;
        }
        names.insert(name.as_str().to_owned());
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    for name in &names {
        if seen.len() < 1_000 && seen.insert(name.clone()) {
            warn!(
                field = %name,
                "messages carry a field outside the contract: counted (UnknownFields) and never stored; declare it in EXTRA_FIELDS if it holds no PII and should be kept, or set UNKNOWN_FIELDS=reject to refuse such messages"
            );
        }
    }
    names
}
