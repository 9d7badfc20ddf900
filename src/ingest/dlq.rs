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
//! A copy carries no raw ip or device id: its body is masked ([`masked_body`]),
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

pub mod masked_body;

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use chrono::{SecondsFormat, Utc};
use tokio::task::JoinSet;
use tracing::warn;

use crate::contract::NOT_A_PRODUCERS;
use crate::ingest::event::SqsRecord;
use crate::ingest::record::row_key;
use crate::ingest::sqs_batch;
use crate::privacy::dead_letter::{SEALED_BODY, SEALED_KEY, Sealer};
use crate::privacy::masking::{Masker, signature_version};

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
    /// The queue's name (its URL's last part), as spans name it.
    pub fn name(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or(&self.url)
    }

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
        sqs_batch::taken_positions(
            result,
            &positions,
            "the dead-letter queue refused a rejected record; it stays a batch item failure",
            "sending rejected records to the dead-letter queue failed (check sqs:SendMessage on it); they stay batch item failures",
        )
    }
}

/// A message attribute of text.
fn string(value: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .ok()
}

/// Everything a dead-letter copy says, which its `copy_signature` covers:
/// its original's row key, its rejection code, its tokens' key version,
/// its masked body and its sealed original. A copy's claims are the
/// function's only when the signature holds: a producer may set any
/// attribute on a message, and the DLQ operator may seal any body.
#[derive(Debug, Clone, Copy)]
pub struct CopyFacts<'a> {
    /// `source_message_id`.
    pub source_message_id: &'a str,
    /// `source_sent_timestamp` (empty when its original had none).
    pub source_sent_timestamp: &'a str,
    /// `source_signature`: the row key signed, which only a producer's
    /// message gets (empty otherwise).
    pub source_signature: &'a str,
    /// `rejection_code`.
    pub code: &'a str,
    /// The key version of its tokens: its signature's.
    pub token_key_version: u16,
    /// The copy's body.
    pub masked_body: &'a str,
    /// `sealed_body` and `sealed_key`, when it kept its original.
    pub sealed: Option<(&'a str, &'a str)>,
}

impl<'a> CopyFacts<'a> {
    fn parts(&self, version: &'a str) -> [&'a str; 6] {
        let (body, key) = self.sealed.unwrap_or_default();
        [self.code, version, self.masked_body, body, key, self.source_signature]
    }

    /// Its `copy_signature`, by the masking key's copy key.
    pub fn sign(&self, masker: &Masker) -> String {
        let version = self.token_key_version.to_string();
        masker.copy_signature(self.source_message_id, self.source_sent_timestamp, &self.parts(&version))
    }

    /// Whether `signature` is the function's, over exactly these.
    pub fn signed_by(&self, masker: &Masker, signature: &str) -> bool {
        let version = self.token_key_version.to_string();
        masker.verifies_copy(
            self.source_message_id,
            self.source_sent_timestamp,
            &self.parts(&version),
            signature,
        )
    }
}

/// What a copy says of its original: its row key, signed when it was a
/// producer's, and its body sealed.
struct CopiedOriginal {
    message_id: String,
    sent_timestamp: Option<String>,
    signature: Option<String>,
    sealed: Option<(String, String)>,
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
        let masked = masked_body::masked_body(body, masker);
        let original = self.original_of(r, masker, &masked)?;
        let signature = CopyFacts {
            source_message_id: &original.message_id,
            source_sent_timestamp: original.sent_timestamp.as_deref().unwrap_or_default(),
            source_signature: original.signature.as_deref().unwrap_or_default(),
            code: r.code,
            token_key_version: masker.version(),
            masked_body: &masked,
            sealed: original.sealed.as_ref().map(|(b, k)| (b.as_str(), k.as_str())),
        }
        .sign(masker);
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
            // Its `v<n>.` is the version of the masked body's tokens: a
            // login rebuilt from this copy is re-keyed from it (`dlq-redrive
            // --rebuild`). SQS takes 10 attributes a message: a copy that
            // kept its original carries all 10.
            .message_attributes("copy_signature", string(&signature)?);
        let mut size = masked.len() + signature.len() + 1024;
        let claims = [
            ("source_message_id", Some(original.message_id)),
            ("source_sent_timestamp", original.sent_timestamp),
            ("source_signature", original.signature),
        ];
        let sealed = original.sealed.map(|(b, k)| [(SEALED_BODY, b), (SEALED_KEY, k)]);
        for (name, value) in claims
            .into_iter()
            .filter_map(|(n, v)| Some((n, v?)))
            .chain(sealed.into_iter().flatten())
        {
            size += name.len() + value.len();
            builder = builder.message_attributes(name, string(&value)?);
        }
        if fifo {
            builder = builder
                .set_message_group_id(attrs.and_then(|a| a.message_group_id.clone()))
                .message_deduplication_id(r.message_id);
        }
        Some((builder.build().ok()?, size))
    }

    /// What a copy says of its original: its signed row key and, with a
    /// sealer, its body sealed. A message that is itself a copy the
    /// function made (SQS moved it back, or it was sent on as it was: its
    /// `copy_signature` holds) keeps its own: the original it names, never
    /// its masked body sealed over. Any other message is an original,
    /// whatever attributes it carries. The row key of a message that was no
    /// producer's is not signed: one rejected as such ([`NOT_A_PRODUCERS`]),
    /// or one that says it is a rebuilt login (the DLQ operator's, whatever
    /// else refused it), so that no redrive gives the operator's own login
    /// a row. `None` (with a warning): too large for SQS.
    fn original_of(&self, r: &Rejected<'_>, masker: &Masker, masked: &str) -> Option<CopiedOriginal> {
        if let Some((c, version)) = r
            .message
            .copy_claims()
            .and_then(|c| Some((c, signature_version(c.signature)?)))
        {
            let facts = CopyFacts {
                source_message_id: c.source_message_id,
                source_sent_timestamp: c.source_sent_timestamp.unwrap_or_default(),
                source_signature: c.source_signature.unwrap_or_default(),
                code: c.code,
                token_key_version: version,
                masked_body: r.message.body.as_deref().unwrap_or_default(),
                sealed: c.sealed,
            };
            if facts.signed_by(masker, c.signature) {
                return Some(CopiedOriginal {
                    message_id: c.source_message_id.to_owned(),
                    sent_timestamp: c.source_sent_timestamp.map(str::to_owned),
                    signature: c.source_signature.map(str::to_owned),
                    sealed: c.sealed.map(|(b, k)| (b.to_owned(), k.to_owned())),
                });
            }
        }
        let body = r.message.body.as_deref().unwrap_or_default();
        // The original's id and SentTimestamp (a signed copy's, kept
        // through any number of redrives): a redriven original is keyed and
        // dated by them, so it can never add a second row (see
        // `record::row_key`).
        let key = row_key(r.message_id, r.message, masker);
        let producers = !NOT_A_PRODUCERS.contains(&r.code) && !r.message.claims_rebuilt();
        let signature = key
            .sent_timestamp
            .filter(|_| producers)
            .map(|sent| masker.redrive_signature(key.message_id, sent, body));
        let mut sealed = None;
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
            sealed = Some((s.body, s.key));
        }
        Some(CopiedOriginal {
            message_id: key.message_id.to_owned(),
            sent_timestamp: key.sent_timestamp.map(str::to_owned),
            signature,
            sealed,
        })
    }
}
