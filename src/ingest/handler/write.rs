//! Writing one batch: a free sink, the batch's keys, its records read
//! into their states ([`read`](super::read)) while the rows stream into the
//! sink, FIFO rejects to the DLQ before the write, then the write itself
//! (again, re-keyed and filtered, when the keys moved under it).

use std::time::Instant;

use tracing::warn;

use super::read::{Newer, Read, rest_of_ids};
use super::records::BatchWork;
use super::BatchHandler;
use crate::error::{DbError, HandlerError};
use crate::ingest::event::SqsBatch;
use crate::ingest::sink::{InsertReport, PgSink};
use crate::ingest::trace::BatchTrace;
use crate::privacy::keys::BatchKeys;
use crate::privacy::vault::VaultWrite;

impl BatchHandler {
    /// Transforms and writes the batch on a free sink. A failed write is an
    /// error when there is no backoff; with one, it is the failure's class
    /// (the caller reports and backs off every record not otherwise finished).
    pub(super) async fn write<'b>(
        &self,
        batch: &'b SqsBatch,
        started: Instant,
        valid: &mut BatchWork<'b>,
        trace: &BatchTrace,
    ) -> Result<(InsertReport, Option<&'static str>), HandlerError> {
        let mut sink = self.sink().await;
        let written = self.transform_and_write(&mut sink, batch, valid, trace).await;
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
        let tally = valid.tally();
        warn!(
            received = batch.len(),
            valid = tally.rows,
            rejected = tally.rejected.values().sum::<usize>(),
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
        out: &mut BatchWork<'b>,
        trace: &BatchTrace,
    ) -> Result<Result<InsertReport, DbError>, HandlerError> {
        let (fifo, deadline) = (out.fifo, out.deadline);
        // The keys and the erasure list, in memory (their versions are
        // checked by the write). When the database fails before the write
        // begins, every record is still validated, at the key version the
        // database last stated, so the rejects reach the DLQ all the same;
        // nothing is written.
        let (mut keys, mut early) = self.batch_keys(sink, deadline).await;
        // From the COPY's start (its rows stream while records are read).
        let write_span = trace.write();
        // A record signed at a key version newer than the batch's: the
        // database moved (rotate-key) since this environment last read it.
        // No claim is judged by a version the database has left: the keys
        // are read again, and the batch from its start, once.
        let mut moved = false;
        let (writer, unhandled) = loop {
            out.masker = Some(keys.masker.clone());
            let mut writer = None;
            if early.is_none() {
                match sink.start_batch(batch.size_hint(), deadline).await {
                    Ok(w) => writer = Some(w),
                    Err(e) => early = Some(e),
                }
            }
            let newer = match (early.is_some(), moved) {
                (true, _) => Newer::Hold,
                (false, false) => Newer::ReadAgain,
                (false, true) => Newer::Judge,
            };
            match self.read_records(batch, out, &keys, writer.as_mut(), newer).await {
                Read::KeysMoved => {
                    if let Some(writer) = writer {
                        writer.abandon().await;
                    }
                    sink.forget_key_state();
                    *out = BatchWork::new(fifo, deadline);
                    (keys, early) = self.batch_keys(sink, deadline).await;
                    moved = true;
                }
                Read::Done(unhandled) => break (writer, unhandled),
            }
        };
        if let Some(e) = unhandled.or_else(|| rest_of_ids(batch, out).err()) {
            if let Some(writer) = writer {
                writer.abandon().await;
            }
            return Err(e);
        }
        self.send_fifo_rejects(batch, out, trace).await;
        if let Some(e) = early {
            write_span.end(&[], Some(HandlerError::class_of(&e)));
            return Ok(Err(e));
        }
        let writer = writer.expect("a writer whenever nothing failed before it");
        let first = {
            let rows = out.rows();
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            writer.finish(&rows, keys.versions, fifo, vault).await
        };
        let written = match first {
            Err(DbError::BatchOutdated) => self.write_again(sink, out).await,
            written => written,
        };
        match &written {
            Ok(report) => write_span.end_named(
                Some(if report.copied { "COPY" } else { "INSERT" }),
                &[
                    ("db.operation.batch.size", out.row_count() as i64),
                    ("login_etl.inserted", report.inserted as i64),
                    ("login_etl.statements", i64::from(report.statements)),
                ],
                None,
            ),
            Err(e) => write_span.end(&[], Some(HandlerError::class_of(e))),
        }
        Ok(written)
    }

    /// The batch's keys from `sink`; when the database cannot say them,
    /// [`Keys::unchecked`](crate::privacy::keys::Keys::unchecked), with the error.
    pub(super) async fn batch_keys(
        &self,
        sink: &mut PgSink,
        deadline: Option<Instant>,
    ) -> (BatchKeys, Option<DbError>) {
        match sink.batch_keys(&self.keys, deadline, true).await {
            Ok(keys) => (keys, None),
            Err(e) => (self.keys.unchecked(), Some(e)),
        }
    }

    /// The erasure list or the key version changed while the batch was being
    /// written (`login-etl forget` erased someone, `login-etl rotate-key`
    /// began): asks for the keys again, re-keys the rows' tokens to the new
    /// version, drops the rows of erased users (handled: not stored, not
    /// failed, not dead-lettered) and writes the rest. A few rounds, as
    /// another change may land in between.
    pub(super) async fn write_again(
        &self,
        sink: &mut PgSink,
        out: &mut BatchWork<'_>,
    ) -> Result<InsertReport, DbError> {
        for _ in 0..3 {
            sink.forget_erased();
            let keys = sink.batch_keys(&self.keys, out.deadline, true).await?;
            out.rekey(&keys, self.vault.as_ref())?;
            let rows = out.rows();
            let vault = self.vault.as_ref().map(|key| VaultWrite {
                key,
                batch: &out.vault,
            });
            match sink
                .insert_until(&rows, keys.versions, out.fifo, vault, out.deadline)
                .await
            {
                Err(DbError::BatchOutdated) => continue,
                written => return written,
            }
        }
        Err(DbError::Transient {
            op: "writing a batch while users were being erased",
            cause: "the erasure list kept changing".into(),
        })
    }

    /// A free sink, or (all busy) the first one's turn.
    pub(super) async fn sink(&self) -> tokio::sync::MutexGuard<'_, PgSink> {
        for sink in &self.sinks {
            if let Ok(free) = sink.try_lock() {
                return free;
            }
        }
        self.sinks[0].lock().await
    }
}
