//! The source queue as the consumer sees it: its attributes, long-poll
//! receives gathered into a batch, heartbeat extensions, and deletes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::warn;

use crate::ingest::backoff::{QueueUrlError, queue_url};
use crate::ingest::event::{RecordAttributes, SOURCE_ATTRIBUTES, SourceAttributes, SqsBatch, SqsRecord};
use crate::ingest::sqs_batch;

/// Messages per `ReceiveMessage`, and entries per batch call (the SQS limits).
pub const MAX_PER_CALL: usize = sqs_batch::MAX_ENTRIES;
/// The long poll of a receive, in seconds (the SQS maximum).
pub const WAIT_SECONDS: u32 = 20;
/// Bound on one delete or visibility call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An SQS call that failed; names the call, the queue and what to check.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {queue} failed: {cause}; {hint}")]
pub struct QueueError {
    /// The SQS call.
    pub op: &'static str,
    /// The queue URL.
    pub queue: String,
    /// What the SDK reported (its error code and message, no message bodies).
    pub cause: String,
    /// What to check.
    pub hint: &'static str,
}

/// What the consumer reads once from the queue's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue's ARN (what the handler sees as `eventSourceARN`).
    pub arn: String,
    /// Its default visibility timeout, in seconds.
    pub visibility_timeout: u32,
    /// Whether it is a FIFO queue.
    pub fifo: bool,
    /// The ARN of its dead-letter queue, from its `RedrivePolicy`.
    pub dead_letter_arn: Option<String>,
    /// Its `maxReceiveCount`, from the same policy.
    pub max_receive_count: Option<u32>,
    /// Its access policy (`Policy`), as SQS returns it: doctor reads it.
    pub policy: Option<String>,
}

impl QueueInfo {
    /// From `GetQueueAttributes`' map (attribute name to text).
    pub fn from_attributes(attrs: &HashMap<String, String>) -> Result<Self, String> {
        let arn = attrs
            .get("QueueArn")
            .cloned()
            .ok_or("the queue has no QueueArn attribute")?;
        let visibility_timeout = attrs
            .get("VisibilityTimeout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let (dead_letter_arn, max_receive_count) = match attrs.get("RedrivePolicy") {
            Some(policy) => parse_redrive_policy(policy)?,
            None => (None, None),
        };
        Ok(Self {
            fifo: arn.ends_with(".fifo") || attrs.get("FifoQueue").is_some_and(|v| v == "true"),
            arn,
            visibility_timeout,
            dead_letter_arn,
            max_receive_count,
            policy: attrs.get("Policy").cloned(),
        })
    }
}

/// `{"deadLetterTargetArn": "...", "maxReceiveCount": 5}` (the count as a
/// number or as text: SQS returns text, CloudFormation writes numbers).
pub fn parse_redrive_policy(policy: &str) -> Result<(Option<String>, Option<u32>), String> {
    let v: serde_json::Value = serde_json::from_str(policy)
        .map_err(|_| "the queue's RedrivePolicy is not JSON".to_string())?;
    let arn = v
        .get("deadLetterTargetArn")
        .and_then(|a| a.as_str())
        .map(str::to_owned);
    let count = match v.get("maxReceiveCount") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok((arn, count))
}

/// One SQS message as the handler reads it.
pub fn to_record(m: &Message, queue_arn: &str) -> SqsRecord {
    let attr =
        |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
    let message_attr = |name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_owned)
    };
    SqsRecord {
        message_id: m.message_id().map(str::to_owned),
        body: m.body().map(str::to_owned),
        attributes: Some(RecordAttributes {
            sent_timestamp: attr(MessageSystemAttributeName::SentTimestamp),
            approximate_receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount),
            message_group_id: attr(MessageSystemAttributeName::MessageGroupId),
            sender_id: attr(MessageSystemAttributeName::SenderId),
            aws_trace_header: attr(MessageSystemAttributeName::AwsTraceHeader),
        }),
        event_source_arn: Some(queue_arn.to_owned()),
        receipt_handle: m.receipt_handle().map(str::to_owned),
        message_attributes: Some(SourceAttributes::from_named(message_attr)),
    }
}

/// An SQS client whose timeouts let a long poll finish: the function's
/// AWS configuration bounds every call to a few seconds, which would cut
/// each empty 20 s receive short.
pub fn long_poll_client(aws: &aws_config::SdkConfig) -> Client {
    use aws_sdk_sqs::config::timeout::TimeoutConfig;
    let attempt = Duration::from_secs(u64::from(WAIT_SECONDS) + 10);
    let config = aws_sdk_sqs::config::Builder::from(aws)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(attempt)
                .operation_timeout(attempt + Duration::from_secs(5))
                .build(),
        )
        .build();
    Client::from_conf(config)
}

fn cause<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    format!(
        "{} ({})",
        e.code().unwrap_or("no error code"),
        DisplayErrorContext(e)
    )
}

/// When SQS granted (or renewed) a lease on messages: somewhere between the
/// sending of the call that granted it and its answer. SQS starts a
/// message's visibility timeout when it hands the message out, so a lease of
/// `v` runs out no sooner than `sent + v` and no later than `answered + v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    /// When the granting call was sent.
    pub sent: Instant,
    /// When its answer arrived.
    pub answered: Instant,
}

/// A gathered batch, and when its earliest lease was granted.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The messages (none: the long poll ended empty, or `stop`).
    pub batch: SqsBatch,
    /// The receive that returned the batch's first messages (None: empty).
    pub granted: Option<Granted>,
}

/// The source queue.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    url: String,
    info: QueueInfo,
    /// The visibility the consumer receives with and the heartbeat renews.
    visibility_timeout: u32,
}

impl Queue {
    /// Reads the queue's attributes (`sqs:GetQueueAttributes`): the first
    /// call, so a wrong URL or a missing permission stops the start.
    pub async fn open(
        client: Client,
        url: String,
        visibility_timeout: Option<u32>,
    ) -> Result<Self, QueueError> {
        let out = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|e| QueueError {
                op: "GetQueueAttributes",
                queue: url.clone(),
                cause: cause(&e),
                hint: "check --queue-url (the queue URL, not its name or ARN), the region and sqs:GetQueueAttributes",
            })?;
        let attrs: HashMap<String, String> = out
            .attributes()
            .map(|a| {
                a.iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let info = QueueInfo::from_attributes(&attrs).map_err(|reason| QueueError {
            op: "GetQueueAttributes",
            queue: url.clone(),
            cause: reason,
            hint: "check that the URL names an SQS queue",
        })?;
        Ok(Self {
            visibility_timeout: visibility_timeout.unwrap_or(info.visibility_timeout).max(1),
            client,
            url,
            info,
        })
    }

    /// What its attributes said.
    pub fn info(&self) -> &QueueInfo {
        &self.info
    }

    /// The visibility timeout of a receive, in seconds.
    pub fn visibility_timeout(&self) -> u32 {
        self.visibility_timeout
    }

    /// The URL of the queue's dead-letter queue (from its `RedrivePolicy`,
    /// with `sqs:GetQueueUrl`), if it has one.
    pub async fn dead_letter_url(&self) -> Result<Option<String>, QueueError> {
        let Some(arn) = &self.info.dead_letter_arn else {
            return Ok(None);
        };
        let err = |cause: String| QueueError {
            op: "GetQueueUrl",
            queue: arn.clone(),
            cause,
            hint: "set DLQ_URL to the dead-letter queue's URL, or allow sqs:GetQueueUrl on it",
        };
        queue_url(&self.client, arn).await.map_err(|e| match e {
            QueueUrlError::NotAQueueArn => err("not an SQS queue ARN".into()),
            QueueUrlError::Sqs(e) => err(cause(&e)),
        })
    }

    /// One `ReceiveMessage` of up to `max` messages, waiting up to `wait`
    /// seconds; with when their lease was granted.
    async fn receive(
        &self,
        max: usize,
        wait: u32,
    ) -> Result<(Vec<SqsRecord>, Granted), QueueError> {
        let sent = Instant::now();
        let mut call = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, MAX_PER_CALL) as i32)
            .wait_time_seconds(wait.min(WAIT_SECONDS) as i32)
            .visibility_timeout(self.visibility_timeout as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::SenderId)
            // What a copy redriven from the DLQ carries of its original.
            .set_message_attribute_names(Some(SOURCE_ATTRIBUTES.map(str::to_owned).to_vec()));
        if crate::telemetry::is_on() {
            // The producer's trace: a link of the batch's span.
            call = call.message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader);
        }
        let call = call.send();
        // The SDK's own timeouts do not cover a long poll that hangs.
        let limit = Duration::from_secs(u64::from(wait) + 10);
        let out = tokio::time::timeout(limit, call)
            .await
            .map_err(|_| QueueError {
                op: "ReceiveMessage",
                queue: self.url.clone(),
                cause: format!("no answer within {} s", limit.as_secs()),
                hint: "check the network path to SQS (VPC endpoint or NAT)",
            })?
            .map_err(|e| QueueError {
                op: "ReceiveMessage",
                queue: self.url.clone(),
                cause: cause(&e),
                hint: "check sqs:ReceiveMessage on the queue (and kms:Decrypt if it is encrypted with a customer-managed key)",
            })?;
        let granted = Granted {
            sent,
            answered: Instant::now(),
        };
        let records = out
            .messages()
            .iter()
            .map(|m| to_record(m, &self.info.arn))
            .collect();
        Ok((records, granted))
    }

    /// A batch as the event-source mapping gathers one: a long poll (ended
    /// early by `stop`: then an empty batch), then, while the batch has
    /// fewer than `max` messages and `window` has not passed, more receives.
    /// Once it holds messages nothing cancels it: they are handled.
    pub async fn gather(
        &self,
        max: usize,
        window: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Gathered, QueueError> {
        let (mut records, granted) = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return Ok(Gathered::default()),
            got = self.receive(max, WAIT_SECONDS) => got?,
        };
        let until = Instant::now() + window;
        while !records.is_empty() && records.len() < max {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let wait = left.as_secs().min(u64::from(WAIT_SECONDS)) as u32;
            match self.receive(max - records.len(), wait).await {
                Ok((more, _)) if more.is_empty() && wait == 0 => break,
                // Leased after the first ones: those are renewed first.
                Ok((more, _)) => records.extend(more),
                // What is gathered is handled; the error shows again on the next receive.
                Err(e) => {
                    warn!(error = %e, "receiving more messages for a batch failed; handling the batch gathered so far");
                    break;
                }
            }
        }
        Ok(Gathered {
            granted: (!records.is_empty()).then_some(granted),
            batch: SqsBatch::new(records),
        })
    }

    /// Sets the visibility of messages to `seconds` (the heartbeat); returns
    /// how many SQS confirmed.
    pub async fn extend(&self, handles: &[&str], seconds: u32) -> usize {
        let mut calls = JoinSet::new();
        for chunk in handles.chunks(MAX_PER_CALL) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(sqs_batch::entry_id(i))
                        .receipt_handle(*h)
                        .visibility_timeout(seconds as i32)
                        .build()
                        .expect("an id and a handle are set")
                })
                .collect();
            let n = chunk.len();
            let call = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send();
            calls.spawn(async move { (n, tokio::time::timeout(CALL_TIMEOUT, call).await) });
        }
        let mut confirmed = 0;
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((n, Ok(Ok(out)))) => {
                    confirmed += sqs_batch::confirmed(
                        &out,
                        n,
                        "SQS refused a heartbeat extension; that message may be redelivered while its batch is in flight (its row is still written once)",
                    )
                    .len();
                }
                Ok((_, Ok(Err(e)))) => {
                    warn!(error = %cause(&e), "heartbeat extension failed (check sqs:ChangeMessageVisibility); retried at the next beat")
                }
                _ => warn!("heartbeat extension timed out; retried at the next beat"),
            }
        }
        confirmed
    }

    /// Deletes handled messages; returns (deleted, not deleted). A message
    /// not deleted is redelivered after its visibility timeout and counted
    /// as a duplicate then: its row is not written twice.
    pub async fn delete(&self, handles: &[&str]) -> (usize, usize) {
        let mut calls = JoinSet::new();
        for chunk in handles.chunks(MAX_PER_CALL) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(sqs_batch::entry_id(i))
                        .receipt_handle(*h)
                        .build()
                        .expect("an id and a handle are set")
                })
                .collect();
            let n = chunk.len();
            let call = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send();
            calls.spawn(async move { (n, tokio::time::timeout(CALL_TIMEOUT, call).await) });
        }
        let (mut deleted, mut failed) = (0, 0);
        while let Some(done) = calls.join_next().await {
            match done {
                Ok((n, Ok(Ok(out)))) => {
                    let taken = sqs_batch::confirmed(
                        &out,
                        n,
                        "SQS refused a delete; the message is redelivered and counted as a duplicate",
                    )
                    .len();
                    deleted += taken;
                    failed += n - taken;
                }
                Ok((n, Ok(Err(e)))) => {
                    failed += n;
                    warn!(messages = n, error = %cause(&e), "deleting handled messages failed (check sqs:DeleteMessage); they are redelivered and counted as duplicates");
                }
                Ok((n, Err(_))) => {
                    failed += n;
                    warn!(
                        messages = n,
                        "deleting handled messages timed out; they are redelivered and counted as duplicates"
                    );
                }
                Err(_) => {}
            }
        }
        (deleted, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::backoff::queue_name_and_account;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn queue_attributes_give_the_arn_visibility_fifo_and_dead_letter_queue() {
        let info = QueueInfo::from_attributes(&attrs(&[
            ("QueueArn", "arn:aws:sqs:us-east-1:123456789012:logins.fifo"),
            ("VisibilityTimeout", "45"),
            (
                "RedrivePolicy",
                r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:123456789012:logins-dlq.fifo","maxReceiveCount":"6"}"#,
            ),
        ]))
        .unwrap();
        assert_eq!(info.visibility_timeout, 45);
        assert!(info.fifo);
        assert_eq!(
            info.dead_letter_arn.as_deref(),
            Some("arn:aws:sqs:us-east-1:123456789012:logins-dlq.fifo")
        );
        assert_eq!(info.max_receive_count, Some(6));
        let plain =
            QueueInfo::from_attributes(&attrs(&[("QueueArn", "arn:aws:sqs:eu-west-1:1:logins")]))
                .unwrap();
        assert_eq!(
            (plain.fifo, plain.visibility_timeout, plain.dead_letter_arn),
            (false, 30, None)
        );
        assert!(QueueInfo::from_attributes(&attrs(&[])).is_err());
        assert!(
            QueueInfo::from_attributes(&attrs(&[
                ("QueueArn", "arn:aws:sqs:r:1:q"),
                ("RedrivePolicy", "not json")
            ]))
            .is_err()
        );
    }

    #[test]
    fn a_redrive_policy_count_may_be_a_number_or_text() {
        assert_eq!(
            parse_redrive_policy(r#"{"deadLetterTargetArn":"a","maxReceiveCount":5}"#).unwrap(),
            (Some("a".into()), Some(5))
        );
        assert_eq!(parse_redrive_policy("{}").unwrap(), (None, None));
        assert_eq!(
            queue_name_and_account("arn:aws:sqs:us-east-1:000000000000:dlq"),
            Some(("dlq", "000000000000"))
        );
        assert_eq!(queue_name_and_account("dlq"), None);
    }

    #[test]
    fn a_received_message_becomes_the_record_the_handler_reads() {
        let m = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh-1")
            .body("{}")
            .attributes(MessageSystemAttributeName::SentTimestamp, "1700000000000")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g")
            .build();
        let r = to_record(&m, "arn:aws:sqs:r:1:q.fifo");
        assert_eq!(r.message_id.as_deref(), Some("m-1"));
        assert_eq!(r.receipt_handle.as_deref(), Some("rh-1"));
        assert_eq!(r.body.as_deref(), Some("{}"));
        assert_eq!(
            r.event_source_arn.as_deref(),
            Some("arn:aws:sqs:r:1:q.fifo")
        );
        let a = r.attributes.unwrap();
        assert_eq!(a.sent_timestamp.as_deref(), Some("1700000000000"));
        assert_eq!(a.approximate_receive_count.as_deref(), Some("3"));
        assert_eq!(a.message_group_id.as_deref(), Some("g"));
    }
}
