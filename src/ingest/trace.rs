//! A batch's spans, by OpenTelemetry's conventions for a batch received
//! from SQS (the semantic conventions' page on AWS Lambda): one CONSUMER
//! span `<queue> process` per batch, linked to each message's producer
//! trace (a message is never the parent: a batch has many producers), one
//! child span per message with its outcome, and child spans for the
//! database write and each SQS call the batch makes (docs/tracing.md).
//!
//! Without a tracer (no `OTEL_EXPORTER_OTLP_ENDPOINT`) every call returns
//! at its first branch: no span is built. (The headers are parsed with the
//! message either way: one string a message that carries one.)
//!
//! No span carries a value a producer sent but the message id SQS gave and
//! the trace ids of its trace header: no name, attribute or event holds a
//! body's field, a token, a key or a user id (tests/it/traces.rs).

use std::collections::HashSet;
use std::time::SystemTime;

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use opentelemetry_semantic_conventions::attribute as semconv;

use crate::ingest::event::{SqsBatch, SqsRecord};

/// The most links a batch span carries: X-Ray keeps at most 20 links a
/// segment. Past it, the batch span counts the traces left out
/// (`login_etl.links_dropped`); each message's own span still links its
/// producer's.
pub const MAX_BATCH_LINKS: usize = 20;

/// `messaging.system` for SQS.
const AWS_SQS: &str = "aws_sqs";

/// What the handler makes spans with: a tracer, or nothing (tracing off).
#[derive(Clone, Default)]
pub struct Tracer(Option<SdkTracer>);

impl Tracer {
    /// Spans made by `tracer` (the process's provider, src/telemetry.rs).
    pub fn new(tracer: SdkTracer) -> Self {
        Self(Some(tracer))
    }

    /// Starts the span of `batch`: a child of the invocation's span where
    /// there is one (the Lambda runtime's, as a `tracing` span), else a root
    /// (`login-etl poll`). Its links come with the message spans
    /// ([`BatchTrace::messages`]), once every record is read: reading them
    /// here would read the whole payload before the write begins.
    pub fn batch(&self, batch: &SqsBatch) -> BatchTrace {
        let Some(tracer) = &self.0 else {
            return BatchTrace::default();
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let parent = tracing::Span::current().context();
        let queue = queue_name(batch.records().find_map(|m| m.event_source_arn.as_deref()));
        let span = tracer
            .span_builder(format!("{queue} process"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(messaging("process", queue, batch.len()))
            .start_with_context(tracer, &parent);
        // A batch the sampler dropped makes no other span.
        if !span.span_context().is_sampled() {
            return BatchTrace::default();
        }
        BatchTrace {
            on: Some(On {
                tracer: tracer.clone(),
                cx: parent.with_span(span),
                queue: queue.to_owned(),
                started: SystemTime::now(),
            }),
        }
    }
}

/// The batch span, while the batch is handled; ended when dropped.
#[derive(Default)]
pub struct BatchTrace {
    on: Option<On>,
}

struct On {
    tracer: SdkTracer,
    /// The batch span's context: its children's parent.
    cx: Context,
    queue: String,
    /// When the batch began: each message span's start.
    started: SystemTime,
}

/// What became of one message, as its span says (`login_etl.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome<'a> {
    /// Its row is in the table (written now, or before: `duplicate`).
    Stored,
    /// Every row of the batch was there already (a redelivery).
    Duplicate,
    /// Its user is erased: handled, not stored.
    Erased,
    /// Not a login: rejected with this code; `dead_lettered` when its copy
    /// is in the DLQ (else it comes back, for SQS's redrive policy).
    Rejected {
        /// The rejection's code (docs/contract.md).
        code: &'a str,
        /// Whether the DLQ took its copy.
        dead_lettered: bool,
    },
    /// The database refused its row; `dead_lettered` when its copy is in
    /// the DLQ (on its last receive), else it comes back.
    Refused {
        /// Whether the DLQ took its copy.
        dead_lettered: bool,
    },
    /// In `batchItemFailures` with its visibility extended (a failed write).
    BackedOff,
    /// In `batchItemFailures`: SQS delivers it again.
    Redelivered,
}

impl MessageOutcome<'_> {
    fn name(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Duplicate => "duplicate",
            Self::Erased => "erased",
            Self::Rejected { .. } => "rejected",
            Self::Refused { .. } => "refused",
            Self::BackedOff => "backed_off",
            Self::Redelivered => "redelivered",
        }
    }
}

impl BatchTrace {
    /// Whether spans are made (the caller's outcomes are worth working out).
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// The span of the database write: `COPY` or `INSERT` into
    /// `user_logins`, its rows (a count, never a value).
    pub fn write(&self) -> ChildSpan {
        self.child(|on| {
            on.tracer
                .span_builder("write user_logins")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new(semconv::DB_SYSTEM_NAME, "postgresql"),
                    // The name before semantic conventions 1.30, which
                    // X-Ray and older backends still read.
                    KeyValue::new("db.system", "postgresql"),
                    KeyValue::new(semconv::DB_COLLECTION_NAME, "user_logins"),
                ])
        })
    }

    /// The span of sending `count` messages to the dead-letter queue named
    /// `dlq` (none when there are none: no call is made).
    pub fn dead_letter_send(&self, dlq: &str, count: usize) -> ChildSpan {
        if count == 0 {
            return ChildSpan(None);
        }
        self.child(|on| {
            on.tracer
                .span_builder(format!("{dlq} send"))
                .with_kind(SpanKind::Producer)
                // One call: a second `with_attributes` replaces the first.
                .with_attributes(messaging("send", dlq, count).into_iter().chain([
                    KeyValue::new("rpc.system", "aws-api"),
                    KeyValue::new("rpc.service", "SQS"),
                    KeyValue::new(semconv::RPC_METHOD, "SendMessageBatch"),
                ]))
        })
    }

    /// The span of extending `count` failed messages' visibility.
    pub fn visibility_change(&self, count: usize) -> ChildSpan {
        if count == 0 {
            return ChildSpan(None);
        }
        self.child(|on| {
            on.tracer
                .span_builder(format!("{} ChangeMessageVisibilityBatch", on.queue))
                .with_kind(SpanKind::Client)
                .with_attributes([
                    // The names X-Ray's exporter reads an AWS call by (SQS
                    // then shows as the function's downstream node).
                    KeyValue::new("rpc.system", "aws-api"),
                    KeyValue::new("rpc.service", "SQS"),
                    KeyValue::new(semconv::RPC_METHOD, "ChangeMessageVisibilityBatch"),
                    KeyValue::new(semconv::MESSAGING_BATCH_MESSAGE_COUNT, count as i64),
                ])
        })
    }

    fn child(
        &self,
        builder: impl FnOnce(&On) -> opentelemetry::trace::SpanBuilder,
    ) -> ChildSpan {
        ChildSpan(
            self.on
                .as_ref()
                .map(|on| builder(on).start_with_context(&on.tracer, &on.cx)),
        )
    }

    /// One span per message, from the batch's start to now: its id, its
    /// producer's trace as its one link, and what became of it; and the
    /// batch span's links, each producer's trace once, [`MAX_BATCH_LINKS`]
    /// at most (past them, `login_etl.links_dropped` counts the rest).
    pub fn messages<'a>(
        &self,
        batch: &SqsBatch,
        outcomes: impl IntoIterator<Item = (usize, &'a str, MessageOutcome<'a>)>,
    ) {
        let Some(on) = &self.on else {
            return;
        };
        let batch_span = on.cx.span();
        let (mut linked, mut dropped) = (HashSet::new(), 0_i64);
        let name = format!("{} process", on.queue);
        for (pos, id, outcome) in outcomes {
            let producer = batch.get(pos).and_then(producer_context);
            if let Some(producer) = &producer
                && linked.insert(producer.trace_id())
            {
                if linked.len() > MAX_BATCH_LINKS {
                    dropped += 1;
                } else {
                    batch_span.add_link(producer.clone(), Vec::new());
                }
            }
            // What the batch span says of them all (system, queue,
            // operation) it says once: a message span is most of the bytes
            // a batch exports.
            let mut attributes = vec![
                KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id.to_owned()),
                KeyValue::new("login_etl.outcome", outcome.name()),
            ];
            match outcome {
                MessageOutcome::Rejected { code, dead_lettered } => {
                    attributes.push(KeyValue::new("login_etl.rejection_code", code.to_owned()));
                    attributes.push(KeyValue::new("login_etl.dead_lettered", dead_lettered));
                }
                MessageOutcome::Refused { dead_lettered } => {
                    attributes.push(KeyValue::new("login_etl.dead_lettered", dead_lettered));
                }
                _ => {}
            }
            let links = producer.map(Link::with_context).into_iter().collect();
            let mut span = on
                .tracer
                .span_builder(name.clone())
                .with_kind(SpanKind::Consumer)
                .with_start_time(on.started)
                .with_links(links)
                .with_attributes(attributes)
                .start_with_context(&on.tracer, &on.cx);
            if matches!(outcome, MessageOutcome::Rejected { .. } | MessageOutcome::Refused { .. }) {
                span.set_status(Status::error(outcome.name()));
            }
            span.end();
        }
        if dropped > 0 {
            batch_span.set_attribute(KeyValue::new("login_etl.links_dropped", dropped));
        }
    }

    /// Ends the batch span with the batch's counts, or its failure's class.
    pub fn end(self, counts: &[(&'static str, i64)], failure: Option<&'static str>) {
        let Some(on) = self.on else {
            return;
        };
        let span = on.cx.span();
        let (attributes, status) = ending(counts, failure);
        span.set_attributes(attributes);
        if let Some(status) = status {
            span.set_status(status);
        }
        span.end();
    }
}

/// A child span of the batch, ended by [`ChildSpan::end`] or when dropped.
pub struct ChildSpan(Option<Span>);

impl ChildSpan {
    /// Ends the span of an SQS call that had `asked` entries and SQS took
    /// `taken`: failed (`error.type=sqs_not_all_taken`) when it took fewer.
    pub fn end_sent(self, asked: usize, taken: usize) {
        let failure = (taken < asked).then_some("sqs_not_all_taken");
        self.end(&[("login_etl.taken", taken as i64)], failure);
    }

    /// Ends the span with `attributes`, as failed with `failure`'s class.
    pub fn end(self, attributes: &[(&'static str, i64)], failure: Option<&'static str>) {
        self.end_named(None, attributes, failure);
    }

    /// As [`ChildSpan::end`], with the operation that ran
    /// (`db.operation.name`: `COPY` or `INSERT`).
    pub fn end_named(
        self,
        operation: Option<&'static str>,
        attributes: &[(&'static str, i64)],
        failure: Option<&'static str>,
    ) {
        let Some(mut span) = self.0 else {
            return;
        };
        if let Some(operation) = operation {
            span.set_attribute(KeyValue::new(semconv::DB_OPERATION_NAME, operation));
        }
        let (attributes, status) = ending(attributes, failure);
        span.set_attributes(attributes);
        if let Some(status) = status {
            span.set_status(status);
        }
        span.end();
    }
}

/// What a span ends with: its counts, and for a failure its class
/// (`error.type`) and an error status.
fn ending(
    counts: &[(&'static str, i64)],
    failure: Option<&'static str>,
) -> (Vec<KeyValue>, Option<Status>) {
    let mut attributes: Vec<KeyValue> = counts
        .iter()
        .map(|&(name, value)| KeyValue::new(name, value))
        .collect();
    attributes.extend(failure.map(|class| KeyValue::new(semconv::ERROR_TYPE, class)));
    (attributes, failure.map(Status::error))
}

/// The producer's trace a message carries: SQS's `AWSTraceHeader` (X-Ray's
/// form, read by X-Ray's own propagator), else a W3C `traceparent` message
/// attribute. A garbled header is no link, never an error. Only the ids and
/// flags are kept: the rest of a header (X-Ray's keeps every `key=value`
/// after `Sampled` as trace state) is what its producer chose to write.
fn producer_context(record: &SqsRecord) -> Option<SpanContext> {
    let xray = record
        .attributes
        .as_ref()
        .and_then(|a| a.aws_trace_header.as_deref())
        .and_then(opentelemetry_aws::trace::xray_propagator::span_context_from_str);
    let context = xray.or_else(|| {
        let traceparent = record
            .message_attributes
            .as_ref()
            .and_then(|a| a.traceparent.clone())?;
        use opentelemetry::propagation::TextMapPropagator as _;
        let carrier = std::collections::HashMap::from([("traceparent".to_owned(), traceparent)]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        Some(cx.span().span_context().clone())
    })?;
    (context.is_valid() && context.trace_id() != TraceId::INVALID).then(|| {
        SpanContext::new(
            context.trace_id(),
            context.span_id(),
            context.trace_flags(),
            true,
            TraceState::NONE,
        )
    })
}

/// What a span of `operation` (`process`, `send`) on the queue `queue`
/// says of `count` messages, by the messaging conventions.
fn messaging(operation: &'static str, queue: &str, count: usize) -> [KeyValue; 5] {
    [
        KeyValue::new(semconv::MESSAGING_SYSTEM, AWS_SQS),
        KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, operation),
        KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation),
        KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, queue.to_owned()),
        KeyValue::new(semconv::MESSAGING_BATCH_MESSAGE_COUNT, count as i64),
    ]
}

/// The queue's name: the last part of its ARN.
fn queue_name(arn: Option<&str>) -> &str {
    arn.and_then(|a| a.rsplit(':').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("sqs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::event::{RecordAttributes, SourceAttributes};

    fn record(header: Option<&str>, traceparent: Option<&str>) -> SqsRecord {
        SqsRecord {
            attributes: Some(RecordAttributes {
                aws_trace_header: header.map(str::to_owned),
                ..RecordAttributes::default()
            }),
            message_attributes: Some(SourceAttributes {
                traceparent: traceparent.map(str::to_owned),
                ..SourceAttributes::default()
            }),
            ..SqsRecord::default()
        }
    }

    #[test]
    fn a_producers_trace_from_either_header_and_none_from_a_garbled_one() {
        let xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
        let cx = producer_context(&record(Some(xray), None)).expect("X-Ray's header");
        // What a producer adds to its header is not kept.
        let more = format!("{xray};Self=alice@example.com");
        let kept = producer_context(&record(Some(&more), None)).unwrap();
        assert_eq!((kept.trace_id(), kept.trace_state().header()), (cx.trace_id(), String::new()));
        assert_eq!(cx.trace_id().to_string(), "5759e988bd862e3fe1be46a994272793");
        assert_eq!(cx.span_id().to_string(), "53995c3f42cd8ad8");
        let w3c = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = producer_context(&record(None, Some(w3c))).expect("a traceparent");
        assert_eq!(cx.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
        // X-Ray's header first, when a message has both.
        let cx = producer_context(&record(Some(xray), Some(w3c))).unwrap();
        assert_eq!(cx.trace_id().to_string(), "5759e988bd862e3fe1be46a994272793");
        for garbled in [
            "Root=1-zz;Parent=53995c3f42cd8ad8",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "garbage",
            "",
            "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8;Sampled=1",
        ] {
            assert_eq!(producer_context(&record(Some(garbled), None)), None, "{garbled}");
        }
        assert_eq!(producer_context(&record(None, Some("00-zz-zz-01"))), None);
        assert_eq!(producer_context(&SqsRecord::default()), None);
    }

    #[test]
    fn the_queues_name_is_its_arns_last_part() {
        assert_eq!(queue_name(Some("arn:aws:sqs:eu-west-1:123456789012:logins")), "logins");
        assert_eq!(queue_name(Some("arn:aws:sqs:eu-west-1:123456789012:")), "sqs");
        assert_eq!(queue_name(None), "sqs");
    }

    /// Keeps every span it is given.
    #[derive(Debug, Clone, Default)]
    struct KeptSpans(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanExporter for KeptSpans {
        async fn export(
            &self,
            batch: Vec<opentelemetry_sdk::trace::SpanData>,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn a_batch_links_each_trace_once_and_twenty_at_most() {
        let kept = KeptSpans::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let tracer = Tracer::new(opentelemetry::trace::TracerProvider::tracer(&provider, "test"));
        // 25 traces, the first sent three times: 27 messages.
        let header = |i: usize| format!("Root=1-5759e988-{i:024x};Parent=53995c3f42cd8ad8;Sampled=1");
        let records: Vec<SqsRecord> = (0..25)
            .chain([0, 0])
            .map(|i| record(Some(&header(i + 1)), None))
            .collect();
        let batch = SqsBatch::new(records);
        let trace = tracer.batch(&batch);
        let ids: Vec<String> = (0..batch.len()).map(|i| format!("m{i}")).collect();
        trace.messages(
            &batch,
            ids.iter().enumerate().map(|(i, id)| (i, id.as_str(), MessageOutcome::Stored)),
        );
        trace.dead_letter_send("logins-dlq", 2).end_sent(2, 1);
        trace.end(&[], None);
        let spans = kept.0.lock().unwrap().clone();
        // A send's span: the messaging names and the AWS call's, failed
        // when SQS took fewer.
        let send = spans.iter().find(|s| s.name == "logins-dlq send").expect("the send's span");
        let keys: Vec<&str> = send.attributes.iter().map(|a| a.key.as_str()).collect();
        for key in ["messaging.system", "messaging.destination.name", "rpc.system", "rpc.method"] {
            assert!(keys.contains(&key), "{key}: {keys:?}");
        }
        assert!(matches!(send.status, Status::Error { .. }));
        let batch_span = spans.iter().find(|s| s.name == "sqs process" && s.span_kind == SpanKind::Consumer && !s.attributes.iter().any(|a| a.key.as_str() == "messaging.message.id")).expect("the batch span");
        let linked: Vec<_> = batch_span.links.links.iter().map(|l| l.span_context.trace_id()).collect();
        assert_eq!(linked.len(), MAX_BATCH_LINKS);
        assert_eq!(linked.iter().collect::<HashSet<_>>().len(), MAX_BATCH_LINKS, "each trace once");
        let dropped = batch_span.attributes.iter().find(|a| a.key.as_str() == "login_etl.links_dropped");
        assert_eq!(dropped.map(|a| a.value.clone()), Some(opentelemetry::Value::I64(5)));
        // Every message's span links its own producer's, the 21st's too.
        let messages: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_span_id == batch_span.span_context.span_id() && s.name != "logins-dlq send")
            .collect();
        assert_eq!(messages.len(), 27);
        assert!(messages.iter().all(|m| m.links.links.len() == 1));
    }

    #[test]
    fn without_a_tracer_nothing_is_made() {
        let batch = SqsBatch::new(vec![record(Some("garbage"), None)]);
        let trace = Tracer::default().batch(&batch);
        assert!(!trace.is_on());
        assert!(trace.write().0.is_none());
        trace.end(&[], None);
    }
}
