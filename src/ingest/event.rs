//! The Lambda payload: an SQS batch event, reduced to what the function reads.
//!
//! `aws_lambda_events::SqsEvent` keeps every field, with catch-all maps for
//! unknown ones (`#[serde(flatten)]`), which makes serde buffer each record
//! before it can read it: 2.5x slower on a 10,000-record batch than this
//! type, which reads four fields per record and skips the rest in place
//! (benches/batch_pg.rs, phase "event JSON"). [`SqsBatch::from`] converts an
//! `SqsEvent` (tests and fixtures use that type).

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde::{Deserialize, Deserializer};

/// One SQS batch as the event-source mapping sends it.
#[derive(Clone, Default)]
pub struct SqsBatch {
    /// The messages, in queue order.
    pub records: Vec<SqsRecord>,
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
            .field("records", &self.records)
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

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "Records")]
    records: Vec<SqsRecord>,
}

impl<'de> Deserialize<'de> for SqsBatch {
    /// serde's own error text can quote values from the payload: replaced by
    /// a fixed message.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Wire::deserialize(d)
            .map(|w| SqsBatch { records: w.records })
            .map_err(|_| {
                serde::de::Error::custom(
                    "the payload is not an SQS batch event ({\"Records\": [...]} with string fields); invoke the function through an SQS event-source mapping or with a file from events/",
                )
            })
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
        SqsBatch {
            records: event.records.iter().map(SqsRecord::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_fields_and_agrees_with_sqs_event() {
        for fixture in ["sqs-valid.json", "sqs-mixed.json", "sqs-fifo.json"] {
            let text =
                std::fs::read_to_string(format!("{}/events/{fixture}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap();
            let lean: SqsBatch = serde_json::from_str(&text).unwrap();
            let full: SqsEvent = serde_json::from_str(&text).unwrap();
            let converted = SqsBatch::from(&full);
            assert_eq!(lean.records.len(), full.records.len());
            for (a, b) in lean.records.iter().zip(&converted.records) {
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
        let text = std::fs::read_to_string(format!(
            "{}/events/sqs-mixed.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let batch: SqsBatch = serde_json::from_str(&text).unwrap();
        let shown = format!("{batch:?} {:#?}", batch.records[0]);
        assert!(shown.contains("body_bytes") && shown.contains("message_id"));
        for r in &batch.records {
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
    fn null_or_missing_fields_are_none_and_errors_quote_nothing() {
        let b: SqsBatch = serde_json::from_str(
            r#"{"Records":[{"messageId":"m","body":null,"attributes":null,"x":{"y":[1,2]}},{}]}"#,
        )
        .unwrap();
        assert_eq!(b.records[0].message_id.as_deref(), Some("m"));
        assert_eq!(
            (b.records[0].body.as_deref(), b.records[0].sent_timestamp()),
            (None, None)
        );
        assert!(b.records[1].message_id.is_none());
        let err = serde_json::from_str::<SqsBatch>(
            r#"{"Records":[{"messageId":"m","body":{"ip":"10.1.2.3"}}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            !err.contains("10.1.2.3") && err.contains("not an SQS batch event"),
            "{err}"
        );
    }
}
