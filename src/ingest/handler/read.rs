//! Reading one batch's records: each validated and masked with the
//! batch's keys, in batch order, into its state (a row, a reject, an erased
//! user's record, a held one), each row handed to the writer as it comes.


use tracing::{trace, warn};

use super::records::{BatchWork, RecordState};
use super::BatchHandler;
use crate::contract::{LoginRow, Rejection};
use crate::error::HandlerError;
use crate::ingest::dlq::CopyFacts;
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::record;
use crate::ingest::sink::BatchWriter;
use crate::privacy::dead_letter::rebuilt::{Rebuilt, SealVerdict};
use crate::privacy::keys::BatchKeys;
use crate::privacy::masking::Masker;

impl BatchHandler {
    /// Validates and masks each record with `keys`, in batch order, each
    /// valid row into `writer` (when there is one) as it comes. A record
    /// signed at a key version newer than `keys`'
    /// ([`record::signed_after`]) is treated as `newer` says.
    pub(super) async fn read_records<'b>(
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
                out.push(id, RecordState::Held);
                if fifo {
                    break;
                }
                continue;
            }
            let transformed = if message.claims_rebuilt() {
                match self.rebuilt_row(message, &keys.masker).await {
                    Some(row) => row,
                    None => {
                        out.push(id, RecordState::Held);
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
                    out.push(id, RecordState::Erased);
                }
                Ok((row, true)) => {
                    trace!(message_id = id, "record valid");
                    if let Some(key) = &self.vault {
                        out.vault.add(key, &row);
                    }
                    if let Some(writer) = writer.as_mut() {
                        writer.push(&row).await;
                    }
                    out.push(id, RecordState::Row(row));
                }
                // Erasure first: an erased user's message is skipped, never
                // dead-lettered (its copy would keep what was erased).
                Err(_) if record::user_id_of(message).is_some_and(|u| keys.is_erased(&u)) => {
                    trace!(
                        message_id = id,
                        "rejected record of an erased user: skipped"
                    );
                    out.push(id, RecordState::Erased);
                }
                Err(reason) => {
                    log_rejection(id, &reason);
                    let code = reason.code().into_owned();
                    out.push(id, RecordState::Rejected { code, sent: false });
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
    pub(super) async fn rebuilt_row<'b>(
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
            Ok(SealVerdict::Sealed) => Some(record::transform_rebuilt(
                claim,
                message,
                masker,
                &self.contract,
                chrono::Utc::now(),
            )),
            Ok(SealVerdict::Broken) => Some(Err(Rejection::RebuiltLoginUnverified)),
            Err(e) => {
                warn!(message_id = claim.message_id, error = %e, "the seal of a rebuilt login could not be checked; it comes back");
                None
            }
        }
    }
}

/// What becomes of a record signed at a key version newer than the
/// batch's keys ([`BatchHandler::read_records`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Newer {
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
pub(super) enum Read {
    /// Every record read, or the batch cannot be handled (the error).
    Done(Option<HandlerError>),
    /// A record is signed at a key version newer than the batch's keys.
    KeysMoved,
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

/// The records a FIFO batch did not read (the loop stopped at one that
/// could not be finished): each unread, with its id.
pub(super) fn rest_of_ids<'b>(batch: &'b SqsBatch, out: &mut BatchWork<'b>) -> Result<(), HandlerError> {
    for index in (out.records.len()..).take_while(|&index| batch.has(index)) {
        out.push(message_id(batch, index)?, RecordState::Unread);
    }
    Ok(())
}

pub(super) fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
}
