//! The batch handler: turns one SQS batch into rows and a partial-batch
//! response. Callable without the Lambda runtime (tests call it directly).

use std::collections::BTreeMap;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chrono::Utc;
use tokio::sync::Mutex;
use tracing::{info, trace, warn};

use crate::error::HandlerError;
use crate::event::SqsBatch;
use crate::masking::Masker;
use crate::record::{self, LoginRow, Rejection};
use crate::sink::{COPY_MIN_ROWS, PgSink};

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
        let started = Instant::now();
        let records = &batch.records;
        let mut ids = Vec::with_capacity(records.len());
        for (index, message) in records.iter().enumerate() {
            match message.message_id.as_deref() {
                Some(id) if !id.is_empty() => ids.push(id),
                _ => return Err(HandlerError::MissingMessageId { index }),
            }
        }
        let fifo = records.iter().any(|m| {
            m.event_source_arn
                .as_deref()
                .is_some_and(|arn| arn.ends_with(".fifo"))
        });
        let today = Utc::now().date_naive();

        let mut rows: Vec<LoginRow<'_>> = Vec::with_capacity(records.len());
        let mut row_positions = Vec::with_capacity(records.len());
        let mut failed_positions = Vec::new();
        let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
        let mut sink = self.sink.lock().await;
        let mut reconnects_left = 1u8;
        let report = async {
            // Large batches stream into a COPY while they are transformed, so
            // the server loads rows while the client masks the next ones.
            let copy_tried = records.len() >= COPY_MIN_ROWS;
            let mut copy = if copy_tried {
                sink.begin_copy(&mut reconnects_left).await?
            } else {
                None
            };
            for (pos, (message, id)) in records.iter().zip(&ids).enumerate() {
                match record::transform(id, message, &self.masker, today) {
                    Ok(row) => {
                        trace!(message_id = *id, "record valid");
                        if let Some(copy) = copy.as_mut() {
                            copy.write(&row).await;
                        }
                        rows.push(row);
                        row_positions.push(pos);
                    }
                    Err(reason) => {
                        log_rejection(id, &reason);
                        *rejected.entry(reason.code().into_owned()).or_default() += 1;
                        failed_positions.push(pos);
                        if fifo {
                            // Later records must wait for this one: do not even validate them.
                            break;
                        }
                    }
                }
            }
            sink.finish_batch(copy, copy_tried, &rows, fifo, &mut reconnects_left)
                .await
        }
        .await
        .inspect_err(|e| {
            warn!(
                received = records.len(),
                duration_ms = started.elapsed().as_millis() as u64,
                retryable = e.is_retryable(),
                error = %e,
                "batch failed; the whole batch will be redelivered"
            );
        })?;
        drop(sink);
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
            duration_ms = started.elapsed().as_millis() as u64,
            "batch processed"
        );
        Ok((response, summary))
    }
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
