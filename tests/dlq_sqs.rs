//! Rejected records straight to the dead-letter queue: against moto's SQS
//! (what lands in the DLQ, with which attributes, standard and FIFO) and
//! against a scripted SQS endpoint (one refused entry, a denied call).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::moto::start_moto;
use common::*;
use login_etl::BatchHandler;
use login_etl::dlq::DeadLetterQueue;
use login_etl::synth::{self, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client with the function's own HTTP and timeout settings, aimed at `endpoint`.
async fn sqs_client(endpoint: &str) -> Client {
    let shared = login_etl::secrets::sdk_config().await;
    let config = aws_sdk_sqs::config::Builder::from(&shared)
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .build();
    Client::from_conf(config)
}

async fn handler_with_dlq(db: &TestDb, client: Client, url: &str) -> BatchHandler {
    handler(db)
        .await
        .with_dead_letter_queue(DeadLetterQueue::new(client, url.to_owned()))
}

/// Each record's id and the generator's label (`insert` or `reject:<code>`).
fn labels(event: &SqsEvent) -> BTreeMap<String, String> {
    expectations(event).into_iter().collect()
}

/// Ids of records SQS cannot store a copy of (an empty body): they stay
/// failures and SQS's own redrive moves them.
fn empty_bodies(event: &SqsEvent) -> BTreeSet<String> {
    event
        .records
        .iter()
        .filter(|m| m.body.as_deref().unwrap_or("").is_empty())
        .map(|m| m.message_id.clone().unwrap())
        .collect()
}

/// Every message in `url`, with its attributes (drained).
async fn drain(client: &Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    loop {
        let got = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in &messages {
            client
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        out.extend(messages);
    }
}

fn attr(m: &aws_sdk_sqs::types::Message, name: &str) -> String {
    m.message_attributes().unwrap()[name]
        .string_value()
        .unwrap()
        .to_owned()
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn rejected_records_land_in_the_dlq_after_one_receive_with_their_reason() {
    let (_moto, port) = start_moto();
    let client = sqs_client(&format!("http://127.0.0.1:{port}")).await;

    // Standard queue.
    let dlq = client
        .create_queue()
        .queue_name("login-dlq")
        .send()
        .await
        .unwrap();
    let dlq_url = dlq.queue_url().unwrap().to_owned();
    let db = TestDb::create().await;
    let h = handler_with_dlq(&db, client.clone(), &dlq_url).await;
    let mut event = synth::event(&Options {
        count: 60,
        invalid_every: 7,
        seed: 91,
        ..Options::default()
    });
    for m in &mut event.records {
        m.attributes
            .insert("ApproximateReceiveCount".into(), "1".into());
    }
    let want = labels(&event);
    let empty = empty_bodies(&event);
    let rejected: BTreeSet<&String> = want
        .iter()
        .filter(|(id, l)| l.starts_with("reject:") && !empty.contains(*id))
        .map(|(id, _)| id)
        .collect();
    assert!(rejected.len() >= 7 && !empty.is_empty());
    let (resp, summary) = h.handle_with_summary(&event).await.unwrap();
    assert_eq!(
        failures(&resp).into_iter().collect::<BTreeSet<_>>(),
        empty,
        "every rejected record is handled after one receive, but empty bodies"
    );
    assert_eq!(summary.sent_to_dlq, rejected.len());
    let copies = drain(&client, &dlq_url).await;
    assert_eq!(copies.len(), rejected.len(), "one copy each");
    let bodies: BTreeMap<String, String> = event
        .records
        .iter()
        .map(|m| (m.message_id.clone().unwrap(), m.body.clone().unwrap()))
        .collect();
    for copy in &copies {
        let source = attr(copy, "source_message_id");
        assert!(rejected.contains(&source), "{source} was rejected");
        assert_eq!(copy.body().unwrap(), bodies[&source], "the body, unchanged");
        assert_eq!(
            format!("reject:{}", attr(copy, "rejection_code")),
            want[&source],
            "the reason is the generator's"
        );
        assert_eq!(attr(copy, "receive_count"), "1");
        assert_eq!(
            attr(copy, "source_queue"),
            event.records[0].event_source_arn.clone().unwrap()
        );
        assert!(attr(copy, "rejected_at").ends_with('Z'));
    }
    let valid: BTreeSet<String> = want
        .iter()
        .filter(|(_, l)| *l == "insert")
        .map(|(id, _)| id.clone())
        .collect();
    let in_table: BTreeSet<String> = message_ids_in_table(&db.client().await)
        .await
        .into_iter()
        .collect();
    assert_eq!(in_table, valid);

    // FIFO: the copies keep their message group, deduplicated by source id;
    // records after a rejected one go on, since it is finished.
    let dlq = client
        .create_queue()
        .queue_name("login-dlq.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap();
    let fifo_dlq_url = dlq.queue_url().unwrap().to_owned();
    let db = TestDb::create().await;
    let h = handler_with_dlq(&db, client.clone(), &fifo_dlq_url).await;
    let mut event = synth::event(&Options {
        count: 10,
        invalid_every: 3,
        fifo: true,
        seed: 92,
        ..Options::default()
    });
    for (i, m) in event.records.iter_mut().enumerate() {
        m.attributes
            .insert("MessageGroupId".into(), format!("group-{}", i % 2));
    }
    for m in &mut event.records {
        if m.body.as_deref() == Some("") {
            m.body = Some("not json".into());
        }
    }
    let want = labels(&event);
    let resp = h.handle(&event).await.unwrap();
    assert!(resp.batch_item_failures.is_empty(), "{:?}", failures(&resp));
    let copies = drain(&client, &fifo_dlq_url).await;
    let groups: BTreeMap<String, String> = event
        .records
        .iter()
        .map(|m| {
            (
                m.message_id.clone().unwrap(),
                m.attributes["MessageGroupId"].clone(),
            )
        })
        .collect();
    assert_eq!(
        copies.len(),
        want.values().filter(|l| l.starts_with("reject:")).count()
    );
    for copy in &copies {
        let source = attr(copy, "source_message_id");
        let system = copy.attributes().unwrap();
        assert_eq!(
            system[&MessageSystemAttributeName::MessageGroupId],
            groups[&source]
        );
        assert_eq!(
            system[&MessageSystemAttributeName::MessageDeduplicationId],
            source
        );
    }
    let valid: BTreeSet<String> = want
        .iter()
        .filter(|(_, l)| *l == "insert")
        .map(|(id, _)| id.clone())
        .collect();
    let in_table: BTreeSet<String> = message_ids_in_table(&db.client().await)
        .await
        .into_iter()
        .collect();
    assert_eq!(in_table, valid, "rows after a rejected record are written");
}

/// An SQS endpoint that refuses the entries whose body contains `FAIL-ME`
/// (or, with `deny_all`, the whole call, as IAM does) and accepts the rest.
async fn scripted_sqs(deny_all: bool) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 65536];
                    let (head_end, length) = loop {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                        if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            break (end + 4, length);
                        }
                    };
                    while req.len() < head_end + length {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&req[head_end..head_end + length]).unwrap();
                    let (status, answer) = if deny_all {
                        (
                            "400 Bad Request",
                            serde_json::json!({"__type": "com.amazonaws.sqs#AccessDenied", "message": "not authorized to perform: sqs:SendMessage"}),
                        )
                    } else {
                        let (mut ok, mut failed) = (Vec::new(), Vec::new());
                        for e in body["Entries"].as_array().unwrap() {
                            let id = e["Id"].as_str().unwrap();
                            if e["MessageBody"].as_str().unwrap().contains("FAIL-ME") {
                                failed.push(serde_json::json!({"Id": id, "SenderFault": true, "Code": "InvalidMessageContents", "Message": "refused"}));
                            } else {
                                ok.push(serde_json::json!({"Id": id, "MessageId": format!("copy-{id}"), "MD5OfMessageBody": "0"}));
                            }
                        }
                        (
                            "200 OK",
                            serde_json::json!({"Successful": ok, "Failed": failed}),
                        )
                    };
                    let text = answer.to_string();
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: 1\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_refused_entry_or_a_denied_call_keeps_exactly_those_records_as_failures() {
    let db = TestDb::create().await;
    let mut event = synth::event(&Options {
        count: 40,
        invalid_every: 4,
        seed: 93,
        ..Options::default()
    });
    // One rejected record that the queue will refuse.
    let refused_at = 13;
    event.records[refused_at].body = Some(r#"{"foo": "FAIL-ME"}"#.into());
    let refused_id = event.records[refused_at].message_id.clone().unwrap();
    let empty = empty_bodies(&event);
    let rejected: BTreeSet<String> = labels(&event)
        .into_iter()
        .filter(|(_, l)| l.starts_with("reject:"))
        .map(|(id, _)| id)
        .chain([refused_id.clone()])
        .collect();
    assert!(rejected.len() > 10, "more than one SendMessageBatch call");

    let port = scripted_sqs(false).await;
    let url = format!("http://127.0.0.1:{port}/000000000000/login-dlq");
    let h = handler_with_dlq(
        &db,
        sqs_client(&format!("http://127.0.0.1:{port}")).await,
        &url,
    )
    .await;
    let (resp, summary) = h.handle_with_summary(&event).await.unwrap();
    let mut want: BTreeSet<String> = empty.clone();
    want.insert(refused_id.clone());
    assert_eq!(
        failures(&resp).into_iter().collect::<BTreeSet<_>>(),
        want,
        "exactly the refused entry (and empty bodies, which are never sent)"
    );
    assert_eq!(summary.sent_to_dlq, rejected.len() - want.len());

    let port = scripted_sqs(true).await;
    let url = format!("http://127.0.0.1:{port}/000000000000/login-dlq");
    let db = TestDb::create().await;
    let h = handler_with_dlq(
        &db,
        sqs_client(&format!("http://127.0.0.1:{port}")).await,
        &url,
    )
    .await;
    let (resp, summary) = h.handle_with_summary(&event).await.unwrap();
    let reported: BTreeSet<String> = failures(&resp).into_iter().collect();
    assert_eq!(
        reported, rejected,
        "a denied call leaves every rejected record to SQS"
    );
    assert_eq!(summary.sent_to_dlq, 0);
}
