//! What is reported back for a batch's records that did not make it: the
//! positions listed in `batchItemFailures`, refused rows sent to the DLQ
//! after their last receive, and the visibility backoff of the rest.

use std::time::Instant;

use tracing::warn;

use super::work::BatchWork;
use crate::ingest::backoff::{Hold, Schedule, Visibility, jitter};
use crate::ingest::dlq::{DeadLetterQueue, Rejected};
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::sink::InsertReport;
use crate::privacy::masking::Masker;

/// The positions to report in `batchItemFailures`, ascending: rejects not
/// in the DLQ, refused rows not in the DLQ, and (`write_failed`) every record
/// not otherwise finished, whether or not it got as far as validation. On
/// FIFO, everything from the first of them on (order must hold), except
/// records already finished (in the DLQ, as after a redrive, or erased).
pub(super) fn failed_positions(
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

/// The record's `ApproximateReceiveCount` (1 when absent or unreadable).
pub(super) fn receive_count(record: &SqsRecord) -> u32 {
    record
        .attributes
        .as_ref()
        .and_then(|a| a.approximate_receive_count.as_deref())
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// Rows the database kept refusing, on their `max_receives`-th receive
/// (0: never): to the DLQ with their SQLSTATE (`refused.<SQLSTATE>`).
/// Returns the positions SQS accepted, ascending.
pub(super) async fn send_refused(
    (dlq, max_receives, masker): (&DeadLetterQueue, u32, &Masker),
    batch: &SqsBatch,
    report: &InsertReport,
    valid: &BatchWork<'_>,
    fifo: bool,
    deadline: Option<Instant>,
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
    dlq.send(&due, masker, fifo, deadline).await
}

/// Extends the visibility of the failed records by the schedule: each by
/// its own receive count, or (FIFO) the whole held tail by the highest,
/// so it comes back together and in order. Returns (backed off, not
/// confirmed).
pub(super) async fn back_off(
    (schedule, visibility): (Schedule, &Visibility),
    batch: &SqsBatch,
    positions: &[usize],
    fifo: bool,
    deadline: Option<Instant>,
) -> (usize, usize) {
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
    (held.len(), missed)
}
