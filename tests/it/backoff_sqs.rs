//! The per-message backoff against moto's SQS (real receipt handles and
//! visibility): during a database outage the function reports its valid
//! records and hides each one for its backoff instead of failing the
//! invocation, while its rejects still go to the DLQ; a visibility change
//! SQS refuses falls back to plain redelivery with nothing lost; a row the
//! database keeps refusing reaches the DLQ as `refused.<SQLSTATE>` on exactly
//! its `REFUSED_MAX_RECEIVES`-th receive. One sequential test: it sets
//! process-wide AWS environment variables.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::moto::start_moto;
use common::*;
use login_etl::SqsBatch;
use login_etl::ingest::event::{RecordAttributes, SqsRecord};
use login_etl::ingest::metrics::Metrics;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, Outcome};
use serde_json::Value;

fn set_env(vars: &[(&str, &str)]) {
    common::set_process_env(vars);
}

async fn queue(
    sqs: &Client,
    name: &str,
    attrs: &[(QueueAttributeName, String)],
) -> (String, String) {
    let mut req = sqs.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), v.clone());
    }
    let url = req.send().await.unwrap().queue_url.unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    (url, arn)
}

/// Receives every message of the queue once, each hidden for
/// `visibility` seconds only, as the event-source mapping hands them over.
/// A message seen again (its visibility ran out while the others were
/// received: a loaded machine) keeps only its latest receive, whose receipt
/// handle is the one SQS honours.
async fn receive_batch(sqs: &Client, url: &str, arn: &str, n: usize, visibility: i32) -> SqsBatch {
    let mut records: Vec<SqsRecord> = Vec::new();
    for _ in 0..50 {
        if records.len() >= n {
            break;
        }
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            records.retain(|r| r.message_id != m.message_id);
            let attrs = m.attributes.clone().unwrap_or_default();
            let get = |k: MessageSystemAttributeName| attrs.get(&k).cloned();
            records.push(SqsRecord {
                message_id: m.message_id.clone(),
                body: m.body.clone(),
                attributes: Some(RecordAttributes {
                    sent_timestamp: get(MessageSystemAttributeName::SentTimestamp),
                    approximate_receive_count: get(
                        MessageSystemAttributeName::ApproximateReceiveCount,
                    ),
                    message_group_id: None,
                    sender_id: None,
                    aws_trace_header: None,
                }),
                event_source_arn: Some(arn.to_owned()),
                receipt_handle: m.receipt_handle.clone(),
                message_attributes: None,
            });
        }
    }
    assert_eq!(records.len(), n, "received every message once");
    SqsBatch::new(records)
}

async fn visible(sqs: &Client, url: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        for m in out.messages.unwrap_or_default() {
            seen.insert(m.message_id.unwrap());
        }
    }
    seen
}

async fn drain(sqs: &Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    common::sqs::receive_all(sqs, url, None).await
}

fn labels_of(
    bodies: &[String],
    event: &aws_lambda_events::event::sqs::SqsEvent,
) -> BTreeMap<String, String> {
    // body -> generator label (the received message ids are moto's own).
    event
        .records
        .iter()
        .zip(expectations(event))
        .map(|(m, (_, label))| (m.body.clone().unwrap(), label))
        .filter(|(b, _)| bodies.contains(b))
        .collect()
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn an_outage_backs_off_the_valid_records_and_refused_rows_reach_the_dlq_on_their_last_receive()
 {
    let (_moto, port) = start_moto();
    let endpoint = format!("http://127.0.0.1:{port}");
    set_env(&[
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let sqs = Client::new(&login_etl::secrets::sdk_config().await);
    let (dlq_url, dlq_arn) = queue(&sqs, "backoff-dlq", &[]).await;
    let redrive = format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"50"}}"#);
    let (url, arn) = queue(
        &sqs,
        "backoff-logins",
        &[(QueueAttributeName::RedrivePolicy, redrive)],
    )
    .await;
    let event = synth::event(&Options {
        count: 24,
        invalid_every: 6,
        seed: 501,
        ..Options::default()
    });
    let bodies: Vec<String> = event
        .records
        .iter()
        .map(|m| m.body.clone().unwrap())
        .collect();
    for body in &bodies {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let labels = labels_of(&bodies, &event);
    let valid: BTreeSet<&String> = labels
        .iter()
        .filter(|(_, l)| l.starts_with("insert"))
        .map(|(b, _)| b)
        .collect();
    let invalid = bodies.len() - valid.len();

    // 1. PostgreSQL is down: a failed write, backed off message by message.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let down = format!("postgres://login_etl_ingest@127.0.0.1:{}/x", closed_port());
    let h = handler_with(&[
        ("DATABASE_URL", &down),
        ("MASKING_KEY", TEST_KEY),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ("DLQ_URL", &dlq_url),
        ("SOURCE_QUEUE_URL", &url),
        ("BACKOFF_BASE_SECONDS", "30"),
        ("BACKOFF_MAX_SECONDS", "60"),
    ])
    .await
    .with_metrics(
        Metrics::new("LoginEtl", "login-etl", "fn")
            .with_output(move |l| sink.lock().unwrap().push(l.to_owned())),
    );
    let batch = receive_batch(&sqs, &url, &arn, bodies.len(), 1).await;
    let (resp, summary) = h
        .handle(&batch, Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .expect("an outage is no invocation error when the records can be backed off");
    let failed: BTreeSet<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    let dead = drain(&sqs, &dlq_url).await;
    // A copy's body is masked: it names its original by source_message_id.
    let dead_ids: BTreeSet<String> = dead
        .iter()
        .map(|m| {
            m.message_attributes().unwrap()["source_message_id"]
                .string_value()
                .unwrap()
                .to_owned()
        })
        .collect();
    let valid_ids: BTreeSet<String> = batch
        .records()
        .filter(|m| valid.contains(m.body.as_ref().unwrap()))
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    assert!(dead_ids.is_disjoint(&valid_ids), "nothing valid in the DLQ");
    // The rejects are not held hostage: every one in the DLQ at once.
    assert_eq!(summary.sent_to_dlq, dead.len());
    assert_eq!(
        dead_ids.len(),
        invalid,
        "{} of {invalid} rejects in the DLQ",
        dead.len()
    );
    assert_eq!(failed, valid_ids, "the valid records are reported");
    let expected = valid_ids;
    assert_eq!(summary.failure, Some("database_unavailable"));
    assert_eq!(
        (summary.backed_off, summary.visibility_change_failed),
        (expected.len(), 0)
    );
    // Received with a 1 s visibility: without the backoff they would be
    // back once a message received after them with the same 1 s is (a
    // control in a queue of its own, on moto's clock: no sleep).
    let (control_url, control_arn) = queue(&sqs, "backoff-control", &[]).await;
    sqs.send_message()
        .queue_url(&control_url)
        .message_body("control")
        .send()
        .await
        .unwrap();
    receive_batch(&sqs, &control_url, &control_arn, 1, 1).await;
    let (q, control) = (&sqs, &control_url);
    wait_until("the control's 1 s visibility ended", || async move {
        !visible(q, control).await.is_empty()
    })
    .await;
    // (The rejects sent to the DLQ are visible: the event-source mapping
    // deletes them, as they are not reported.)
    assert!(
        visible(&sqs, &url).await.is_disjoint(&expected),
        "every failed record rests for its backoff"
    );
    let docs: Vec<Value> = lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs[0]["BatchFailed"], 1);
    assert_eq!(docs[0]["InvocationFailed"], 0);
    assert_eq!(docs[0]["RecordsBackedOff"], expected.len());
    assert_eq!(docs[0]["VisibilityChangesFailed"], 0);
    assert_eq!(docs[0]["BatchItemFailures"], expected.len());
    assert_eq!(docs[0]["SentToDlq"], dead.len());
    assert!(
        docs.iter()
            .any(|d| d["failure_class"] == "database_unavailable" && d["BatchFailed"] == 1)
    );

    // 2. SQS refuses the visibility change (a queue that does not exist, as
    // a denied call does): plain redelivery, every valid record still reported.
    let refusing = handler_with(&[
        ("DATABASE_URL", &down),
        ("MASKING_KEY", TEST_KEY),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        (
            "SOURCE_QUEUE_URL",
            &format!("{endpoint}/123456789012/no-such-queue"),
        ),
        ("BACKOFF_BASE_SECONDS", "30"),
    ])
    .await;
    let (other_url, other_arn) = queue(&sqs, "backoff-other", &[]).await;
    for body in bodies.iter().take(6) {
        sqs.send_message()
            .queue_url(&other_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    let small = receive_batch(&sqs, &other_url, &other_arn, 6, 1).await;
    let (resp, summary) = refusing
        .handle(&small, Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let reported = resp.batch_item_failures.len();
    let small_valid = small
        .records()
        .filter(|m| valid.contains(m.body.as_ref().unwrap()))
        .count();
    // No DLQ here: rejects are reported too, as before.
    assert_eq!(reported, small.len(), "nothing lost: all reported");
    assert_eq!(
        (summary.backed_off, summary.visibility_change_failed),
        (0, reported)
    );
    assert!(small_valid > 0);
    let (q, other) = (&sqs, &other_url);
    wait_until(
        "all 6 redelivered after the queue's visibility",
        || async move { visible(q, other).await.len() == 6 },
    )
    .await;

    // 3. A row the database refuses goes to the DLQ on its 3rd receive, as refused.23514.
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let one = synth::event(&Options {
        count: 5,
        seed: 502,
        ..Options::default()
    });
    let user: Value = serde_json::from_str(one.records[2].body.as_deref().unwrap()).unwrap();
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT not_this_user CHECK (coalesce(user_id_text, user_id::text) <> '{}')",
            user["user_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let h = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", TEST_KEY),
        ("DLQ_URL", &dlq_url),
        ("REFUSED_MAX_RECEIVES", "3"),
    ])
    .await;
    let bad_id = one.records[2].message_id.clone().unwrap();
    for receive in 1..=3 {
        let mut batch = SqsBatch::from(&one);
        for r in batch.records_mut() {
            r.attributes.as_mut().unwrap().approximate_receive_count = Some(receive.to_string());
        }
        let (resp, summary) = h
            .handle(&batch, Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        let failed: Vec<String> = resp
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        let dead = drain(&sqs, &dlq_url).await;
        if receive < 3 {
            assert_eq!(
                failed,
                std::slice::from_ref(&bad_id),
                "receive {receive}: retried"
            );
            assert!(dead.is_empty(), "receive {receive}: not yet in the DLQ");
            assert_eq!(summary.refused_to_dlq, 0);
        } else {
            assert!(failed.is_empty(), "handled on the last receive: {failed:?}");
            assert_eq!(summary.refused_to_dlq, 1);
            assert_eq!(dead.len(), 1);
            let attrs = dead[0].message_attributes.as_ref().unwrap();
            assert_eq!(
                attrs["rejection_code"].string_value(),
                Some("refused.23514")
            );
            assert_eq!(
                attrs["source_message_id"].string_value(),
                Some(bad_id.as_str())
            );
            assert_eq!(attrs["receive_count"].string_value(), Some("3"));
        }
    }
    assert_eq!(count_rows(&db.client().await).await, 4);

    // 4. FIFO: the held tail is backed off together, by its highest receive
    // count, and every record of it is reported (order kept). A capturing
    // SQS endpoint records the visibility changes.
    let (capture_port, changes) = common::sqs::capturing_sqs().await;
    let capture_url = format!("http://127.0.0.1:{capture_port}/123456789012/logins.fifo");
    let fifo = handler_with(&[
        ("DATABASE_URL", &down),
        ("MASKING_KEY", TEST_KEY),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
    ])
    .await
    .with_backoff(
        login_etl::config::backoff::Schedule { base: 30, max: 900 },
        login_etl::ingest::backoff::Visibility::new(
            common::sqs::sqs_client(&format!("http://127.0.0.1:{capture_port}")).await,
            Some(capture_url),
        ),
    );
    let mut group = SqsBatch::from(&synth::event(&Options {
        count: 8,
        fifo: true,
        seed: 503,
        ..Options::default()
    }));
    for (i, r) in group.records_mut().enumerate() {
        r.attributes.as_mut().unwrap().approximate_receive_count = Some((i % 4 + 1).to_string());
    }
    let (resp, summary) = fifo
        .handle(&group, Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let failed: Vec<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    let ids: Vec<String> = group
        .records()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    assert_eq!(failed, ids, "the whole tail, in order");
    assert_eq!(summary.backed_off, 8);
    let entries: Vec<Value> = changes
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b["Entries"].as_array().unwrap().clone())
        .collect();
    assert_eq!(entries.len(), 8);
    let waits: BTreeSet<i64> = entries
        .iter()
        .map(|e| e["VisibilityTimeout"].as_i64().unwrap())
        .collect();
    assert_eq!(waits.len(), 1, "one wait for the whole tail: {waits:?}");
    let wait = *waits.iter().next().unwrap();
    // By the highest receive count (4): a ceiling of 240 s, at least 120 s.
    assert!((120..=240).contains(&wait), "{wait}");

    // 5. The write fails before it begins (no schema: refused for good) on a
    // COPY-sized batch: every record is still reported and backed off,
    // none is lost (none reported done without a commit).
    let empty = TestDb::create().await;
    let bare = empty.bare_role_url().await;
    let unready = handler_with(&[("DATABASE_URL", &bare), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_backoff(
            login_etl::config::backoff::Schedule { base: 30, max: 900 },
            login_etl::ingest::backoff::Visibility::new(
                common::sqs::sqs_client(&format!("http://127.0.0.1:{capture_port}")).await,
                Some(format!(
                    "http://127.0.0.1:{capture_port}/123456789012/logins"
                )),
            ),
        );
    let big = synth::event(&Options {
        count: 600,
        invalid_every: 9,
        seed: 504,
        ..Options::default()
    });
    let (resp, summary) = unready
        .handle(&SqsBatch::from(&big), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let reported: BTreeSet<String> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    let all: BTreeSet<String> = big
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    assert_eq!(reported, all, "nothing written, so everything reported");
    assert_eq!(summary.failure, Some("schema_incomplete"));
    assert!(
        summary.rejected.values().sum::<usize>() > 0,
        "the records were still validated"
    );
}
