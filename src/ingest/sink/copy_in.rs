//! The COPY fast path: one binary `COPY ... FROM STDIN` inside an explicit
//! transaction, fed row by row while the batch is transformed.
//!
//! The rows are encoded as tokio-postgres's `BinaryCopyInWriter` encodes
//! them (each value by its `ToSql`), but sent in chunks of [`CHUNK`] bytes
//! instead of its fixed 4 kB: the server drains a chunk faster than the
//! client transforms the next, then sleeps until it comes, and each wake-up
//! costs (docs/performance.md, "Through the Runtime API").
//!
//! Two round trips: `BEGIN; SET LOCAL ...` goes out with the COPY's Parse,
//! Bind and Execute (the unnamed statement: `copy_in_unnamed`, the one
//! function vendor/tokio-postgres adds, since tokio-postgres prepares a COPY
//! first), answered by CopyInResponse; then the rows, the COPY's end and the
//! COMMIT. Nothing named is left on the server connection. The rows count
//! as written only when the server has answered the COMMIT.

use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_postgres::{Client, CopyInSink};

use super::classify::{WriteFailure, classify};
use super::tx::VaultRows;
use super::tx::{XidFloor, no_answer, refuse_erased, vault_and_commit};
use crate::contract::LoginRow;
use crate::privacy::keys::Versions;

use super::columns::{COPY_SQL, encode_row};

/// The binary COPY format's header: signature, flags, no extension.
pub const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Encoded rows are sent when this many bytes are waiting.
pub const CHUNK: usize = 64 * 1024;

/// A binary COPY in progress inside its transaction. After a failure,
/// later rows are ignored; [`CopyIn::commit`] reports it.
pub struct CopyIn {
    sink: Pin<Box<CopyInSink<Bytes>>>,
    /// Rows encoded and not yet sent.
    buf: BytesMut,
    bound: Duration,
    failure: Option<WriteFailure>,
}

/// How a COPY ended when it did not commit.
pub(crate) struct CopyFailed {
    pub failure: WriteFailure,
    /// The COMMIT was sent and its answer never came: the rows may be in.
    pub outcome_unknown: bool,
    /// The server answered the COMMIT sent with the failed statement: the
    /// transaction is over, and a ROLLBACK would be one outside any.
    pub ended: bool,
}

impl CopyIn {
    /// Opens the transaction and starts the COPY.
    pub(crate) async fn begin(
        client: &Client,
        begin: &str,
        client_bound: Duration,
    ) -> Result<Self, WriteFailure> {
        let started = timeout(client_bound, async {
            let (begun, copy) = tokio::join!(
                client.batch_execute(begin),
                client.copy_in_unnamed(COPY_SQL.as_str())
            );
            begun.and(copy)
        })
        .await;
        match started {
            Ok(Ok(sink)) => {
                let mut buf = BytesMut::with_capacity(CHUNK + 4096);
                buf.put_slice(COPY_HEADER);
                Ok(Self {
                    sink: Box::pin(sink),
                    buf,
                    bound: client_bound,
                    failure: None,
                })
            }
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(no_answer(client_bound)),
        }
    }

    /// Queues one row (sent when [`CHUNK`] bytes are waiting).
    pub async fn write(&mut self, r: &LoginRow<'_>) {
        if self.failure.is_some() {
            return;
        }
        if let Err(ty) = encode_row(&mut self.buf, r) {
            // The encoder's error is not quoted: it could carry the value.
            let what = format!("a {ty} value of the row cannot be encoded");
            self.failure = Some(WriteFailure::Row(what));
            return;
        }
        if self.buf.len() >= CHUNK {
            self.failure = self.send().await.err();
        }
    }

    /// Sends the rows encoded so far.
    async fn send(&mut self) -> Result<(), WriteFailure> {
        let chunk = self.buf.split().freeze();
        match timeout(self.bound, self.sink.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(no_answer(self.bound)),
        }
    }

    /// Ends the COPY and commits (the erasure check, then the frame's shared
    /// end: vault entries + COMMIT): the rows written and the next xid
    /// floor, once the server has confirmed the COMMIT.
    pub(crate) async fn commit(
        mut self,
        client: &Client,
        vault: Option<&VaultRows<'_>>,
        erased_version: Versions,
    ) -> Result<(u64, Option<XidFloor>), CopyFailed> {
        let before_commit = |failure| CopyFailed {
            failure,
            outcome_unknown: false,
            ended: false,
        };
        if let Some(failure) = self.failure.take() {
            return Err(before_commit(failure));
        }
        self.buf.put_i16(-1);
        if let Err(failure) = self.send().await {
            return Err(before_commit(failure));
        }
        // The COPY's end, the erasure check, the vault entries and the COMMIT,
        // sent together: one round trip. tokio-postgres sends a request queued
        // behind a COPY only once the COPY's stream has ended (CopyDone), so
        // they reach the server in this order; after a failed COPY the server
        // skips the check and the vault statement and answers the COMMIT
        // with ROLLBACK.
        let end = async {
            tokio::join!(
                self.sink.as_mut().finish(),
                refuse_erased(client, erased_version),
                vault_and_commit(client, vault)
            )
        };
        let (finished, allowed, ended) = match timeout(self.bound, end).await {
            Ok(answers) => answers,
            Err(_) => {
                return Err(CopyFailed {
                    failure: no_answer(self.bound),
                    outcome_unknown: true,
                    ended: false,
                });
            }
        };
        let rows = match finished {
            Ok(rows) => rows,
            Err(e) => {
                let failure = classify(&e);
                // Answered in full on a live connection: the transaction is
                // over (rolled back). A lost connection may have taken the
                // COMMIT with it, or not.
                let outcome_unknown =
                    matches!(failure, WriteFailure::Transient(_)) && client.is_closed();
                return Err(CopyFailed {
                    failure,
                    outcome_unknown,
                    ended: !client.is_closed(),
                });
            }
        };
        match allowed.and(ended) {
            Ok(floor) => Ok((rows, floor)),
            Err(e) => {
                let failure = classify(&e);
                // A refusal at COMMIT ended the transaction; a broken
                // connection leaves it unknown whether the COMMIT landed.
                let outcome_unknown = matches!(failure, WriteFailure::Transient(_));
                Err(CopyFailed {
                    failure,
                    outcome_unknown,
                    ended: !outcome_unknown,
                })
            }
        }
    }
}
