//! The batch handler: turns one SQS batch into rows and a partial-batch
//! response. Callable without the Lambda runtime (tests call it directly).

use std::collections::BTreeMap;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use tokio::sync::Mutex;
use tracing::{info, trace, warn};

use crate::error::{HandlerError, SinkError};
use crate::event::SqsBatch;
use crate::masking::Masker;
use crate::record::{self, LoginRow, Rejection};
use crate::sink::{InsertReport, PgSink};

/// Counts of one invocation, also written as its summary log line.
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
    /// Records the database refused.
    pub refused: usize,
    /// Records reported in `batchItemFailures` (rejected + refused + FIFO tail).
    pub failed: usize,
    /// INSERT statements executed: 1, plus about 2·log2(n) per refused row.
    pub statements: u32,
}

/// Processes SQS batches. Built once per cold start, shared by invocations.
pub struct BatchHandler {
    masker: Masker,
    sink: Mutex<PgSink>,
}

impl BatchHandler {
    /// A handler that masks with `masker` and writes through `sink`.
    pub fn new(masker: Masker, sink: PgSink) -> Self {
        Self {
            masker,
            sink: Mutex::new(sink),
        }
    }

    /// Handles one batch; returns the response for the event-source mapping.
    pub async fn handle_batch(&self, batch: &SqsBatch) -> Result<SqsBatchResponse, HandlerError> {
        self.handle_batch_with_summary(batch)
            .await
            .map(|(response, _)| response)
    }

    /// [`handle_batch`](Self::handle_batch) for an `aws_lambda_events` event
    /// (tests and fixtures).
    pub async fn handle(&self, event: &SqsEvent) -> Result<SqsBatchResponse, HandlerError> {
        self.handle_batch(&SqsBatch::from(event)).await
    }

    /// Like [`handle`](Self::handle), also returning the counts.
    pub async fn handle_with_summary(
        &self,
        event: &SqsEvent,
    ) -> Result<(SqsBatchResponse, BatchSummary), HandlerError> {
        self.handle_batch_with_summary(&SqsBatch::from(event)).await
    }

    /// Like [`handle_batch`](Self::handle_batch), also returning the counts.
    pub async fn handle_batch_with_summary(
        &self,
        batch: &SqsBatch,
    ) -> Result<(SqsBatchResponse, BatchSummary), HandlerError> {
        self.handle_batch_until(batch, None).await
    }

    /// Handles one batch that must be answered by `deadline` (the
    /// invocation's, from the Lambda context): the sink stops retrying early
    /// enough to return a retryable error before Lambda would kill it.
    pub async fn handle_batch_until(
        &self,
        batch: &SqsBatch,
        deadline: Option<Instant>,
    ) -> Result<(SqsBatchResponse, BatchSummary), HandlerError> {
        let started = Instant::now();
        let records = &batch.records;
        let ids = message_ids(batch)?;
        let fifo = records.iter().any(|m| {
            m.event_source_arn
                .as_deref()
                .is_some_and(|arn| arn.ends_with(".fifo"))
        });
        let mut valid = Transformed::default();
        let mut sink = self.sink.lock().await;
        let report = self
            .transform_and_write(&mut sink, batch, &ids, fifo, deadline, &mut valid)
            .await
            .inspect_err(|e| {
                warn!(
                    received = records.len(),
                    valid = valid.rows.len(),
                    rejected = valid.failed_positions.len(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    retryable = e.is_retryable(),
                    error = %e,
                    "batch failed; nothing of it is reported done, so the whole batch will be redelivered"
                );
            })?;
        drop(sink);
        let Transformed {
            row_positions,
            mut failed_positions,
            rejected,
            ..
        } = valid;
        failed_positions.extend(report.refused.iter().map(|&i| row_positions[i]));
        if fifo && let Some(&first) = failed_positions.iter().min() {
            // Order matters: everything from the first failure on is retried.
            failed_positions = (first..records.len()).collect();
        }
        failed_positions.sort_unstable();
        failed_positions.dedup();

        let mut response = SqsBatchResponse::default();
        for &pos in &failed_positions {
            response.add_failure(ids[pos]);
        }
        let summary = BatchSummary {
            received: records.len(),
            inserted: report.inserted,
            duplicates: report.duplicates,
            refused: report.refused.len(),
            failed: failed_positions.len(),
            statements: report.statements,
            rejected,
        };
        info!(
            received = summary.received,
            inserted = summary.inserted,
            duplicates = summary.duplicates,
            rejected = summary.rejected.values().sum::<usize>(),
            rejected_by_reason = %format_reasons(&summary.rejected),
            refused = summary.refused,
            failed = summary.failed,
            fifo,
            statements = summary.statements,
            copied = report.copied,
            duration_ms = started.elapsed().as_millis() as u64,
            "batch processed"
        );
        Ok((response, summary))
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
        let today = Utc::now().date_naive();
        let mut writer = sink.start_batch(batch.records.len(), deadline).await?;
        for (pos, (message, &id)) in batch.records.iter().zip(ids).enumerate() {
            match record::transform(id, message, &self.masker, today) {
                Ok(row) => {
                    trace!(message_id = id, "record valid");
                    writer.push(&row).await;
                    out.rows.push(row);
                    out.row_positions.push(pos);
                }
                Err(reason) => {
                    log_rejection(id, &reason);
                    *out.rejected.entry(reason.code().into_owned()).or_default() += 1;
                    out.failed_positions.push(pos);
                    if fifo {
                        // Later records must wait for this one: do not even validate them.
                        break;
                    }
                }
            }
        }
        writer.finish(&out.rows, fifo).await
    }
}

/// The batch split by validation.
#[derive(Default)]
struct Transformed<'b> {
    /// Valid rows, in batch order.
    rows: Vec<LoginRow<'b>>,
    /// Position in the batch of each row.
    row_positions: Vec<usize>,
    /// Positions of rejected records.
    failed_positions: Vec<usize>,
    /// Rejections by code.
    rejected: BTreeMap<String, usize>,
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

fn format_reasons(reasons: &BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = reasons
        .iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect();
    parts.join(",")
}
