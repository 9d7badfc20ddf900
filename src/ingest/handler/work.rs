//! One batch at work: what validation made of its records (rows, rejects,
//! erased users' records, held rebuilt logins), where each came from in the
//! batch, and how the batch is handled (its queue's order, its deadline).

use std::time::Instant;

use tracing::warn;

use crate::contract::{LoginRow, Rejection};
use crate::error::HandlerError;
use crate::ingest::dlq::Rejected;
use crate::ingest::event::SqsBatch;
use crate::privacy::vault::VaultBatch;

/// One batch at work: how it is handled (its queue's order, its deadline)
/// and what validation made of it.
#[derive(Default)]
pub(super) struct BatchWork<'b> {
    /// A FIFO queue's batch: later records wait for a failed one.
    pub(super) fifo: bool,
    /// When the batch must be answered.
    pub(super) deadline: Option<Instant>,
    /// Every record's `messageId`, in batch order (all of them once the
    /// batch could be handled).
    pub(super) ids: Vec<&'b str>,
    /// Valid rows, in batch order.
    pub(super) rows: Vec<LoginRow<'b>>,
    /// Position in the batch of each row.
    pub(super) row_positions: Vec<usize>,
    /// Positions and codes of rejected records, in batch order.
    pub(super) rejected: Vec<(usize, String)>,
    /// Positions of rejected records now in the DLQ, ascending.
    pub(super) sent: Vec<usize>,
    /// The rows' vault entries (empty without a vault).
    pub(super) vault: VaultBatch,
    /// Positions of records of erased users (handled, not stored), ascending.
    pub(super) erased: Vec<usize>,
    /// Positions of rebuilt logins whose seal could not be checked (KMS did
    /// not answer, or refused the function): failed, to come back.
    pub(super) held: Vec<usize>,
    /// The masker the batch was validated with: what its DLQ copies are
    /// masked and signed with.
    pub(super) masker: Option<crate::privacy::masking::Masker>,
}

impl<'b> BatchWork<'b> {
    pub(super) fn new(fifo: bool, deadline: Option<Instant>) -> Self {
        Self {
            fifo,
            deadline,
            ..Self::default()
        }
    }

    pub(super) fn rejected_records<'a>(&'a self, batch: &'b SqsBatch) -> Vec<Rejected<'a>>
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

/// The record's `messageId`; without one (or when the record is not an
/// SQS message at all) it cannot be reported on its own, so the invocation
/// fails.
pub(super) fn message_id(batch: &SqsBatch, index: usize) -> Result<&str, HandlerError> {
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
pub(super) fn rest_of_ids<'b>(
    batch: &'b SqsBatch,
    out: &mut BatchWork<'b>,
) -> Result<(), HandlerError> {
    for index in (out.ids.len()..).take_while(|&index| batch.has(index)) {
        out.ids.push(message_id(batch, index)?);
    }
    Ok(())
}

pub(super) fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
}
