//! Traces as a collector receives them: an OTLP/HTTP receiver of the
//! test's own on 127.0.0.1, the real binary pointed at it by
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, under the Lambda runtime (`cargo lambda
//! watch`) and as `login-etl poll` (moto's SQS returns `AWSTraceHeader`).
//! The batch processor's own timer is set to ten minutes: every span the
//! receiver gets was sent by the function's flush (after each invocation,
//! and at poll's exit).

use crate::common;
use crate::runtime_e2e::{invoke_path, start_watch_with};

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use http_body_util::BodyExt;
use login_etl::synth::{self, Options};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

/// Two producers' X-Ray headers, from different roots, and one garbled.
const ROOT_A: &str = "1-5759e988-bd862e3fe1be46a994272793";
const ROOT_B: &str = "1-6389d1f0-0123456789abcdef01234567";
const HEADERS: [&str; 3] = [
    "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
    "Root=1-6389d1f0-0123456789abcdef01234567;Parent=0011223344556677;Sampled=1",
    "Root=1-zz;Parent=;Sampled=\u{7f}",
];

/// The trace id an X-Ray root names, as OTLP carries it.
fn trace_id_of(root: &str) -> Vec<u8> {
    hex::decode(root.trim_start_matches("1-").replace('-', "")).unwrap()
}

/// What the receiver got: each request's path and body, in arrival order,
/// and when it answered the first.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Request>>>, Arc<Mutex<Option<SystemTime>>>);

/// A request's path and body.
type Request = (String, Vec<u8>);

impl Received {
    /// Every span, with the index of the request it came in.
    fn spans(&self) -> Vec<(usize, Span)> {
        let bodies = self.0.lock().unwrap().clone();
        let mut out = Vec::new();
        for (i, (path, body)) in bodies.iter().enumerate() {
            assert_eq!(path, "/v1/traces");
            let request = ExportTraceServiceRequest::decode(body.as_slice())
                .expect("an OTLP/HTTP protobuf body");
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    out.extend(scope.spans.into_iter().map(|s| (i, s)));
                }
            }
        }
        out
    }

    /// Every byte received, for the PII check.
    fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits (on what arrived, at most 60 s) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&[(usize, Span)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.spans()) {
            assert!(Instant::now() < deadline, "no {what} within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1: its endpoint, and what it got. It
/// answers the first request 2 s late (a slow collector), and
/// notes when it did.
async fn receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = Received::default();
    let kept = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let first = {
                                let mut all = kept.0.lock().unwrap();
                                all.push((path, body.to_vec()));
                                all.len() == 1
                            };
                            if first {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                *kept.1.lock().unwrap() = Some(SystemTime::now());
                            }
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (endpoint, received)
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(AnyValue::IntValue(i)) => Some(i),
        _ => None,
    }
}

/// A message span's outcome, rejection code and links' trace ids.
type Outcome = (String, Option<String>, Vec<Vec<u8>>);

fn is_batch(span: &Span) -> bool {
    span.kind == SpanKind::Consumer as i32 && text(span, "messaging.message.id").is_none()
}

/// Three messages: two logins with headers from two roots, and a message
/// that is no login with the garbled header (or, `all_logins`, a login).
fn traced_event(seed: u64, all_logins: bool) -> SqsEvent {
    let mut event = synth::event(&Options {
        count: 3,
        seed,
        ..Options::default()
    });
    for (m, header) in event.records.iter_mut().zip(HEADERS) {
        m.attributes.insert("AWSTraceHeader".into(), header.into());
    }
    // What a producer adds to its header (here its user's id) is never kept.
    let body: serde_json::Value =
        serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
    let user = body["user_id"].as_str().unwrap().to_owned();
    event.records[0].attributes.insert(
        "AWSTraceHeader".into(),
        format!("{};Self={user}", HEADERS[0]),
    );
    if !all_logins {
        event.records[2].body = Some("{\"user_id\": \"trunc".into());
    }
    event
}

/// The raw values of the event's bodies (ip, device id, user id), the
/// stored tokens and the masking key: none may be in a span.
async fn secrets_of(event: &SqsEvent, client: &tokio_postgres::Client) -> Vec<String> {
    let mut values = vec![TEST_KEY.to_owned()];
    for m in &event.records {
        if let Ok(body) = serde_json::from_str::<serde_json::Value>(m.body.as_deref().unwrap()) {
            for key in ["ip", "device_id", "user_id"] {
                if let Some(v) = body[key].as_str() {
                    values.push(v.to_owned());
                }
            }
        }
    }
    for row in client
        .query("SELECT masked_ip, masked_device_id FROM user_logins", &[])
        .await
        .unwrap()
    {
        values.push(row.get(0));
        values.push(row.get(1));
    }
    values
}

fn assert_no_secret(received: &Received, values: &[String]) {
    let bytes = received.bytes();
    assert!(!bytes.is_empty());
    let found = aho_corasick::AhoCorasick::new(values)
        .unwrap()
        .find(&bytes)
        .map(|m| m.pattern().as_usize());
    assert_eq!(
        found, None,
        "a raw ip, device id, user id, token or the key in an exported span (value redacted; its index in the list)"
    );
}

/// The parent of the batch span that is not `first`: its invocation's span.
fn second_batch_parent(batches: &[&(usize, Span)], first: &Span) -> Vec<u8> {
    let (_, second) = batches
        .iter()
        .find(|(_, s)| s.trace_id != first.trace_id)
        .unwrap();
    second.parent_span_id.clone()
}

/// A batch's spans under `batch`: its messages' outcomes by message id,
/// and the write.
fn children<'a>(spans: &'a [(usize, Span)], batch: &Span) -> Vec<&'a Span> {
    spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == batch.span_id && s.trace_id == batch.trace_id)
        .collect()
}

/// The Lambda function under `cargo lambda watch`: a batch of three gives
/// one batch span (the invocation's child) with two links, the X-Ray
/// roots; three message spans under it with their outcomes and one link
/// each where the header was good; the write span; no panic on the
/// garbled header; no value of the batch; and every span of an
/// invocation is received before any of the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs cargo-lambda; run by `make test`"]
async fn the_functions_spans_link_each_producer_and_arrive_before_the_next_invocation() {
    let db = TestDb::create().await;
    let (endpoint, received) = receiver().await;
    let port = closed_port();
    let watch = start_watch_with(
        &db.ingest_url().await,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000".into()),
            // Longer than the receiver's late answer to the first export.
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10000".into()),
        ],
    );
    let first = traced_event(78, false);
    let second = synth::event(&Options {
        count: 2,
        seed: 79,
        ..Options::default()
    });
    let dir = std::env::temp_dir();
    let mut files = Vec::new();
    for (name, event) in [("first", &first), ("second", &second)] {
        let path = dir.join(format!(
            "login-etl-traces-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, serde_json::to_vec(event).unwrap()).unwrap();
        files.push(path);
    }
    let answer = invoke_path(port, files[0].to_str().unwrap()).expect("the first batch");
    assert_eq!(
        answer["batchItemFailures"].as_array().unwrap().len(),
        1,
        "{answer}"
    );
    invoke_path(port, files[1].to_str().unwrap()).expect("the second batch");
    received
        .until("span of the second batch", |spans| {
            spans
                .iter()
                .any(|(_, s)| is_batch(s) && int(s, "messaging.batch.message_count") == Some(2))
        })
        .await;
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let spans = received.spans();
    let batches: Vec<&(usize, Span)> = spans.iter().filter(|(_, s)| is_batch(s)).collect();
    assert_eq!(batches.len(), 2, "one batch span per batch: {batches:?}");
    let (_, batch) = batches
        .iter()
        .find(|(_, s)| int(s, "messaging.batch.message_count") == Some(3))
        .expect("the first batch's span");
    assert_eq!(batch.name, "login-queue process");
    assert_eq!(text(batch, "messaging.system").as_deref(), Some("aws_sqs"));
    assert_eq!(
        text(batch, "messaging.operation.type").as_deref(),
        Some("process")
    );
    let linked: HashSet<Vec<u8>> = batch.links.iter().map(|l| l.trace_id.clone()).collect();
    assert_eq!(batch.links.len(), 2, "{:?}", batch.links);
    let states = spans
        .iter()
        .flat_map(|(_, s)| &s.links)
        .map(|l| &l.trace_state);
    assert!(states.clone().count() >= 4 && states.into_iter().all(String::is_empty));
    assert_eq!(
        linked,
        HashSet::from([trace_id_of(ROOT_A), trace_id_of(ROOT_B)])
    );
    // The invocation's span is the parent; no message is.
    let invocation = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.span_id == batch.parent_span_id)
        .expect("the batch span's parent, the invocation's span");
    assert_eq!(text(invocation, "faas.trigger").as_deref(), Some("pubsub"));
    assert_eq!(invocation.kind, SpanKind::Server as i32);
    assert!(!linked.contains(&batch.trace_id));

    let under = children(&spans, batch);
    let mut outcomes = BTreeMap::new();
    for s in under
        .iter()
        .filter(|s| text(s, "messaging.message.id").is_some())
    {
        let id = text(s, "messaging.message.id").unwrap();
        let links: Vec<Vec<u8>> = s.links.iter().map(|l| l.trace_id.clone()).collect();
        outcomes.insert(
            id,
            (
                text(s, "login_etl.outcome").unwrap(),
                text(s, "login_etl.rejection_code"),
                links,
            ),
        );
    }
    let expected: BTreeMap<String, Outcome> = first
        .records
        .iter()
        .zip([
            ("stored", None, vec![trace_id_of(ROOT_A)]),
            ("stored", None, vec![trace_id_of(ROOT_B)]),
            ("rejected", Some("invalid_json".to_owned()), vec![]),
        ])
        .map(|(m, (o, code, links))| (m.message_id.clone().unwrap(), (o.to_owned(), code, links)))
        .collect();
    assert_eq!(outcomes, expected);
    let write = under
        .iter()
        .find(|s| s.name == "write user_logins")
        .expect("the write's span");
    assert_eq!(write.kind, SpanKind::Client as i32);
    assert_eq!(text(write, "db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(text(write, "db.operation.name").as_deref(), Some("INSERT"));
    assert_eq!(int(write, "db.operation.batch.size"), Some(2));

    // Flushed before the next event was asked for: the second invocation
    // began after the (slow) answer to the first invocation's export, and
    // every span of the first came in a request before any of the second's.
    let answered = received
        .1
        .lock()
        .unwrap()
        .expect("the first export was answered");
    let answered = answered
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let second_parent = second_batch_parent(&batches, batch);
    let second_invocation = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.span_id == second_parent)
        .expect("the second invocation's span");
    assert!(
        second_invocation.start_time_unix_nano > answered,
        "the second invocation began {} ns before the first's spans were taken",
        answered.saturating_sub(second_invocation.start_time_unix_nano)
    );
    let (_, second_batch) = batches
        .iter()
        .find(|(_, s)| s.trace_id != batch.trace_id)
        .unwrap();
    let last_of_first = spans
        .iter()
        .filter(|(_, s)| s.trace_id == batch.trace_id)
        .map(|(i, _)| *i)
        .max();
    let first_of_second = spans
        .iter()
        .filter(|(_, s)| s.trace_id == second_batch.trace_id)
        .map(|(i, _)| *i)
        .min();
    assert!(
        last_of_first < first_of_second,
        "{last_of_first:?} {first_of_second:?}"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|(_, s)| s.trace_id == batch.trace_id)
            .count(),
        1 + 1 + 3 + 1
    );

    let client = db.client().await;
    assert_no_secret(&received, &secrets_of(&first, &client).await);
    let log = std::fs::read_to_string(&watch.log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    drop(watch);
}

/// `login-etl poll` against moto's SQS, which returns each message's
/// `AWSTraceHeader`: the same links, outcomes and write span, every span
/// received by the time the process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn polls_spans_link_each_producer_and_are_sent_before_it_exits() {
    use aws_sdk_sqs::types::{MessageSystemAttributeNameForSends, MessageSystemAttributeValue};
    let db = TestDb::create().await;
    let (endpoint, received) = receiver().await;
    let (_moto, moto_port) = common::moto::start_moto();
    let aws = format!("http://127.0.0.1:{moto_port}");
    let sqs = aws_sdk_sqs::Client::new(&common::moto::moto_sdk(&aws).await);
    let queue = sqs
        .create_queue()
        .queue_name("logins")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let event = traced_event(80, true);
    for (m, header) in event.records.iter().zip(HEADERS) {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(m.body.clone().unwrap())
            .message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                MessageSystemAttributeValue::builder()
                    .data_type("String")
                    .string_value(header)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let log =
        std::env::temp_dir().join(format!("login-etl-traces-poll-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.ingest_url().await)
        .env("MASKING_KEY", TEST_KEY)
        .env("AWS_ENDPOINT_URL", &aws)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "trace")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .args(["poll", "--queue-url", &queue])
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the binary runs");
    let client = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_rows(&client).await < 3 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "poll exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(Instant::now() < deadline, "poll wrote 3 rows within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "{output}");
    assert!(!output.contains("panicked"), "{output}");

    // Everything is here already: sent before the process exited.
    let spans = received.spans();
    let batches: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| is_batch(s))
        .collect();
    assert!(!batches.is_empty(), "{output}");
    let linked: HashSet<Vec<u8>> = batches
        .iter()
        .flat_map(|b| b.links.iter().map(|l| l.trace_id.clone()))
        .collect();
    assert_eq!(
        linked,
        HashSet::from([trace_id_of(ROOT_A), trace_id_of(ROOT_B)])
    );
    for b in &batches {
        // A root: poll has no invocation, and no message is a parent.
        assert!(b.parent_span_id.is_empty(), "{b:?}");
        assert_eq!(b.name, "logins process");
    }
    let mut stored = 0;
    let mut writes = 0;
    for b in &batches {
        for s in children(&spans, b) {
            if text(s, "messaging.message.id").is_some() {
                assert_eq!(text(s, "login_etl.outcome").as_deref(), Some("stored"));
                stored += 1;
            } else if s.name == "write user_logins" {
                writes += 1;
            }
        }
    }
    assert_eq!(stored, 3, "{spans:?}");
    assert_eq!(writes, batches.len());
    assert_no_secret(&received, &secrets_of(&event, &client).await);
}
