//! The Lambda payload: an SQS batch event, reduced to what the function reads.
//!
//! `aws_lambda_events::SqsEvent` keeps every field, with catch-all maps for
//! unknown ones (`#[serde(flatten)]`), which makes serde buffer each record
//! before it can read it: 2.5x slower on a 10,000-record batch than this
//! type, which reads four fields per record and skips the rest in place
//! (measured when it was adopted). [`SqsBatch::from`] converts an
//! `SqsEvent` (tests and fixtures use that type).
//!
//! Read from event JSON, a batch keeps the payload's bytes and reads each
//! message from them when the handler first reaches it
//! ([`framing`]), so the first rows are in the COPY while the later
//! messages are still unread (docs/performance.md, "The payload as Lambda
//! sent it"). The function takes the bytes from the runtime
//! ([`SqsBatch::from_payload`]); `serde_json::from_str::<SqsBatch>` (the
//! tests, the fixtures) copies them once and reads them the same way.

mod framing;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use framing::{ArrayEntry, Payload};

/// One SQS batch as the event-source mapping sends it: its messages, in
/// queue order, each read on first use.
pub struct SqsBatch {
    source: Source,
}

enum Source {
    /// Messages already parsed (built in code: `poll`, the tests).
    Records(Vec<SqsRecord>),
    /// The payload as Lambda sent it, read as far as asked (boxed: the
    /// list's bucket table is large).
    Payload(Box<Payload>),
}

/// What a message that is not an SQS message reads as: every field absent.
static MALFORMED: SqsRecord = SqsRecord {
    message_id: None,
    body: None,
    attributes: None,
    event_source_arn: None,
    receipt_handle: None,
    message_attributes: None,
};

use crate::error::{NOT_AN_SQS_EVENT, NotAnSqsEvent};

impl SqsBatch {
    /// A batch of messages already parsed.
    pub fn new(records: Vec<SqsRecord>) -> Self {
        Self {
            source: Source::Records(records),
        }
    }

    /// The invocation's payload as Lambda sent it. Only its start is read
    /// here (up to the `Records` array); each message is read when first
    /// asked for, and a payload that breaks off later shows as
    /// [`unreadable_at`](Self::unreadable_at) there.
    pub fn from_payload(bytes: Bytes) -> Result<Self, NotAnSqsEvent> {
        let payload = Payload::new(bytes)?;
        Ok(Self {
            source: Source::Payload(Box::new(payload)),
        })
    }

    /// The number of messages (every message is read to count them); a
    /// payload that breaks off counts the messages before the break.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Records(records) => records.len(),
            Source::Payload(payload) => payload.len(),
        }
    }

    /// No messages.
    pub fn is_empty(&self) -> bool {
        !self.has(0)
    }

    /// There is a message at `index` (the ones before it are read).
    pub fn has(&self, index: usize) -> bool {
        match &self.source {
            Source::Records(records) => index < records.len(),
            Source::Payload(payload) => payload.get(index).is_some(),
        }
    }

    /// About how many messages the batch holds, without reading them all:
    /// exact for parsed messages; for a payload, its size over the first
    /// message's (the messages of one queue are alike). What the sink needs
    /// to choose COPY or INSERT before the rows come.
    pub fn size_hint(&self) -> usize {
        match &self.source {
            Source::Records(records) => records.len(),
            Source::Payload(payload) => payload.size_hint(),
        }
    }

    /// The message at `index`, read now if it was not yet; `None` when it
    /// is not an SQS message (`{"messageId": 42}`, a body that is an
    /// object) or the payload broke off there: the batch cannot be
    /// handled. Panics past the end.
    pub fn get(&self, index: usize) -> Option<&SqsRecord> {
        match &self.source {
            Source::Records(records) => Some(&records[index]),
            Source::Payload(payload) => match payload.get(index).expect("a message at the index") {
                ArrayEntry::Record(record) => Some(record),
                ArrayEntry::Malformed | ArrayEntry::Unreadable => None,
            },
        }
    }

    /// The payload stops being JSON at message `index` (a syntax error, a
    /// payload cut short, something after its end): the batch has no
    /// message there or after it.
    pub fn unreadable_at(&self, index: usize) -> bool {
        match &self.source {
            Source::Records(_) => false,
            Source::Payload(payload) => matches!(payload.get(index), Some(ArrayEntry::Unreadable)),
        }
    }

    /// [`get`](Self::get), with a message that is not an SQS message read
    /// as one with every field absent (for a batch already checked).
    pub fn record(&self, index: usize) -> &SqsRecord {
        self.get(index).unwrap_or(&MALFORMED)
    }

    /// The messages, in queue order (each read as the iterator reaches it).
    pub fn records(&self) -> impl Iterator<Item = &SqsRecord> + '_ {
        (0..).take_while(|&i| self.has(i)).map(|i| self.record(i))
    }

    /// The messages to change (tests, redrives), every one read now; a
    /// message that is not an SQS message is left out, so the n-th item is
    /// not the n-th message when one is. Panics on a payload that breaks
    /// off: it has no messages to change after the break.
    pub fn records_mut(&mut self) -> impl Iterator<Item = &mut SqsRecord> + '_ {
        if let Source::Payload(payload) = &self.source {
            let records = payload
                .read_all()
                .filter_map(|e| match e {
                    ArrayEntry::Record(r) => Some(r.clone()),
                    ArrayEntry::Malformed => None,
                    ArrayEntry::Unreadable => panic!("records_mut on a payload that breaks off"),
                })
                .collect();
            self.source = Source::Records(records);
        }
        let Source::Records(records) = &mut self.source else {
            unreachable!("made a list of records above")
        };
        records.iter_mut()
    }
}

impl Default for SqsBatch {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

// A clone of a payload batch reads the payload again from its start.
impl Clone for SqsBatch {
    fn clone(&self) -> Self {
        match &self.source {
            Source::Records(records) => Self::new(records.clone()),
            Source::Payload(payload) => {
                let bytes = payload.bytes().clone();
                Self::from_payload(bytes).expect("a payload that was read once reads again")
            }
        }
    }
}

/// What the function needs of one SQS message.
#[derive(Clone, Default, Deserialize)]
pub struct SqsRecord {
    /// The SQS message id: the idempotency key and `itemIdentifier`.
    #[serde(rename = "messageId", default)]
    pub message_id: Option<String>,
    /// The login event (JSON text).
    #[serde(default)]
    pub body: Option<String>,
    /// The message's system attributes.
    #[serde(default)]
    pub attributes: Option<RecordAttributes>,
    /// The queue's ARN; ends in `.fifo` for FIFO queues.
    #[serde(rename = "eventSourceARN", default)]
    pub event_source_arn: Option<String>,
    /// The receipt handle of this receive: what a visibility change needs.
    #[serde(rename = "receiptHandle", default)]
    pub receipt_handle: Option<String>,
    /// The message attributes the function reads: those a copy it sent to
    /// the dead-letter queue carries back when it is redriven.
    #[serde(rename = "messageAttributes", default)]
    pub message_attributes: Option<SourceAttributes>,
}

/// The attributes of a copy the function sent to the dead-letter queue
/// (`crate::ingest::dlq`): the original message's id and `SentTimestamp`,
/// signed. A redrive sends the copy back as a new message, with a new id
/// and a new `SentTimestamp`; these keep its row key and day the
/// original's, when the signature holds (see
/// `crate::ingest::record::row_key`): any sender can set attributes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SourceAttributes {
    /// `source_message_id`.
    #[serde(default, deserialize_with = "string_value")]
    pub source_message_id: Option<String>,
    /// `source_sent_timestamp` (epoch milliseconds).
    #[serde(default, deserialize_with = "string_value")]
    pub source_sent_timestamp: Option<String>,
    /// `source_signature`: the masking key's signature of the two
    /// (`Masker::redrive_signature`).
    #[serde(default, deserialize_with = "string_value")]
    pub source_signature: Option<String>,
    /// `sealed_body`: a copy's sealed original, when a copy itself comes
    /// back (SQS moved it, or someone sent it as it was): carried to its
    /// next copy unchanged, never sealed over.
    #[serde(default, deserialize_with = "string_value")]
    pub sealed_body: Option<String>,
    /// `sealed_key`: the data key of `sealed_body`.
    #[serde(default, deserialize_with = "string_value")]
    pub sealed_key: Option<String>,
    /// `rejection_code`: set on every copy the function sends to the
    /// dead-letter queue, never on an original (`dlq-redrive` sends the
    /// original back without it): a copy that comes back is not a login.
    #[serde(default, deserialize_with = "string_value")]
    pub rejection_code: Option<String>,
    /// `rebuilt_seal`: a login `dlq-redrive --rebuild` made from a copy
    /// that kept no original, sealed by the DLQ operator
    /// (`crate::privacy::dead_letter::rebuilt`); its tokens are stored as
    /// they are only when the seal opens.
    #[serde(default, deserialize_with = "string_value")]
    pub rebuilt_seal: Option<String>,
    /// `rebuilt_key_version`: the masking-key version of a rebuilt login's
    /// tokens (sealed with it).
    #[serde(default, deserialize_with = "string_value")]
    pub rebuilt_key_version: Option<String>,
    /// `copy_signature`: on a copy, the function's signature of all it says
    /// (`crate::ingest::dlq::CopyFacts`); on a rebuilt login, its copy's.
    #[serde(default, deserialize_with = "string_value")]
    pub copy_signature: Option<String>,
    /// `source_rejection_code`: on a rebuilt login, its copy's
    /// `rejection_code` (the copy's signature covers it).
    #[serde(default, deserialize_with = "string_value")]
    pub source_rejection_code: Option<String>,
    /// `traceparent`: a producer's W3C trace context, where it sends one
    /// instead of SQS's `AWSTraceHeader` (a link of the batch's span:
    /// `crate::ingest::trace`).
    #[serde(default, deserialize_with = "string_value")]
    pub traceparent: Option<String>,
}

/// The message attributes the function reads, [`SourceAttributes`]'
/// fields by their names: what `login-etl poll` asks SQS for.
pub const SOURCE_ATTRIBUTES: [&str; 11] = [
    "source_message_id",
    "source_sent_timestamp",
    "source_signature",
    "sealed_body",
    "sealed_key",
    "rejection_code",
    "rebuilt_seal",
    "rebuilt_key_version",
    "copy_signature",
    "source_rejection_code",
    "traceparent",
];

impl SourceAttributes {
    /// Each of [`SOURCE_ATTRIBUTES`] as `value` gives it by name.
    pub fn from_named(value: impl Fn(&str) -> Option<String>) -> Self {
        let [source_message_id, source_sent_timestamp, source_signature, sealed_body, sealed_key, rejection_code, rebuilt_seal, rebuilt_key_version, copy_signature, source_rejection_code, traceparent] = SOURCE_ATTRIBUTES.map(value);
        SourceAttributes {
            source_message_id,
            source_sent_timestamp,
            source_signature,
            sealed_body,
            sealed_key,
            rejection_code,
            rebuilt_seal,
            rebuilt_key_version,
            copy_signature,
            source_rejection_code,
            traceparent,
        }
    }
}

/// The three message attributes that name a redriven copy's original, as
/// the message carries them: a claim until its signature is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedSource<'a> {
    /// `source_message_id`.
    pub message_id: &'a str,
    /// `source_sent_timestamp`.
    pub sent_timestamp: &'a str,
    /// `source_signature`.
    pub signature: &'a str,
}

/// The row key a rebuilt login names: its copy's original's, and what
/// its copy's signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuiltClaim<'a> {
    /// `source_message_id`.
    pub message_id: &'a str,
    /// `source_sent_timestamp`.
    pub sent_timestamp: &'a str,
    /// `rebuilt_key_version`: the key version of its tokens.
    pub key_version: u16,
    /// `source_rejection_code`: its copy's rejection code.
    pub rejection_code: &'a str,
    /// `source_signature`: its copy's signed row key (empty when the copy
    /// had none: no producer's message, which is not rebuilt).
    pub source_signature: &'a str,
    /// `copy_signature`: its copy's signature.
    pub copy_signature: &'a str,
}

/// What a dead-letter copy says of itself, as the message carries it: a
/// claim until its `copy_signature` is checked
/// (`crate::ingest::dlq::CopyFacts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyClaims<'a> {
    /// `rejection_code`.
    pub code: &'a str,
    /// `source_message_id`.
    pub source_message_id: &'a str,
    /// `source_sent_timestamp`, when its original had one.
    pub source_sent_timestamp: Option<&'a str>,
    /// `source_signature`, when its original's claim was signed.
    pub source_signature: Option<&'a str>,
    /// `sealed_body` and `sealed_key`, when it kept its original.
    pub sealed: Option<(&'a str, &'a str)>,
    /// `copy_signature` (its `v<n>.`: the key version of its tokens).
    pub signature: &'a str,
}

/// An attribute's value, when it has one that is not empty.
fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|v| !v.is_empty())
}

/// A message attribute as Lambda's SQS event shows it: its `stringValue`.
fn string_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Attribute {
        #[serde(rename = "stringValue", default)]
        string_value: Option<String>,
    }
    Ok(Option::<Attribute>::deserialize(d)?.and_then(|a| a.string_value))
}

/// The system attributes the function reads.
#[derive(Clone, Default, Deserialize)]
pub struct RecordAttributes {
    /// Epoch milliseconds when the message was sent.
    #[serde(rename = "SentTimestamp", default)]
    pub sent_timestamp: Option<String>,
    /// How many times SQS has delivered the message.
    #[serde(rename = "ApproximateReceiveCount", default)]
    pub approximate_receive_count: Option<String>,
    /// The FIFO message group.
    #[serde(rename = "MessageGroupId", default)]
    pub message_group_id: Option<String>,
    /// Who sent it: an IAM user's id, or a role's (`AROA…:session`).
    #[serde(rename = "SenderId", default)]
    pub sender_id: Option<String>,
    /// The producer's X-Ray trace header (`Root=1-…;Parent=…;Sampled=…`),
    /// which SQS carries when the sender was traced: a link of the batch's
    /// span (`crate::ingest::trace`).
    #[serde(rename = "AWSTraceHeader", default)]
    pub aws_trace_header: Option<String>,
}

// `Debug` without the sender: a role's session name can be a person's
// email address (SSO).
impl std::fmt::Debug for RecordAttributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordAttributes")
            .field("sent_timestamp", &self.sent_timestamp)
            .field("approximate_receive_count", &self.approximate_receive_count)
            .field("message_group_id", &self.message_group_id)
            .field("sender_id", &self.sender_id.as_ref().map(|_| "<set>"))
            // Past its ids, a header holds what its producer wrote.
            .field("aws_trace_header", &self.aws_trace_header.as_ref().map(|_| "<set>"))
            .finish()
    }
}

// `Debug` without the bodies: a `?batch` in a log line must not leak a
// login's ip or device id.
impl std::fmt::Debug for SqsBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBatch")
            .field("records", &self.records().collect::<Vec<_>>())
            .finish()
    }
}

impl std::fmt::Debug for SqsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsRecord")
            .field("message_id", &self.message_id)
            .field("body_bytes", &self.body.as_ref().map(String::len))
            .field("attributes", &self.attributes)
            .field("event_source_arn", &self.event_source_arn)
            .finish_non_exhaustive()
    }
}

impl SqsRecord {
    /// The `SentTimestamp` attribute, if present.
    pub fn sent_timestamp(&self) -> Option<&str> {
        self.attributes.as_ref()?.sent_timestamp.as_deref()
    }

    /// A copy's sealed original and its data key, when the message is
    /// itself a copy the function made (both non-empty).
    pub fn sealed_original(&self) -> Option<(&str, &str)> {
        let a = self.message_attributes.as_ref()?;
        let body = a.sealed_body.as_deref().filter(|v| !v.is_empty())?;
        let key = a.sealed_key.as_deref().filter(|v| !v.is_empty())?;
        Some((body, key))
    }

    /// Whether the message carries a dead-letter copy's attributes: the
    /// copy itself come back (SQS moved it, or someone sent it on), or its
    /// original sent back with them (which its signed claim tells apart:
    /// `crate::ingest::record::row_key`).
    pub fn is_dead_letter_copy(&self) -> bool {
        self.message_attributes
            .as_ref()
            .is_some_and(|a| a.rejection_code.as_deref().is_some_and(|c| !c.is_empty()))
    }

    /// A rebuilt login's row key (`source_message_id`,
    /// `source_sent_timestamp`), its tokens' key version, its copy's code
    /// and signature, and its seal, when it carries them all: a claim until
    /// the signature and the seal are checked.
    pub fn rebuilt(&self) -> Option<(RebuiltClaim<'_>, &str)> {
        let a = self.message_attributes.as_ref()?;
        let seal = a.rebuilt_seal.as_deref()?;
        Some((
            RebuiltClaim {
                message_id: a.source_message_id.as_deref().filter(|v| !v.is_empty())?,
                sent_timestamp: a
                    .source_sent_timestamp
                    .as_deref()
                    .filter(|v| !v.is_empty())?,
                key_version: a.rebuilt_key_version.as_deref()?.trim().parse().ok()?,
                rejection_code: a.source_rejection_code.as_deref()?,
                source_signature: a.source_signature.as_deref().unwrap_or_default(),
                copy_signature: a.copy_signature.as_deref()?,
            },
            seal,
        ))
    }

    /// What the message says when it says it is a dead-letter copy: a
    /// rejection code, its original's id and a copy signature, at least.
    pub fn copy_claims(&self) -> Option<CopyClaims<'_>> {
        let a = self.message_attributes.as_ref()?;
        Some(CopyClaims {
            code: nonempty(&a.rejection_code)?,
            source_message_id: nonempty(&a.source_message_id)?,
            source_sent_timestamp: nonempty(&a.source_sent_timestamp),
            source_signature: nonempty(&a.source_signature),
            sealed: self.sealed_original(),
            signature: nonempty(&a.copy_signature)?,
        })
    }

    /// Whether the message says it is a rebuilt login (a seal attribute,
    /// checked or not).
    pub fn claims_rebuilt(&self) -> bool {
        self.message_attributes
            .as_ref()
            .is_some_and(|a| a.rebuilt_seal.is_some())
    }

    /// The original that a redriven copy names in its message attributes,
    /// when it names one in full (all three non-empty).
    pub fn claimed_source(&self) -> Option<ClaimedSource<'_>> {
        let a = self.message_attributes.as_ref()?;
        Some(ClaimedSource {
            message_id: nonempty(&a.source_message_id)?,
            sent_timestamp: nonempty(&a.source_sent_timestamp)?,
            signature: nonempty(&a.source_signature)?,
        })
    }
}

impl<'de> Deserialize<'de> for SqsBatch {
    /// Copies the event's text once; its messages are read from it as
    /// [`SqsBatch::from_payload`] reads them. serde's own error text can
    /// quote values from the payload: replaced by a fixed message.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(d)
            .map_err(|_| serde::de::Error::custom(NOT_AN_SQS_EVENT))?;
        let bytes = Bytes::from(String::from(Box::<str>::from(text)));
        SqsBatch::from_payload(bytes).map_err(|_| serde::de::Error::custom(NOT_AN_SQS_EVENT))
    }
}

impl From<&SqsMessage> for SqsRecord {
    fn from(m: &SqsMessage) -> Self {
        let attribute = |name: &str| {
            m.message_attributes
                .get(name)
                .and_then(|a| a.string_value.clone())
        };
        SqsRecord {
            message_id: m.message_id.clone(),
            body: m.body.clone(),
            attributes: Some(RecordAttributes {
                sent_timestamp: m.attributes.get("SentTimestamp").cloned(),
                approximate_receive_count: m.attributes.get("ApproximateReceiveCount").cloned(),
                message_group_id: m.attributes.get("MessageGroupId").cloned(),
                sender_id: m.attributes.get("SenderId").cloned(),
                aws_trace_header: m.attributes.get("AWSTraceHeader").cloned(),
            }),
            event_source_arn: m.event_source_arn.clone(),
            receipt_handle: m.receipt_handle.clone(),
            message_attributes: Some(SourceAttributes::from_named(attribute)),
        }
    }
}

impl From<&SqsEvent> for SqsBatch {
    fn from(event: &SqsEvent) -> Self {
        SqsBatch::new(event.records.iter().map(SqsRecord::from).collect())
    }
}

#[cfg(test)]
mod tests;
