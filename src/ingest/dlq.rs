//! Rejected records straight to the dead-letter queue, with their reason.
//!
//! A validation failure is deterministic: redelivering the message only
//! delays it (5 receives at the default visibility is about 17 minutes, and
//! on a FIFO queue its whole message group waits). Where the function knows
//! its DLQ (`DLQ_URL`), it copies each rejected message there itself, the
//! body unchanged, with message attributes saying why, and then counts the
//! record as handled so SQS deletes it from the source queue: the same end
//! state as SQS's own redrive after `maxReceiveCount`, minus the wait.
//!
//! Nothing is lost on the way: an entry SQS refuses, a throttled or denied
//! call, or an empty body (SQS stores none) leaves the record in
//! `batchItemFailures`, and SQS redrives it as before.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use chrono::{SecondsFormat, Utc};
use tokio::task::JoinSet;
use tracing::warn;

use crate::ingest::event::SqsRecord;

/// Entries per `SendMessageBatch` (the SQS limit).
const MAX_ENTRIES: usize = 10;
/// Payload per `SendMessageBatch` (the SQS limit is 1 MiB; attributes and
/// message ids count too, so leave room).
const MAX_BATCH_BYTES: usize = 900 * 1024;
/// Bound on all sends of one invocation.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

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
}

impl DeadLetterQueue {
    /// The queue at `url`, through `client`.
    pub fn new(client: Client, url: String) -> Self {
        Self { client, url }
    }

    /// Copies `rejected` to the queue, in as few `SendMessageBatch` calls
    /// as SQS allows (10 entries each), sent at once. Returns the positions
    /// SQS accepted; every other record stays a batch item failure.
    /// The sends end 500 ms before `deadline` (the invocation's) at the
    /// latest, so the response is still returned in time.
    pub async fn send(
        &self,
        rejected: &[Rejected<'_>],
        fifo: bool,
        deadline: Option<std::time::Instant>,
    ) -> Vec<usize> {
        let limit = crate::ingest::backoff::before_deadline(SEND_TIMEOUT, deadline);
        let rejected_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut calls = JoinSet::new();
        let mut chunk: Vec<(usize, SendMessageBatchRequestEntry)> = Vec::new();
        let mut bytes = 0;
        for r in rejected {
            let body = r.message.body.as_deref().unwrap_or_default();
            if body.is_empty() {
                warn!(
                    message_id = r.message_id,
                    "cannot copy an empty body to the dead-letter queue; leaving the record to SQS's redrive"
                );
                continue;
            }
            if chunk.len() == MAX_ENTRIES
                || (bytes + body.len() > MAX_BATCH_BYTES && !chunk.is_empty())
            {
                calls.spawn(self.clone().send_chunk(std::mem::take(&mut chunk)));
                bytes = 0;
            }
            // The entry id is its index in its call.
            let Some(entry) = entry(r, chunk.len(), fifo, &rejected_at) else {
                continue;
            };
            bytes += body.len();
            chunk.push((r.position, entry));
        }
        if !chunk.is_empty() {
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
            Ok(out) => {
                for failed in out.failed() {
                    warn!(
                        entry = failed.id(),
                        code = failed.code(),
                        sender_fault = failed.sender_fault(),
                        "the dead-letter queue refused a rejected record; it stays a batch item failure"
                    );
                }
                out.successful()
                    .iter()
                    .filter_map(|s| s.id().parse::<usize>().ok())
                    .filter_map(|i| positions.get(i).copied())
                    .collect()
            }
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

fn string(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .ok()
}

/// The copy of one rejected record, entry `id` of its call.
fn entry(
    r: &Rejected<'_>,
    id: usize,
    fifo: bool,
    rejected_at: &str,
) -> Option<SendMessageBatchRequestEntry> {
    let attrs = r.message.attributes.as_ref();
    let receive_count = attrs
        .and_then(|a| a.approximate_receive_count.as_deref())
        .unwrap_or("1");
    let mut builder = SendMessageBatchRequestEntry::builder()
        .id(id.to_string())
        .message_body(r.message.body.as_deref().unwrap_or_default())
        .message_attributes("rejection_code", string(r.code)?)
        // The original's id and SentTimestamp (kept through any number of
        // redrives): a redriven copy is keyed and dated by them, so it can
        // never add a second row (see `record::transform`).
        .message_attributes(
            "source_message_id",
            string(r.message.key_message_id(r.message_id))?,
        )
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
        .message_attributes("rejected_at", string(rejected_at)?);
    if let Some(sent) = r.message.key_sent_timestamp() {
        builder = builder.message_attributes("source_sent_timestamp", string(sent)?);
    }
    if fifo {
        builder = builder
            .set_message_group_id(attrs.and_then(|a| a.message_group_id.clone()))
            .message_deduplication_id(r.message_id);
    }
    builder.build().ok()
}
