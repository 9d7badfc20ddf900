//! The COPY fast path: one binary `COPY ... FROM STDIN` inside an explicit
//! transaction, fed row by row while the batch is transformed.
//!
//! `BEGIN; SET LOCAL ...` and the COPY's prepare go out together; the
//! prepared statement is named (tokio-postgres prepares COPY that way) but is
//! closed as soon as the COPY has started, before the COMMIT, so it never
//! outlives its transaction. The rows count as written only when the server
//! has answered the COMMIT.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::classify::{Failure, classify};
use super::tx::{Versions, XidFloor, begin_sql, no_answer, refuse_erased, vault_and_commit};
use super::vault::VaultRows;
use crate::ingest::record::LoginRow;

/// The fast path for large batches; see the module documentation.
pub const COPY_SQL: &str = "COPY user_logins \
    (message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, app_version_text, create_date, sent_at, key_version) \
    FROM STDIN (FORMAT binary)";

/// Column types of [`COPY_SQL`], in order.
pub const COPY_TYPES: [Type; 11] = [
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::VARCHAR,
    Type::DATE,
    Type::TIMESTAMPTZ,
    Type::INT2,
];

/// A binary COPY in progress inside its transaction. After a failure,
/// later rows are ignored; [`CopyIn::commit`] reports it.
pub struct CopyIn {
    writer: Pin<Box<BinaryCopyInWriter>>,
    bound: Duration,
    failure: Option<Failure>,
}

/// How a COPY ended when it did not commit.
pub(crate) struct CopyFailed {
    pub failure: Failure,
    /// The COMMIT was sent and its answer never came: the rows may be in.
    pub outcome_unknown: bool,
}

impl CopyIn {
    /// Opens the transaction and starts the COPY.
    pub(crate) async fn begin(
        client: &Client,
        server_bound: Duration,
        client_bound: Duration,
    ) -> Result<Self, Failure> {
        let begin = begin_sql(server_bound);
        let started = timeout(client_bound, async {
            let (begun, copy) =
                tokio::join!(client.batch_execute(&begin), client.copy_in(COPY_SQL));
            begun.and(copy)
        })
        .await;
        match started {
            Ok(Ok(sink)) => Ok(Self {
                writer: Box::pin(BinaryCopyInWriter::new(sink, &COPY_TYPES)),
                bound: client_bound,
                failure: None,
            }),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(no_answer(client_bound)),
        }
    }

    /// Queues one row (sent when the buffer fills).
    pub async fn write(&mut self, r: &LoginRow<'_>) {
        if self.failure.is_some() {
            return;
        }
        let (ip, device, locale) = (
            r.masked_ip.as_str(),
            r.masked_device_id.as_str(),
            r.locale.as_deref(),
        );
        let key_version = r.key_version as i16;
        let row: [&(dyn ToSql + Sync); 11] = [
            &r.message_id,
            &&*r.user_id,
            &&*r.device_type,
            &ip,
            &device,
            &locale,
            &r.app_version,
            &&*r.app_version_text,
            &r.create_date,
            &r.sent_at,
            &key_version,
        ];
        self.failure = match timeout(self.bound, self.writer.as_mut().write(&row)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(classify(&e)),
            Err(_) => Some(no_answer(self.bound)),
        };
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
        };
        if let Some(failure) = self.failure.take() {
            return Err(before_commit(failure));
        }
        let rows = match timeout(self.bound, self.writer.as_mut().finish()).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(before_commit(classify(&e))),
            Err(_) => return Err(before_commit(no_answer(self.bound))),
        };
        // The erasure check, then the vault entries and the COMMIT, sent together.
        let end = async {
            let (allowed, ended) = tokio::join!(
                refuse_erased(client, erased_version),
                vault_and_commit(client, vault)
            );
            allowed.and(ended)
        };
        match timeout(self.bound, end).await {
            Ok(Ok(floor)) => Ok((rows, floor)),
            Ok(Err(e)) => {
                let failure = classify(&e);
                // A refusal at COMMIT ended the transaction; a broken
                // connection leaves it unknown whether the COMMIT landed.
                let outcome_unknown = matches!(failure, Failure::Transient(_));
                Err(CopyFailed {
                    failure,
                    outcome_unknown,
                })
            }
            Err(_) => Err(CopyFailed {
                failure: no_answer(self.bound),
                outcome_unknown: true,
            }),
        }
    }
}
