//! The handler's transform and write: one batch validated, masked and
//! written, the records streamed into the sink as they are transformed,
//! and the batch written again when the erasure list or the key version
//! changed under it.

use std::time::Instant;

use tracing::{trace, warn};

use crate::contract::{LoginRow, Rejection};
use crate::error::{HandlerError, SinkError};
use crate::ingest::dlq::Rejected;
use crate::ingest::event::{SqsBatch, SqsRecord};
use crate::ingest::record;
use crate::ingest::sink::{InsertReport, PgSink};
use crate::privacy::dead_letter::rebuilt::{Rebuilt, Verdict};
use crate::privacy::keys::BatchKeys;
use crate::privacy::vault::{VaultBatch, VaultWrite};

use super::BatchHandler;

/// One batch at work: how it is handled (its queue's order, its deadline)
/// and what validation made of it.
#[derive(Default)]
pub(super) struct Transformed<'b> {
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

impl<'b> Transformed<'b> {
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

impl BatchHandler {
    /// Validates and masks every record, streaming the valid rows into the
    /// sink (a COPY for large batches) as they come, then commits them.
    /// Each record is read from the payload as the loop reaches it, so the
    /// first rows are in the COPY while the later ones are still unread. The
    /// outer error: the batch cannot be handled (a record without
    /// `messageId`, not an SQS message, or a payload that breaks off),
    /// found before anything commits.
    pub(super) async fn transform_and_write<'b>(
        &self,
        sink: &mut PgSink,
        batch: &'b SqsBatch,
        out: &mut Transformed<'b>,
    ) -> Result<Result<InsertReport, SinkError>, HandlerError> {
        let (fifo, deadline) = (out.fifo, out.deadline);
        // The keys and the erasure list, in memory (their versions are
        // checked by the write). When the database fails before the write
        // begins, every record is still validated with the newest key held,
        // so the rejects reach the DLQ all the same; nothing is written.
        let (keys, mut early) = match sink.batch_keys(&self.keys, deadline, true).await {
            Ok(keys) => (keys, None),
            Err(e) => (self.keys.unchecked(), Some(e)),
        };
        out.masker = Some(keys.masker.clone());
        let mut writer = None;
        if early.is_none() {
            match sink.start_batch(batch.size_hint(), deadline).await {
                Ok(w) => writer = Some(w),
                Err(e) => early = Some(e),
            }
        }
        let mut unhandled = None;
        for pos in (0..).take_while(|&pos| batch.has(pos)) {
            let id = match message_id(batch, pos) {
                Ok(id) => id,
                Err(e) => {
                    unhandled = Some(e);
                    break;
                }
            };
            out.ids.push(id);
            let message = batch.record(pos);
            let transformed = if message.claims_rebuilt() {
                match self.rebuilt_row(message, &keys.masker).await {
                    Some(row) => row,
                    None => {
                        out.held.push(pos);
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
            match transformed {
                Ok(row) if keys.is_erased(&row.user_id) => {
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
        if let Some(e) = unhandled.or_else(|| rest_of_ids(batch, out).err()) {
            if let Some(writer) = writer {
                writer.abandon().await;
            }
            return Err(e);
        }
        self.send_fifo_rejects(batch, out).await;
        if let Some(e) = early {
            return Ok(Err(e));
        }
        let writer = writer.expect("a writer whenever nothing failed before it");
        let vault = self.vault.as_ref().map(|key| VaultWrite {
            key,
            batch: &out.vault,
        });
        Ok(
            match writer.finish(&out.rows, keys.versions, fifo, vault).await {
                Err(SinkError::BatchOutdated) => self.write_again(sink, out).await,
                written => written,
            },
        )
    }

    /// The row of a rebuilt login whose seal opens; a reject when it does
    /// not; `None` (the record waits and comes back) when it could not be
    /// checked: no dead-letter key here, or KMS did not answer or refused.
    async fn rebuilt_row<'b>(
        &self,
        message: &'b SqsRecord,
        masker: &crate::privacy::masking::Masker,
    ) -> Option<Result<LoginRow<'b>, Rejection>> {
        let Some((claim, seal)) = message.rebuilt() else {
            return Some(Err(Rejection::RebuiltLoginUnverified));
        };
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
    async fn send_fifo_rejects<'b>(&self, batch: &'b SqsBatch, out: &mut Transformed<'b>) {
        let (true, Some(dlq)) = (out.fifo, &self.dlq) else {
            return;
        };
        let masker = out.masker.as_ref().expect("set before any record");
        out.sent = dlq
            .send(&out.rejected_records(batch), masker, true, out.deadline)
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

    /// The erasure list or the key version changed while the batch was being
    /// written (`login-etl forget` erased someone, `login-etl rotate-key`
    /// began): asks for the keys again, re-keys the rows' tokens to the new
    /// version, drops the rows of erased users (handled: not stored, not
    /// failed, not dead-lettered) and writes the rest. A few rounds, as
    /// another change may land in between.
    async fn write_again(
        &self,
        sink: &mut PgSink,
        out: &mut Transformed<'_>,
    ) -> Result<InsertReport, SinkError> {
        for _ in 0..3 {
            sink.forget_erased();
            let keys = sink.batch_keys(&self.keys, out.deadline, true).await?;
            self.drop_erased(&keys, out)?;
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            match sink
                .insert_until(&out.rows, keys.versions, out.fifo, vault, out.deadline)
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

    /// Re-keys the rows to `keys`' version and moves the rows of users
    /// erased since to `out.erased`; the vault entries follow the rows.
    fn drop_erased(&self, keys: &BatchKeys, out: &mut Transformed<'_>) -> Result<(), SinkError> {
        for row in out.rows.iter_mut() {
            keys.rekey(row)?;
        }
        let keep: Vec<bool> = out
            .rows
            .iter()
            .map(|r| !keys.is_erased(&r.user_id))
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
        Ok(())
    }
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

/// The ids of the records a FIFO reject held back (the loop stopped there).
fn rest_of_ids<'b>(batch: &'b SqsBatch, out: &mut Transformed<'b>) -> Result<(), HandlerError> {
    for index in (out.ids.len()..).take_while(|&index| batch.has(index)) {
        out.ids.push(message_id(batch, index)?);
    }
    Ok(())
}

fn log_rejection(message_id: &str, reason: &Rejection) {
    warn!(message_id, reason = %reason, code = %reason.code(), "record rejected");
}
