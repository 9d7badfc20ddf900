//! Rejected records straight to the dead-letter queue: against moto's SQS
//! (what lands in the DLQ, with which attributes, standard and FIFO) and
//! against a scripted SQS endpoint (one refused entry, a denied call).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::moto::start_moto;
use common::sqs::{scripted_sqs, sqs_client};
use common::*;
use login_etl::ingest::dlq::DeadLetterQueue;
use login_etl::synth::{self, Options};
use login_etl::{BatchHandler, Deadline, Outcome, SqsBatch};

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
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
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
    let sent: BTreeMap<String, String> = event
        .records
        .iter()
        .map(|m| {
            (
                m.message_id.clone().unwrap(),
                m.attributes["SentTimestamp"].clone(),
            )
        })
        .collect();
    for copy in &copies {
        let source = attr(copy, "source_message_id");
        assert!(rejected.contains(&source), "{source} was rejected");
        assert_eq!(copy.body().unwrap(), bodies[&source], "the body, unchanged");
        // What keys a redrive of the copy to the original's row.
        assert_eq!(attr(copy, "source_sent_timestamp"), sent[&source]);
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
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
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
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
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
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let reported: BTreeSet<String> = failures(&resp).into_iter().collect();
    assert_eq!(
        reported, rejected,
        "a denied call leaves every rejected record to SQS"
    );
    assert_eq!(summary.sent_to_dlq, 0);
}

/// A FIFO batch in which the queue refuses the DLQ copy of one rejected
/// record: that record holds its group, so it and every later record are
/// reported, and no row after it is written. A rejected record before it,
/// whose copy was accepted, is finished (neither reported nor holding
/// anything).
async fn a_refused_dlq_copy_holds_the_fifo_batch(count: usize) {
    let port = scripted_sqs(false).await;
    let url = format!("http://127.0.0.1:{port}/000000000000/login-dlq.fifo");
    let db = TestDb::create().await;
    let h = handler_with_dlq(
        &db,
        sqs_client(&format!("http://127.0.0.1:{port}")).await,
        &url,
    )
    .await;
    let mut event = synth::event(&Options {
        count,
        fifo: true,
        seed: 94,
        ..Options::default()
    });
    let (sent, held) = (3, count / 2);
    event.records[sent].body = Some("not json".into());
    event.records[held].body = Some(r#"{"foo": "FAIL-ME"}"#.into());
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(
        failures(&resp) == ids[held..],
        "{count} records: not exactly the held record (position {held}) and every later one are reported, but {} records",
        failures(&resp).len()
    );
    assert_eq!(summary.sent_to_dlq, 1, "{count} records: the accepted copy");
    let position: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let in_table = message_ids_in_table(&db.client().await).await;
    let after = in_table
        .iter()
        .filter(|id| position[id.as_str()] > held)
        .count();
    assert_eq!(
        after, 0,
        "{count} records: rows after the held record (position {held}) were written"
    );
    let before: BTreeSet<usize> = in_table.iter().map(|id| position[id.as_str()]).collect();
    assert_eq!(
        before,
        (0..held).filter(|&i| i != sent).collect(),
        "{count} records: every valid row before the held record, once"
    );
    assert_eq!(summary.inserted as usize, held - 1, "{count} records");
}

/// See [`a_refused_dlq_copy_holds_the_fifo_batch`]: a batch the size FIFO
/// event sources deliver at most (10), and one of 30; the INSERT path.
#[tokio::test]
async fn a_refused_dlq_copy_in_a_fifo_batch_holds_that_record_and_every_later_one() {
    a_refused_dlq_copy_holds_the_fifo_batch(10).await;
    a_refused_dlq_copy_holds_the_fifo_batch(30).await;
}

/// See [`a_refused_dlq_copy_holds_the_fifo_batch`]: a batch large enough
/// for the COPY fast path, into which every valid row was already streamed
/// when the refusal came; the COPY must not commit the rows held back.
#[tokio::test]
async fn a_refused_dlq_copy_holds_a_fifo_batch_that_was_streaming_into_a_copy() {
    a_refused_dlq_copy_holds_the_fifo_batch(login_etl::ingest::sink::COPY_MIN_ROWS + 100).await;
}
