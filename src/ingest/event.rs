//! The Lambda payload: an SQS batch event, reduced to what the function reads.
//!
//! `aws_lambda_events::SqsEvent` keeps every field, with catch-all maps for
//! unknown ones (`#[serde(flatten)]`), which makes serde buffer each record
//! before it can read it: 2.5x slower on a 10,000-record batch than this
//! type, which reads four fields per record and skips the rest in place
//! (benches/batch_pg.rs, phase "event JSON"). [`SqsBatch::from`] converts an
//! `SqsEvent` (tests and fixtures use that type).
//!
//! Read from event JSON, a batch is only split into its messages' JSON
//! texts (a scan that allocates one copy per message); each message is
//! parsed when the handler first reaches it, so the first rows are in the
//! COPY while the later messages are still text (parse while writing:
//! docs/performance.md, "Parse while writing").

use std::sync::{Mutex, OnceLock};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// One SQS batch as the event-source mapping sends it: its messages, in
/// queue order, each parsed on first use.
#[derive(Clone, Default)]
pub struct SqsBatch {
    messages: Vec<Message>,
}

/// One message of a batch: parsed already (built in code, by `poll`), or
/// its JSON text, parsed once when first asked for. The text is freed as
/// it is parsed, so a batch holds each message about once.
struct Message {
    json: Mutex<Option<Box<RawValue>>>,
    /// `None` inside: the JSON is not an SQS message (a field of the wrong type).
    parsed: OnceLock<Option<SqsRecord>>,
}

impl Message {
    fn parsed(record: SqsRecord) -> Self {
        Self {
            json: Mutex::new(None),
            parsed: OnceLock::from(Some(record)),
        }
    }

    fn text(json: Box<RawValue>) -> Self {
        Self {
            json: Mutex::new(Some(json)),
            parsed: OnceLock::new(),
        }
    }

    /// The message, parsed now if it was not yet (`None`: malformed).
    fn get(&self) -> Option<&SqsRecord> {
        self.parsed
            .get_or_init(|| {
                // A poisoned lock: a parse panicked, which serde_json does not.
                let json = self.json.lock().ok()?.take()?;
                serde_json::from_str(json.get()).ok()
            })
            .as_ref()
    }
}

// A clone is parsed: the text may be mid-parse in another thread.
impl Clone for Message {
    fn clone(&self) -> Self {
        Self {
            json: Mutex::new(None),
            parsed: OnceLock::from(self.get().cloned()),
        }
    }
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

impl SqsBatch {
    /// A batch of messages already parsed.
    pub fn new(records: Vec<SqsRecord>) -> Self {
        Self {
            messages: records.into_iter().map(Message::parsed).collect(),
        }
    }

    /// The number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// No messages.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The message at `index`, parsed now if it was not yet; `None` when it
    /// is not an SQS message (`{"messageId": 42}`, a body that is an
    /// object): the batch cannot be handled. Panics out of range.
    pub fn get(&self, index: usize) -> Option<&SqsRecord> {
        self.messages[index].get()
    }

    /// [`get`](Self::get), with a message that is not an SQS message read
    /// as one with every field absent (for a batch already checked).
    pub fn record(&self, index: usize) -> &SqsRecord {
        self.get(index).unwrap_or(&MALFORMED)
    }

    /// The messages, in queue order (each parsed as the iterator reaches it).
    pub fn records(&self) -> impl ExactSizeIterator<Item = &SqsRecord> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }

    /// The messages to change (tests, redrives), every one parsed now; a
    /// message that is not an SQS message is left out, so the n-th item is
    /// not the n-th message when one is.
    pub fn records_mut(&mut self) -> impl Iterator<Item = &mut SqsRecord> + '_ {
        for index in 0..self.len() {
            self.get(index);
        }
        self.messages
            .iter_mut()
            .filter_map(|m| m.parsed.get_mut().and_then(Option::as_mut))
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
/// ([`crate::ingest::dlq`]): the original message's id and `SentTimestamp`. A DLQ
/// redrive sends the copy back as a new message, with a new id and a new
/// `SentTimestamp`; these keep its row key and day the original's.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SourceAttributes {
    /// `source_message_id`.
    #[serde(default, deserialize_with = "string_value")]
    pub source_message_id: Option<String>,
    /// `source_sent_timestamp` (epoch milliseconds).
    #[serde(default, deserialize_with = "string_value")]
    pub source_sent_timestamp: Option<String>,
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
#[derive(Debug, Clone, Default, Deserialize)]
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

    /// The row key: the original message's id for a copy redriven from the
    /// dead-letter queue (`source_message_id`), else this message's id.
    pub fn key_message_id<'a>(&'a self, message_id: &'a str) -> &'a str {
        self.message_attributes
            .as_ref()
            .and_then(|a| a.source_message_id.as_deref())
            .filter(|id| !id.is_empty())
            .unwrap_or(message_id)
    }

    /// When the message was first sent (epoch ms, as text): the original's
    /// for a redriven copy (`source_sent_timestamp`), else `SentTimestamp`.
    /// SQS keeps `SentTimestamp` across redeliveries, so this is the same on
    /// every delivery of the message and of its redriven copies.
    pub fn key_sent_timestamp(&self) -> Option<&str> {
        self.message_attributes
            .as_ref()
            .and_then(|a| a.source_sent_timestamp.as_deref())
            .or_else(|| self.sent_timestamp())
    }
}

/// Why a payload cannot be read as an SQS batch; quotes nothing of it.
const NOT_AN_SQS_EVENT: &str = "the payload is not an SQS batch event ({\"Records\": [...]} with string fields); invoke the function through an SQS event-source mapping or with a file from events/";

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "Records")]
    records: Vec<Box<RawValue>>,
}

impl<'de> Deserialize<'de> for SqsBatch {
    /// Splits the event into its messages' JSON texts; each is parsed when
    /// first used. serde's own error text can quote values from the
    /// payload: replaced by a fixed message.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d).map_err(|_| serde::de::Error::custom(NOT_AN_SQS_EVENT))?;
        let messages = wire.records.into_iter().map(Message::text).collect();
        Ok(SqsBatch { messages })
    }
}

impl From<&SqsMessage> for SqsRecord {
    fn from(m: &SqsMessage) -> Self {
        SqsRecord {
            message_id: m.message_id.clone(),
            body: m.body.clone(),
            attributes: Some(RecordAttributes {
                sent_timestamp: m.attributes.get("SentTimestamp").cloned(),
                approximate_receive_count: m.attributes.get("ApproximateReceiveCount").cloned(),
                message_group_id: m.attributes.get("MessageGroupId").cloned(),
            }),
            event_source_arn: m.event_source_arn.clone(),
            receipt_handle: m.receipt_handle.clone(),
            message_attributes: Some(SourceAttributes {
                source_message_id: m
                    .message_attributes
                    .get("source_message_id")
                    .and_then(|a| a.string_value.clone()),
                source_sent_timestamp: m
                    .message_attributes
                    .get("source_sent_timestamp")
                    .and_then(|a| a.string_value.clone()),
            }),
        }
    }
}

impl From<&SqsEvent> for SqsBatch {
    fn from(event: &SqsEvent) -> Self {
        SqsBatch::new(event.records.iter().map(SqsRecord::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn reads_the_four_fields_and_agrees_with_sqs_event() {
        for name in ["sqs-valid.json", "sqs-mixed.json", "sqs-fifo.json"] {
            let text = fixture(name);
            let lean: SqsBatch = serde_json::from_str(&text).unwrap();
            let full: SqsEvent = serde_json::from_str(&text).unwrap();
            let converted = SqsBatch::from(&full);
            assert_eq!(lean.len(), full.records.len());
            for (a, b) in lean.records().zip(converted.records()) {
                assert_eq!(a.message_id, b.message_id);
                assert_eq!(a.body, b.body);
                assert_eq!(a.sent_timestamp(), b.sent_timestamp());
                assert_eq!(a.event_source_arn, b.event_source_arn);
                assert_eq!(a.receipt_handle, b.receipt_handle);
            }
        }
    }

    #[test]
    fn debug_output_shows_no_body() {
        let text = fixture("sqs-mixed.json");
        let batch: SqsBatch = serde_json::from_str(&text).unwrap();
        let shown = format!("{batch:?} {:#?}", batch.record(0));
        assert!(shown.contains("body_bytes") && shown.contains("message_id"));
        for r in batch.records() {
            let body = r.body.as_deref().unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
                for field in ["ip", "device_id", "user_id"] {
                    if let Some(value) = v
                        .get(field)
                        .and_then(|x| x.as_str())
                        .filter(|x| x.len() > 3)
                    {
                        assert!(!shown.contains(value), "{field} in Debug output");
                    }
                }
            }
        }
    }

    #[test]
    fn null_or_missing_fields_are_none_and_a_malformed_message_quotes_nothing() {
        let b: SqsBatch = serde_json::from_str(
            r#"{"Records":[{"messageId":"m","body":null,"attributes":null,"x":{"y":[1,2]}},{}]}"#,
        )
        .unwrap();
        assert_eq!(b.record(0).message_id.as_deref(), Some("m"));
        assert_eq!(
            (b.record(0).body.as_deref(), b.record(0).sent_timestamp()),
            (None, None)
        );
        assert!(b.record(1).message_id.is_none());
        assert!(b.get(0).is_some() && b.get(1).is_some());
        // A message of the wrong shape: the batch reads, the message does not.
        let b: SqsBatch = serde_json::from_str(
            r#"{"Records":[{"messageId":"m"},{"messageId":"n","body":{"ip":"10.1.2.3"}}]}"#,
        )
        .unwrap();
        assert!(b.get(0).is_some() && b.get(1).is_none());
        assert!(b.record(1).message_id.is_none());
        let shown = format!("{b:?}");
        assert!(!shown.contains("10.1.2.3"), "{shown}");
        // Not an SQS event at all: a fixed message, nothing of the payload.
        let err = serde_json::from_str::<SqsBatch>(r#"{"Records":{"ip":"10.1.2.3"}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("10.1.2.3") && err.contains("not an SQS batch event"),
            "{err}"
        );
    }

    #[test]
    fn each_message_is_parsed_when_first_reached() {
        let text = fixture("sqs-valid.json");
        let b: SqsBatch = serde_json::from_str(&text).unwrap();
        let parsed = |b: &SqsBatch| {
            b.messages
                .iter()
                .filter(|m| m.parsed.get().is_some())
                .count()
        };
        assert_eq!(parsed(&b), 0, "splitting parses no message");
        assert!(b.record(2).message_id.is_some());
        assert_eq!(parsed(&b), 1);
        assert_eq!(b.records().count(), b.len());
        assert_eq!(parsed(&b), b.len());
        assert!(
            b.messages.iter().all(|m| m.json.lock().unwrap().is_none()),
            "each message's text is freed once parsed"
        );
        let copy = b.clone();
        assert_eq!(copy.record(2).message_id, b.record(2).message_id);
        // Built from parsed records: nothing left to parse.
        assert_eq!(parsed(&SqsBatch::new(vec![SqsRecord::default()])), 1);
    }

    #[test]
    fn reads_through_serde_path_to_error_as_lambda_runtime_does() {
        // lambda_runtime wraps serde_json's deserializer in serde_path_to_error;
        // the split into raw messages must work through it.
        let text = fixture("sqs-mixed.json");
        let jd = &mut serde_json::Deserializer::from_str(&text);
        let wrapped: SqsBatch = serde_path_to_error::deserialize(jd).unwrap();
        let plain: SqsBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(wrapped.len(), plain.len());
        for (a, b) in wrapped.records().zip(plain.records()) {
            assert_eq!((&a.message_id, &a.body), (&b.message_id, &b.body));
        }
    }
}
