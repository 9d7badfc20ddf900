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

use framing::{Entry, Payload};

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

/// Why a payload cannot be read as an SQS batch; quotes nothing of it.
const NOT_AN_SQS_EVENT: &str = "the payload is not an SQS batch event ({\"Records\": [...]} with string fields); invoke the function through an SQS event-source mapping or with a file from events/";

/// The payload is not an SQS batch event: its text says what to do and
/// quotes nothing of the payload.
#[derive(Debug, thiserror::Error)]
#[error("{NOT_AN_SQS_EVENT}")]
pub struct NotAnSqsEvent;

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
        let payload = Payload::new(bytes).map_err(|_| NotAnSqsEvent)?;
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
                Entry::Record(record) => Some(record),
                Entry::Malformed | Entry::Unreadable => None,
            },
        }
    }

    /// The payload stops being JSON at message `index` (a syntax error, a
    /// payload cut short, something after its end): the batch has no
    /// message there or after it.
    pub fn unreadable_at(&self, index: usize) -> bool {
        match &self.source {
            Source::Records(_) => false,
            Source::Payload(payload) => matches!(payload.get(index), Some(Entry::Unreadable)),
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
                    Entry::Record(r) => Some(r.clone()),
                    Entry::Malformed => None,
                    Entry::Unreadable => panic!("records_mut on a payload that breaks off"),
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
        assert!(
            !b.unreadable_at(1),
            "malformed, not unreadable: the array goes on"
        );
        assert!(b.record(1).message_id.is_none());
        let b = payload(r#"{"Records":[7,null,"x",{"messageId":"m"}]}"#);
        assert_eq!(b.len(), 4);
        assert!((0..3).all(|i| b.get(i).is_none() && !b.unreadable_at(i)));
        assert_eq!(b.record(3).message_id.as_deref(), Some("m"));
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

    /// How many messages of a payload batch are read so far.
    fn read_so_far(b: &SqsBatch) -> usize {
        match &b.source {
            Source::Payload(p) => p.read_so_far(),
            Source::Records(r) => r.len(),
        }
    }

    fn payload(text: &str) -> SqsBatch {
        SqsBatch::from_payload(Bytes::from(text.to_owned())).unwrap()
    }

    #[test]
    fn each_message_is_read_when_first_reached() {
        let text = fixture("sqs-valid.json");
        let b = payload(&text);
        assert_eq!(read_so_far(&b), 0, "nothing is read before it is asked for");
        assert!(b.record(2).message_id.is_some());
        assert_eq!(
            read_so_far(&b),
            3,
            "the messages before it are read on the way"
        );
        let n = b.len();
        assert_eq!(read_so_far(&b), n);
        assert_eq!(b.records().count(), n);
        let copy = b.clone();
        assert_eq!(copy.record(2).message_id, b.record(2).message_id);
        let full: SqsEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(n, full.records.len());
        // The size hint reads one message and is near the count for messages alike.
        let fresh = payload(&text);
        let hint = fresh.size_hint();
        assert_eq!(read_so_far(&fresh), 1);
        assert!(hint >= n && hint <= n + 1, "{hint} for {n}");
    }

    #[test]
    fn frames_the_array_whatever_the_whitespace_and_the_keys_around_it() {
        let m = r#"{"messageId":"a","body":"{\"x\":[1,{\"y\":\"]\"}]}","attributes":{"SentTimestamp":"1"}}"#;
        for text in [
            format!(r#"{{"Records":[{m},{m}]}}"#),
            format!(" \n{{ \"Records\" :\t[ {m} ,\r\n {m} ] }} \n"),
            format!(r#"{{"other":{{"Records":[1]}},"Records":[{m},{m}],"after":[{{}}]}}"#),
        ] {
            let b = payload(&text);
            assert_eq!(b.len(), 2, "{text}");
            assert!(!b.unreadable_at(1), "{text}");
            assert_eq!(b.record(1).message_id.as_deref(), Some("a"));
            assert_eq!(b.record(1).sent_timestamp(), Some("1"));
        }
        assert!(payload(r#"{"Records":[]}"#).is_empty());
        assert_eq!(payload(r#"{"Records":[ ]}"#).size_hint(), 0);
    }

    #[test]
    fn a_payload_that_breaks_off_is_unreadable_where_it_breaks() {
        let m = r#"{"messageId":"a","body":"x"}"#;
        for (text, at) in [
            (format!(r#"{{"Records":[{m},{m}"#), 2),
            (format!(r#"{{"Records":[{m},{{"messageId":"b","body":"#), 1),
            (format!(r#"{{"Records":[{m} {m}]}}"#), 1),
            (format!(r#"{{"Records":[{m},]}}"#), 1),
            (format!(r#"{{"Records":[{m}]}} trailing"#), 1),
            (format!(r#"{{"Records":[{m}]"#), 1),
            (format!(r#"{{"Records":[{m}],"Records":[]}}"#), 1),
            (format!(r#"{{"Records":[{m},{{"messageId":"\u12"}}]}}"#), 1),
        ] {
            let b = payload(&text);
            assert!(b.has(at) && !b.has(at + 1), "{text}");
            assert_eq!(b.len(), at, "the messages before the break, {text}");
            assert!(b.get(0).is_some(), "{text}");
            assert!(b.get(at).is_none() && b.unreadable_at(at), "{text}");
        }
        // A byte that is not UTF-8, in a field the function skips: the
        // payload is not JSON there, as a whole-payload parse would say.
        let m = br#"{"messageId":"a","body":"x","md5OfBody":"#;
        let mut bad = br#"{"Records":["#.to_vec();
        bad.extend_from_slice(m);
        bad.extend_from_slice(b"\"\xff\"}]}");
        let b = SqsBatch::from_payload(Bytes::from(bad)).unwrap();
        assert!(b.unreadable_at(0) && b.get(0).is_none());
        let b = SqsBatch::from_payload(Bytes::from(b"{\"Records\":[],\"x\":\"\xff\"}".to_vec()))
            .unwrap();
        assert!(b.unreadable_at(0));
        assert!(
            SqsBatch::from_payload(Bytes::from(b"{\"x\":\"\xff\",\"Records\":[]}".to_vec()))
                .is_err()
        );
        // Not an SQS event at all: refused before any message is read.
        for text in [
            "",
            "[]",
            "null",
            r#"{"Records":{"ip":"10.1.2.3"}}"#,
            r#"{"records":[]}"#,
            r#"{"Records" []}"#,
            r#"{"ip":"10.1.2.3" "Records":[]}"#,
        ] {
            assert!(
                SqsBatch::from_payload(Bytes::from(text.to_owned())).is_err(),
                "{text}"
            );
        }
        let shown = NotAnSqsEvent.to_string();
        assert!(shown.contains("not an SQS batch event") && shown.contains("events/"));
    }

    #[test]
    fn reads_through_serde_path_to_error_as_lambda_runtime_does() {
        // lambda_runtime wraps serde_json's deserializer in serde_path_to_error;
        // the payload's text must come through it whole.
        let text = fixture("sqs-mixed.json");
        let jd = &mut serde_json::Deserializer::from_str(&text);
        let wrapped: SqsBatch = serde_path_to_error::deserialize(jd).unwrap();
        let plain: SqsBatch = serde_json::from_str(&text).unwrap();
        assert_eq!(wrapped.len(), plain.len());
        for (a, b) in wrapped.records().zip(plain.records()) {
            assert_eq!((&a.message_id, &a.body), (&b.message_id, &b.body));
        }
    }

    /// Whatever a payload's bytes, reading it lazily agrees with one parse
    /// of the whole: a payload serde_json refuses never reads to its end
    /// (so no batch of it can commit), and one it accepts reads as the
    /// same messages. The payloads: the fixture cut short anywhere, or with
    /// a byte changed anywhere.
    #[test]
    fn reads_whatever_the_bytes_as_one_parse_of_the_whole_would() {
        use proptest::prelude::*;
        let text = fixture("sqs-mixed.json").into_bytes();
        let len = text.len();
        let config = ProptestConfig {
            cases: 3000,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        proptest!(config, |(at in 0..len, byte in any::<u8>(), cut in any::<bool>())| {
            let mut bytes = text.clone();
            if cut {
                bytes.truncate(at);
            } else {
                bytes[at] = byte;
            }
            let whole = serde_json::from_slice::<serde_json::Value>(&bytes);
            let records = whole.as_ref().ok().and_then(|v| v.get("Records")?.as_array().cloned());
            let Ok(batch) = SqsBatch::from_payload(Bytes::from(bytes)) else {
                prop_assert!(records.is_none(), "refused, yet its Records parse");
                return Ok(());
            };
            let n = (0..).take_while(|&i| batch.has(i)).count();
            let broken = n > 0 && batch.unreadable_at(n - 1);
            if whole.is_err() {
                prop_assert!(broken, "serde_json refuses it, yet it reads to its end");
                return Ok(());
            }
            prop_assert!(!broken, "serde_json accepts it, yet it breaks off");
            let records = records.expect("a payload read to its end has a Records array");
            prop_assert_eq!(n, records.len());
            for (i, value) in records.iter().enumerate() {
                let id = value.get("messageId").and_then(|v| v.as_str());
                let body = value.get("body").and_then(|v| v.as_str());
                if let Some(record) = batch.get(i) {
                    prop_assert_eq!(record.message_id.as_deref(), id);
                    prop_assert_eq!(record.body.as_deref(), body);
                }
            }
        });
    }
}
