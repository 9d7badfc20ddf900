//! Reporting one batch: rejects and refused rows to the DLQ, the records
//! that come back (`batchItemFailures`, backed off after a failed write),
//! the spans' outcomes and the summary's counts, each a pass over the
//! records' states.

use std::time::Instant;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use tracing::warn;

use super::records::BatchWork;
use super::{BatchHandler, BatchSummary, Outcome};
use crate::config::backoff::Schedule;
use crate::ingest::backoff::{Hold, Visibility, jitter};
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::sink::InsertReport;
use crate::ingest::trace::BatchTrace;

impl BatchHandler {
    /// FIFO: a rejected record sent to the DLQ is finished, so the records
    /// after it may go on; the first one that could not be sent holds back
    /// every later row.
    pub(super) async fn send_fifo_rejects<'b>(
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

    /// Reports the batch: its rejects and refused rows to the DLQ, the
    /// records to redeliver (backed off after a failed write), and its
    /// counts.
    pub(super) async fn report(
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
}

/// Extends the visibility of the failed records by the schedule: each by
/// its own receive count, or (FIFO) the whole held tail by the highest,
/// so it comes back together and in order. Returns the positions whose
/// visibility SQS extended.
pub(super) async fn back_off(
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
pub(super) fn receive_count(record: &SqsRecord) -> u32 {
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
pub(super) fn warn_unknown_fields_once(count: usize) {
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
pub(super) fn ingest_lag_ms(batch: &SqsBatch, now_ms: i64) -> Option<u64> {
    let oldest = batch
        .records()
        .filter_map(|m| m.sent_timestamp()?.parse::<i64>().ok())
        .min()?;
    Some(now_ms.saturating_sub(oldest).max(0) as u64)
}
