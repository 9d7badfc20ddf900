//! Rejected records straight to the dead-letter queue, with their reason.
//!
//! A validation failure is deterministic: redelivering the message only
//! delays it (5 receives at the default visibility is about 17 minutes, and
//! on a FIFO queue its whole message group waits). Where the function knows
//! its DLQ (`DLQ_URL`), it copies each rejected message there itself, with
//! message attributes saying why, and then counts the record as handled so
//! SQS deletes it from the source queue: the same end state as SQS's own
//! redrive after `maxReceiveCount`, minus the wait.
//!
//! A copy carries no raw ip or device id: its body is masked ([`copy`]),
//! and the original is sealed in two attributes that only the DLQ
//! operator's role can open ([`crate::privacy::dead_letter`], with
//! `VAULT_KMS_KEY_ID`; without it the original is not kept). The original's
//! id and `SentTimestamp` ride along signed by the masking key, so `login-etl
//! dlq-redrive` sends the original back to land on its own row, and nobody
//! else can claim a row's key ([`crate::ingest::record::row_key`]).
//!
//! Nothing is lost on the way: an entry SQS refuses, a throttled or denied
//! call, or a copy too large for SQS leaves the record in
//! `batchItemFailures`, and SQS redrives it as before.

pub mod copy;

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use chrono::{SecondsFormat, Utc};
use tokio::task::JoinSet;
use tracing::warn;

use crate::ingest::event::SqsRecord;
use crate::ingest::record::row_key;
use crate::ingest::sqs_batch;
use crate::privacy::dead_letter::{SEALED_BODY, SEALED_KEY, Sealer};
use crate::privacy::masking::Masker;

/// Bound on all sends of one invocation.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest copy sent (body and attributes): SQS takes 256 KiB on
/// every queue (1 MiB on newer ones), and attribute names count too.
const MAX_COPY_BYTES: usize = 250 * 1024;

/// One rejected record to copy. Its `Debug` shows the record without its
/// body (see `SqsRecord`).
#[derive(Debug, Clone, Copy)]
pub struct Rejected<'a> {
    /// Its position in the batch.
    pub position: usize,
    /// The SQS message.
    pub message: &'a SqsRecord,
    /// Its message id.
    pub message_id: &'a str,
    /// The rejection code (`Rejection::code`).
    pub code: &'a str,
}

/// The source queue's dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    client: Client,
    url: String,
    sealer: Option<std::sync::Arc<Sealer>>,
}

impl DeadLetterQueue {
    /// The queue at `url`, through `client`; copies keep no original body
    /// until [`with_sealer`](Self::with_sealer).
    pub fn new(client: Client, url: String) -> Self {
        Self {
            client,
            url,
            sealer: None,
        }
    }

    /// Seals each copy's original body with `sealer`.
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = Some(std::sync::Arc::new(sealer));
        self
    }

    /// Whether copies keep their original body, sealed.
    pub fn seals(&self) -> bool {
        self.sealer.is_some()
    }

    /// Copies `rejected` to the queue, in as few `SendMessageBatch` calls
    /// as SQS allows (10 entries each), sent at once: bodies masked and
    /// redrive keys signed with `masker`. Returns the positions SQS
    /// accepted; every other record stays a batch item failure.
    /// The sends end 500 ms before `deadline` (the invocation's) at the
    /// latest, so the response is still returned in time.
    pub async fn send(
        &self,
        rejected: &[Rejected<'_>],
        masker: &Masker,
        fifo: bool,
        deadline: Option<std::time::Instant>,
    ) -> Vec<usize> {
        let limit = crate::ingest::backoff::before_deadline(SEND_TIMEOUT, deadline);
        let rejected_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let entries: Vec<(usize, SendMessageBatchRequestEntry, usize)> = rejected
            .iter()
            .filter_map(|r| {
                let (entry, size) = self.entry(r, masker, fifo, &rejected_at)?;
                Some((r.position, entry, size))
            })
            .collect();
        let cut = sqs_batch::batches(entries.iter().map(|(_, _, size)| *size));
        let mut calls = JoinSet::new();
        let mut entries = entries.into_iter();
        for call in cut {
            let chunk = entries
                .by_ref()
                .take(call.len())
                .enumerate()
                .map(|(i, (position, mut entry, _))| {
                    entry.id = sqs_batch::entry_id(i);
                    (position, entry)
                })
                .collect();
            calls.spawn(self.clone().send_chunk(chunk));
        }
        let mut sent = Vec::new();
        let all = async {
            while let Some(done) = calls.join_next().await {
                if let Ok(positions) = done {
                    sent.extend(positions);
                }
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!(
                "sending rejected records to the dead-letter queue took over {} ms; the unconfirmed ones stay batch item failures",
                limit.as_millis()
            );
        }
        sent.sort_unstable();
        sent
    }

    async fn send_chunk(self, chunk: Vec<(usize, SendMessageBatchRequestEntry)>) -> Vec<usize> {
        let (positions, entries): (Vec<usize>, Vec<_>) = chunk.into_iter().unzip();
        let result = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => sqs_batch::confirmed(
                &out,
                positions.len(),
                "the dead-letter queue refused a rejected record; it stays a batch item failure",
            )
            .into_iter()
            .map(|i| positions[i])
            .collect(),
            Err(e) => {
                warn!(
                    records = positions.len(),
                    code = e.code().unwrap_or("none"),
                    error = %DisplayErrorContext(&e),
                    "sending rejected records to the dead-letter queue failed (check sqs:SendMessage on it); they stay batch item failures"
                );
                Vec::new()
            }
        }
    }
}

/// Message attributes of a copy, by name.
type Attributes = Vec<(&'static str, String)>;

fn string(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .ok()
}

impl DeadLetterQueue {
    /// The copy of one rejected record (its entry id set by the caller),
    /// and its size; `None` (with a warning) when SQS could not take it.
    fn entry(
        &self,
        r: &Rejected<'_>,
        masker: &Masker,
        fifo: bool,
        rejected_at: &str,
    ) -> Option<(SendMessageBatchRequestEntry, usize)> {
        let body = r.message.body.as_deref().unwrap_or_default();
        let attrs = r.message.attributes.as_ref();
        let receive_count = attrs
            .and_then(|a| a.approximate_receive_count.as_deref())
            .unwrap_or("1");
        let masked = copy::masked_body(body, masker);
        let (source, sealed) = self.original_of(r, masker, &masked)?;
        let mut builder = SendMessageBatchRequestEntry::builder()
            .id("0")
            .message_body(&masked)
            .message_attributes("rejection_code", string(r.code)?)
            .message_attributes(
                "source_queue",
                string(r.message.event_source_arn.as_deref().unwrap_or("unknown"))?,
            )
            .message_attributes(
                "receive_count",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(receive_count)
                    .build()
                    .ok()?,
            )
            .message_attributes("rejected_at", string(rejected_at)?)
            // The version of the masked body's tokens: a login rebuilt from
            // this copy is re-keyed from it (`dlq-redrive --rebuild`).
            .message_attributes(
                "token_key_version",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(masker.version().to_string())
                    .build()
                    .ok()?,
            );
        let mut size = masked.len() + 1024;
        for (name, value) in source.iter().chain(&sealed) {
            size += name.len() + value.len();
            builder = builder.message_attributes(*name, string(value)?);
        }
        if fifo {
            builder = builder
                .set_message_group_id(attrs.and_then(|a| a.message_group_id.clone()))
                .message_deduplication_id(r.message_id);
        }
        Some((builder.build().ok()?, size))
    }

    /// What a copy says of its original: its signed row key (`source_*`)
    /// and, with a sealer, its body sealed (`sealed_*`). A message that is
    /// itself a copy (SQS moved it back, or it was sent on as it was)
    /// keeps its own: the original it names, never its masked body sealed
    /// over. `None` (with a warning): too large for SQS.
    fn original_of(
        &self,
        r: &Rejected<'_>,
        masker: &Masker,
        masked: &str,
    ) -> Option<(Attributes, Attributes)> {
        if let (Some(c), Some((body, key))) =
            (r.message.claimed_source(), r.message.sealed_original())
        {
            let source = vec![
                ("source_message_id", c.message_id.to_owned()),
                ("source_sent_timestamp", c.sent_timestamp.to_owned()),
                ("source_signature", c.signature.to_owned()),
            ];
            let sealed = vec![(SEALED_BODY, body.to_owned()), (SEALED_KEY, key.to_owned())];
            return Some((source, sealed));
        }
        let body = r.message.body.as_deref().unwrap_or_default();
        // The original's id and SentTimestamp (a signed copy's, kept
        // through any number of redrives): a redriven original is keyed and
        // dated by them, so it can never add a second row (see
        // `record::row_key`).
        let key = row_key(r.message_id, r.message, masker);
        let mut source = vec![("source_message_id", key.message_id.to_owned())];
        if let Some(sent) = key.sent_timestamp {
            source.push(("source_sent_timestamp", sent.to_owned()));
            source.push((
                "source_signature",
                masker.redrive_signature(key.message_id, sent, body),
            ));
        }
        let mut sealed = Vec::new();
        if let (Some(sealer), false) = (&self.sealer, body.is_empty()) {
            if masked.len() + sealer.sealed_len(body.len()) > MAX_COPY_BYTES {
                warn!(
                    message_id = r.message_id,
                    body_bytes = body.len(),
                    "the sealed copy of this rejected record is larger than SQS takes; leaving the record to SQS's redrive"
                );
                return None;
            }
            let s = sealer.seal(key.message_id, body);
            sealed = vec![(SEALED_BODY, s.body), (SEALED_KEY, s.key)];
        }
        Some((source, sealed))
    }
}
