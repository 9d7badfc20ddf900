//! The batch handler: turns one SQS batch into rows, dead letters and a
//! partial-batch response. Callable without the Lambda runtime (tests call
//! it directly).
//!
//! A batch's path is [`BatchHandler::handle`], a straight line over the
//! files beside this one, each one step, each record with one state
//! ([`records`]) from its reading to its report:
//! - [`write`]: a free sink, the batch's keys, the records read
//!   ([`read`]: validated, masked, each row streamed into the sink as it
//!   comes) and the write (again, re-keyed and filtered, when the keys
//!   moved under it);
//! - [`report`]: rejects and refused rows to the DLQ, `batchItemFailures`
//!   (backed off after a failed write), the spans and the counts;
//! - [`days_ahead`]: the partitions made ahead, read now and then after a
//!   write.
//!
//! Which keys a batch is masked with, and the erasure list it is filtered
//! by, the handler asks `crate::privacy::keys::Keys` once per batch, on the
//! way down to the sink (again when a record is signed at a newer key
//! version, or the write finds them out of date). Beside them:
//! - [`build`]: the handler's settings, set once at a cold start;
//! - [`outcome`]: the response, the summary and the deadline (the handler's
//!   answer, which the metrics and `login-etl poll` read too).

mod build;
mod days_ahead;
mod outcome;
mod read;
mod records;
mod report;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Mutex;

use crate::error::HandlerError;
use crate::config::backoff::Schedule;
use crate::ingest::backoff::Visibility;
use crate::ingest::dlq::DeadLetterQueue;
use crate::ingest::event::SqsBatch;
use crate::ingest::metrics::{InvocationMetrics, Metrics};
use crate::ingest::sink::PgSink;
use crate::ingest::trace::{MessageOutcome, Tracer};
use crate::privacy::dead_letter::rebuilt::RebuiltVerifier;
use crate::privacy::keys::Keys;
use crate::privacy::vault::DataKey;
pub use crate::ingest::summary::BatchSummary;
pub use outcome::{Deadline, Outcome};
use records::BatchWork;
use report::ingest_lag_ms;

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
}
