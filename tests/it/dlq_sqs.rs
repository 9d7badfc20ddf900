//! Rejected records straight to the dead-letter queue: against moto's SQS
//! (what lands in the DLQ, with which attributes, standard and FIFO) and
//! against a scripted SQS endpoint (one refused entry, a denied call).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::moto::start_moto;
use common::sqs::{scripted_sqs, sqs_client};
use common::*;
use login_etl::ingest::dlq::DeadLetterQueue;
use login_etl::ingest::dlq::masked_body::masked_body;
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

/// Every message in `url`, with its attributes (drained).
async fn drain(client: &Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let messages = common::sqs::receive_all(client, url, Some(60)).await;
    for m in &messages {
        client
            .delete_message()
            .queue_url(url)
            .receipt_handle(m.receipt_handle().unwrap())
            .send()
            .await
            .unwrap();
    }
    messages
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
    let rejected: BTreeSet<&String> = want
        .iter()
        .filter(|(_, l)| l.starts_with("reject:"))
        .map(|(id, _)| id)
        .collect();
    let empty = event
        .records
        .iter()
        .filter(|m| m.body.as_deref() == Some(""))
        .count();
    assert!(rejected.len() >= 7 && empty > 0);
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(
        failures(&resp),
        Vec::<String>::new(),
        "every rejected record is handled after one receive, empty bodies too (their copy says what they were)"
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
        // Masked (no raw ip or device id), and without a sealer, no original.
        assert_eq!(
            copy.body().unwrap(),
            masked_body(&bodies[&source], &common::keys::test_masker()),
            "the body, masked"
        );
        assert!(
            !copy
                .message_attributes()
                .unwrap()
                .contains_key("sealed_body")
        );
        // What keys a redrive of the copy to the original's row, signed.
        assert_eq!(attr(copy, "source_sent_timestamp"), sent[&source]);
        assert!(common::keys::test_masker().verifies_redrive(
            &source,
            &sent[&source],
            &bodies[&source],
            &attr(copy, "source_signature")
        ));
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
        .filter(|(_, l)| l.starts_with("insert"))
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
        .filter(|(_, l)| l.starts_with("insert"))
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
    event.records[refused_at].body = Some(r#"{"device_type": "FAIL_ME"}"#.into());
    let refused_id = event.records[refused_at].message_id.clone().unwrap();
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
    let want = BTreeSet::from([refused_id.clone()]);
    assert_eq!(
        failures(&resp).into_iter().collect::<BTreeSet<_>>(),
        want,
        "exactly the refused entry"
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
    event.records[held].body = Some(r#"{"device_type": "FAIL_ME"}"#.into());
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

/// Every message in `url`, left in the queue (hidden for a minute, then
/// shown again at once).
async fn peek(client: &Client, url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let out = common::sqs::receive_all(client, url, Some(60)).await;
    for m in &out {
        client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(m.receipt_handle().unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    out
}

/// The DLQ's copies hold no raw ip or device id: masked bodies, the
/// originals sealed under a data key of the DLQ's own KMS context, redrive
/// keys signed. `dlq-redrive` (dry run, then for real) unseals the
/// originals and sends them back: a row the database refused lands on its
/// original's key and day once the database takes it, and a second redrive
/// of it is a duplicate; invalid ones come back to the DLQ under the same
/// key. A producer's forged redrive key is ignored, not obeyed.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn copies_hold_no_pii_and_dlq_redrive_sends_the_originals_back_to_their_rows() {
    use login_etl::ingest::redrive::{RedriveOptions, redrive};
    use login_etl::privacy::dead_letter::{Sealer, Unsealer};
    use login_etl::privacy::vault::DataKey;

    let (_moto, port) = start_moto();
    let sdk = common::moto::moto_sdk(&format!("http://127.0.0.1:{port}")).await;
    let (sqs, kms) = (Client::new(&sdk), aws_sdk_kms::Client::new(&sdk));
    let queue = |name: &'static str| {
        let sqs = sqs.clone();
        async move {
            let url = sqs.create_queue().queue_name(name).send().await.unwrap();
            url.queue_url().unwrap().to_owned()
        }
    };
    let (source_url, dlq_url) = (queue("logins").await, queue("logins-dlq").await);
    let key = kms.create_key().send().await.unwrap();
    let key = key.key_metadata().unwrap().arn().unwrap().to_owned();
    let db = TestDb::create().await;
    let dlq = DeadLetterQueue::new(sqs.clone(), dlq_url.clone())
        .with_sealer(Sealer::generate(&kms, &key).await.unwrap());
    let h = handler(&db)
        .await
        .with_dead_letter_queue(dlq)
        .with_refused_max_receives(1);
    // The database refuses one user's rows for now (a CHECK the ingest
    // role cannot drop): those valid records go to the DLQ as refused.
    let admin = db.client().await;
    admin
        .batch_execute(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT not_yet CHECK (coalesce(user_id_text, user_id::text) <> 'held-back')",
        )
        .await
        .unwrap();
    let mut event = synth::event(&Options {
        count: 40,
        invalid_every: 5,
        seed: 97,
        ..Options::default()
    });
    let valid: Vec<usize> = (0..event.records.len())
        .filter(|&i| expectations(&event)[i].1.starts_with("insert"))
        .collect();
    let held = &valid[..3];
    for &i in held {
        let m = &mut event.records[i];
        let mut body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["user_id"] = "held-back".into();
        m.body = Some(body.to_string());
    }
    let ts = |i: usize| event.records[i].attributes["SentTimestamp"].clone();
    let id = |i: usize| event.records[i].message_id.clone().unwrap();
    let (_, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(summary.refused_to_dlq, held.len());
    let copies = peek(&sqs, &dlq_url).await;
    assert_eq!(copies.len(), summary.sent_to_dlq + held.len());

    // What anyone allowed to read the DLQ sees: no ip, no device id.
    let masker = common::keys::test_masker();
    let originals: BTreeMap<String, (String, String)> = event
        .records
        .iter()
        .map(|m| {
            (
                m.message_id.clone().unwrap(),
                (
                    m.body.clone().unwrap(),
                    m.attributes["SentTimestamp"].clone(),
                ),
            )
        })
        .collect();
    let mut sealed = 0;
    for copy in &copies {
        let source = attr(copy, "source_message_id");
        let (body, sent) = &originals[&source];
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(body) {
            for f in ["ip", "device_id"] {
                let Some(v) = fields
                    .get(f)
                    .and_then(|v| v.as_str())
                    .filter(|v| v.trim().len() > 3)
                else {
                    continue;
                };
                let v = v.trim();
                assert!(
                    !copy.body().unwrap().contains(v),
                    "{f} of {source} in the copy's body"
                );
                for (name, a) in copy.message_attributes().unwrap() {
                    assert!(
                        !a.string_value().unwrap_or("").contains(v),
                        "{f} of {source} in {name}"
                    );
                }
            }
        }
        assert!(masker.verifies_redrive(&source, sent, body, &attr(copy, "source_signature")));
        if !body.is_empty() {
            sealed += 1;
            // The vault's context does not open the DLQ's data keys (nor,
            // by the key policy, does the reveal role's grant).
            let wrapped = base64_decode(&attr(copy, "sealed_key"));
            assert!(DataKey::unwrap(&kms, wrapped, &key).await.is_err());
        }
    }
    assert!(sealed >= held.len() + 3);

    // A copy that comes back as it is (SQS moved it, or someone sent it on)
    // is rejected again, and its next copy carries the same original and
    // key: the masked body is never sealed over the original.
    let again = copies
        .iter()
        .find(|c| {
            !attr(c, "rejection_code").starts_with("refused.")
                && c.message_attributes().unwrap().contains_key("sealed_body")
        })
        .unwrap();
    let arn = "arn:aws:sqs:us-east-1:123456789012:logins";
    let mut moved = login_etl::poll::queue::to_record(again, arn);
    moved.message_id = Some("moved-back".into());
    moved.attributes.as_mut().unwrap().sent_timestamp =
        Some(chrono::Utc::now().timestamp_millis().to_string());
    let summary = h
        .handle(&SqsBatch::new(vec![moved]), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!(summary.sent_to_dlq, 1);
    let next = drain(&sqs, &dlq_url)
        .await
        .into_iter()
        .find(|c| attr(c, "source_message_id") == attr(again, "source_message_id"))
        .expect("the moved copy's next copy names the same original");
    for name in [
        "sealed_body",
        "sealed_key",
        "source_sent_timestamp",
        "source_signature",
    ] {
        assert_eq!(
            attr(&next, name),
            attr(again, name),
            "{name} carried as it was"
        );
    }
    // (drain took every copy: the first ones go back for the runs below.)
    for c in copies.iter() {
        let mut send = sqs
            .send_message()
            .queue_url(&dlq_url)
            .message_body(c.body().unwrap());
        for (k, v) in c.message_attributes().unwrap() {
            send = send.message_attributes(k, v.clone());
        }
        send.send().await.unwrap();
    }

    // Dry run: counts, moves nothing.
    let options = |dry_run| RedriveOptions {
        dlq_url: dlq_url.clone(),
        to_url: source_url.clone(),
        dry_run,
        max: None,
    };
    let mut unsealer = Unsealer::new(kms.clone(), vec![key.clone()]);
    let dry = redrive(&sqs, Some(&mut unsealer), None, &options(true), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(dry.received as usize, copies.len());
    assert_eq!(dry.redriven as usize, sealed);
    assert_eq!(
        dry.by_rejection_code.values().sum::<u64>() as usize,
        copies.len()
    );
    assert_eq!(
        peek(&sqs, &source_url).await.len(),
        0,
        "a dry run sends nothing"
    );
    assert_eq!(
        peek(&sqs, &dlq_url).await.len(),
        copies.len(),
        "nor deletes"
    );

    // For real, once the database takes the held rows.
    admin
        .batch_execute("ALTER TABLE user_logins_rows DROP CONSTRAINT not_yet")
        .await
        .unwrap();
    let run = redrive(
        &sqs,
        Some(&mut unsealer),
        None,
        &options(false),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(run.redriven as usize, sealed);
    assert_eq!(run.unsealed as usize, sealed);
    let left = peek(&sqs, &dlq_url).await;
    assert_eq!(
        left.len(),
        copies.len() - sealed,
        "only the empty bodies stay"
    );
    let redriven = drain(&sqs, &source_url).await;
    assert_eq!(redriven.len(), sealed);
    let arn = "arn:aws:sqs:us-east-1:123456789012:logins";
    let batch = |messages: &[aws_sdk_sqs::types::Message]| {
        SqsBatch::new(
            messages
                .iter()
                .map(|m| login_etl::poll::queue::to_record(m, arn))
                .collect(),
        )
    };
    let summary_of = |b: SqsBatch| {
        let h = &h;
        async move {
            h.handle(&b, Deadline::NONE)
                .await
                .map(Outcome::into_parts)
                .unwrap()
                .1
        }
    };
    let rows_before = count_rows(&admin).await;
    let summary = summary_of(batch(&redriven)).await;
    assert_eq!(
        summary.inserted as usize,
        held.len(),
        "the held rows, now taken"
    );
    assert_eq!(count_rows(&admin).await, rows_before + held.len() as i64);
    for &i in held {
        let row = admin
            .query_one(
                "SELECT (extract(epoch FROM sent_at) * 1000)::bigint::text FROM user_logins WHERE message_id = $1",
                &[&id(i)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), ts(i), "the original's key and day");
    }
    // The invalid ones are back in the DLQ under their original ids.
    let again: BTreeSet<String> = drain(&sqs, &dlq_url)
        .await
        .iter()
        .map(|c| attr(c, "source_message_id"))
        .collect();
    let rejected: BTreeSet<String> = copies
        .iter()
        .filter(|c| !attr(c, "rejection_code").starts_with("refused."))
        .map(|c| attr(c, "source_message_id"))
        .collect();
    assert_eq!(again, rejected);
    // The same originals redriven twice: duplicates, not new rows.
    let summary = summary_of(batch(&redriven)).await;
    assert_eq!(
        (summary.inserted, summary.duplicates as usize),
        (0, held.len())
    );
    drain(&sqs, &dlq_url).await;

    // A producer claims an existing row's key: its own row all the same.
    let forged = &redriven
        .iter()
        .find(|m| attr(m, "source_message_id") == id(held[0]))
        .unwrap();
    let mut claim = (*forged).clone();
    let mut attributes = claim.message_attributes.clone().unwrap();
    attributes.insert(
        "source_signature".into(),
        aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(masker.redrive_signature(
                "someone-else",
                &ts(held[0]),
                forged.body().unwrap(),
            ))
            .build()
            .unwrap(),
    );
    claim.message_attributes = Some(attributes);
    claim.message_id = Some("a-new-message".into());
    let summary = summary_of(batch(&[claim])).await;
    assert_eq!(
        summary.inserted, 1,
        "keyed by its own id, not dropped as a duplicate"
    );
    assert_eq!(
        message_ids_in_table(&admin)
            .await
            .iter()
            .filter(|m| *m == "a-new-message")
            .count(),
        1
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// A moto of its own with a source queue, its DLQ and a KMS key.
struct Queues {
    _moto: common::moto::Moto,
    sqs: Client,
    kms: aws_sdk_kms::Client,
    source_url: String,
    dlq_url: String,
    key: String,
}

async fn queues_and_key() -> Queues {
    let (_moto, port) = start_moto();
    let sdk = common::moto::moto_sdk(&format!("http://127.0.0.1:{port}")).await;
    let (sqs, kms) = (Client::new(&sdk), aws_sdk_kms::Client::new(&sdk));
    let mut urls = Vec::new();
    for name in ["logins", "logins-dlq"] {
        let out = sqs.create_queue().queue_name(name).send().await.unwrap();
        urls.push(out.queue_url().unwrap().to_owned());
    }
    let key = kms.create_key().send().await.unwrap();
    let key = key.key_metadata().unwrap().arn().unwrap().to_owned();
    let dlq_url = urls.pop().unwrap();
    Queues {
        _moto,
        sqs,
        kms,
        source_url: urls.pop().unwrap(),
        dlq_url,
        key,
    }
}

/// A batch through `h`, which must answer: its summary.
async fn summary_of(
    h: &BatchHandler,
    records: Vec<login_etl::ingest::event::SqsRecord>,
) -> login_etl::BatchSummary {
    let (_, summary) = h
        .handle(&SqsBatch::new(records), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    summary
}

/// A clean login of `user` from `ip` on the device `device` (`null`: none).
fn login_body(user: &str, ip: &str, device: serde_json::Value) -> String {
    serde_json::json!({"user_id": user, "app_version": "1.0.0", "device_type": "ios",
        "ip": ip, "locale": "EN", "device_id": device})
    .to_string()
}

/// One SQS record as a producer's message arrives, received once.
fn arrived(id: &str, body: &str, sent_ms: i64) -> login_etl::ingest::event::SqsRecord {
    login_etl::ingest::event::SqsRecord {
        message_id: Some(id.to_owned()),
        body: Some(body.to_owned()),
        attributes: Some(login_etl::ingest::event::RecordAttributes {
            sent_timestamp: Some(sent_ms.to_string()),
            approximate_receive_count: Some("1".into()),
            message_group_id: None,
            sender_id: None,
            aws_trace_header: None,
        }),
        event_source_arn: Some("arn:aws:sqs:us-east-1:123456789012:logins".into()),
        ..Default::default()
    }
}

/// Copies that kept no original (a masking-only stack before 0.2.0, or
/// `poll` without DLQ_KMS_KEY_ID): `dlq-redrive --rebuild` sends each login
/// a copy holds back, sealed by the DLQ operator under the dead-letter key,
/// and says which it cannot (a copy that holds no login); the function
/// stores each with the copy's tokens, on its original's row key, with the
/// defect `message.rebuilt_from_copy`. A rebuilt login altered on the way
/// (or made by a producer) is rejected; one whose seal cannot be checked
/// (no dead-letter key here) waits and comes back, its tokens kept.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn copies_without_their_original_come_back_rebuilt_and_only_sealed_ones_are_stored() {
    use login_etl::ingest::redrive::{Rebuilder, RedriveOptions, redrive};
    use login_etl::privacy::dead_letter::rebuilt::RebuiltVerifier;

    let Queues {
        _moto,
        sqs,
        kms,
        source_url,
        dlq_url,
        key,
    } = queues_and_key().await;
    let db = TestDb::create().await;
    // As before 0.2.0 in the masking-only profile: strict, no dead-letter key.
    let strict = handler(&db)
        .await
        .with_contract(login_etl::contract::Contract::STRICT)
        .with_dead_letter_queue(DeadLetterQueue::new(sqs.clone(), dlq_url.clone()));
    // An hour ago: a rebuilt login's original is at most 28 days old.
    let sent = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let logins = [
        (
            "beta",
            r#"{"user_id":"u-beta","app_version":"2.3.0-beta1","device_type":"ios","ip":"10.0.0.1","locale":"RU","device_id":"dev-a"}"#,
            Some("10.0.0.1"),
            Some("dev-a"),
        ),
        (
            "port",
            r#"{"user_id":"u-port","app_version":"2.3.0","device_type":"android","ip":"10.0.0.2:443","locale":null,"device_id":"dev-b"}"#,
            Some("10.0.0.2"),
            Some("dev-b"),
        ),
        (
            "web",
            r#"{"user_id":"u-web","app_version":"2.3.0","device_type":"web","ip":"10.0.0.3","locale":"EN","device_id":null}"#,
            Some("10.0.0.3"),
            None,
        ),
    ];
    let mut records: Vec<_> = logins
        .iter()
        .enumerate()
        .map(|(i, (id, body, ..))| arrived(id, body, sent + i as i64))
        .collect();
    records.push(arrived("not-a-login", "[1, 2]", sent));
    let (_, summary) = strict
        .handle(&SqsBatch::new(records), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(
        summary.sent_to_dlq, 4,
        "each rejected under the strict contract"
    );
    assert!(
        peek(&sqs, &dlq_url)
            .await
            .iter()
            .all(|c| !c.message_attributes().unwrap().contains_key("sealed_body")),
        "no original kept"
    );

    // Without --rebuild they stay; with it, each login comes back.
    let options = RedriveOptions {
        dlq_url: dlq_url.clone(),
        to_url: source_url.clone(),
        dry_run: false,
        max: None,
    };
    let kept = redrive(&sqs, None, None, &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((kept.redriven, kept.left["no_original_kept"]), (0, 4));
    let rebuilder = Rebuilder::new(kms.clone(), key.clone());
    let run = redrive(&sqs, None, Some(&rebuilder), &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!((run.redriven, run.rebuilt), (3, 3), "{run:?}");
    assert_eq!(run.left.get("copy_holds_no_login"), Some(&1), "{run:?}");
    let arn = "arn:aws:sqs:us-east-1:123456789012:logins";
    let rebuilt: Vec<_> = drain(&sqs, &source_url)
        .await
        .iter()
        .map(|m| login_etl::poll::queue::to_record(m, arn))
        .collect();
    assert_eq!(rebuilt.len(), 3);
    let masker = common::keys::test_masker();
    for r in &rebuilt {
        let body = r.body.as_deref().unwrap();
        for raw in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "dev-a", "dev-b"] {
            assert!(
                !body.contains(raw),
                "a rebuilt login holds tokens only: {body}"
            );
        }
    }

    // Where the seal cannot be checked (no dead-letter key): it waits.
    let (resp, summary) = handler(&db)
        .await
        .handle(&SqsBatch::new(vec![rebuilt[0].clone()]), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(summary.inserted, 0);
    assert!(summary.rejected.is_empty(), "{:?}", summary.rejected);
    assert_eq!(
        failures(&resp),
        vec![rebuilt[0].message_id.clone().unwrap()]
    );

    // Altered on the way (another user), or a producer's own: rejected.
    let mut forged = rebuilt[0].clone();
    forged.message_id = Some("forged".into());
    forged.body = Some(forged.body.unwrap().replace("u-beta", "u-someone-else"));
    let mut made_up = rebuilt[1].clone();
    made_up.message_id = Some("made-up".into());
    made_up.message_attributes.as_mut().unwrap().rebuilt_seal = Some("bm90IGEgc2VhbA==".into());
    let h = handler(&db)
        .await
        .with_rebuilt_verifier(RebuiltVerifier::new(kms.clone(), key.clone()));
    let mut batch = rebuilt.clone();
    batch.extend([forged, made_up]);
    let (resp, summary) = h
        .handle(&SqsBatch::new(batch), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(summary.inserted, 3);
    assert_eq!(
        summary.rejected.get("rebuilt_login_unverified"),
        Some(&2),
        "{:?}",
        summary.rejected
    );
    let mut failed = failures(&resp);
    failed.sort();
    assert_eq!(failed, vec!["forged".to_owned(), "made-up".to_owned()]);

    // Each on its original's row key, with the copy's tokens.
    let admin = db.client().await;
    for (i, (id, _, ip, device)) in logins.iter().enumerate() {
        let row = admin
            .query_one(
                "SELECT masked_ip, masked_device_id, defects, (extract(epoch FROM sent_at) * 1000)::int8, \
                        app_version_text, key_version FROM user_logins WHERE message_id = $1",
                &[id],
            )
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let want_ip = ip.map(|ip| masker.ip(&ip.parse().unwrap()).to_string());
        let want_device = device.map(|d| masker.device_id(d).to_string());
        assert_eq!(row.get::<_, Option<String>>(0), want_ip, "{id}");
        assert_eq!(row.get::<_, Option<String>>(1), want_device, "{id}");
        let defects: Vec<String> = row.get(2);
        assert!(
            defects.contains(&"message.rebuilt_from_copy".to_owned()),
            "{id}: {defects:?}"
        );
        assert_eq!(
            row.get::<_, i64>(3),
            sent + i as i64,
            "{id}: the original's day"
        );
        assert_eq!(row.get::<_, i16>(5), 1, "{id}");
    }
    let beta: Option<String> = admin
        .query_one(
            "SELECT app_version_text FROM user_logins WHERE message_id = 'beta'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(beta, None, "what the copy redacted is NULL");
}

/// A copy whose key KMS will not open (here: sealed under another key, as a
/// producer's claimed `sealed_key` would be; moto answers AccessDenied,
/// not InvalidCiphertext) is that copy's failure alone: `dlq-redrive`
/// sends the others back, counts it as `kms_refused`, and every message it
/// received and did not delete is visible again when the run ends, with
/// nothing left in flight.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn a_copy_kms_will_not_open_stays_and_the_redrive_goes_on_and_releases_it() {
    use aws_sdk_sqs::types::QueueAttributeName;
    use login_etl::ingest::redrive::{RedriveOptions, redrive};
    use login_etl::privacy::dead_letter::{Sealer, Unsealer};

    let (_moto, port) = start_moto();
    let sdk = common::moto::moto_sdk(&format!("http://127.0.0.1:{port}")).await;
    let (sqs, kms) = (Client::new(&sdk), aws_sdk_kms::Client::new(&sdk));
    let queue = |name: &'static str| {
        let sqs = sqs.clone();
        async move {
            let url = sqs.create_queue().queue_name(name).send().await.unwrap();
            url.queue_url().unwrap().to_owned()
        }
    };
    let (source_url, dlq_url) = (queue("logins").await, queue("logins-dlq").await);
    let new_key = || async {
        let key = kms.create_key().send().await.unwrap();
        key.key_metadata().unwrap().arn().unwrap().to_owned()
    };
    let (key, other) = (new_key().await, new_key().await);
    let db = TestDb::create().await;
    // Copies sealed under the dead-letter key, then one batch's under another.
    let copies_of = |sealer_key: String, seed: u64| {
        let (sqs, kms, dlq_url, db) = (sqs.clone(), kms.clone(), dlq_url.clone(), &db);
        async move {
            let dlq = DeadLetterQueue::new(sqs, dlq_url)
                .with_sealer(Sealer::generate(&kms, &sealer_key).await.unwrap());
            let h = handler(db).await.with_dead_letter_queue(dlq);
            let event = synth::event(&Options {
                count: 4,
                invalid_every: 1,
                seed,
                ..Options::default()
            });
            let (_, summary) = h
                .handle(&SqsBatch::from(&event), Deadline::NONE)
                .await
                .map(Outcome::into_parts)
                .unwrap();
            summary.sent_to_dlq
        }
    };
    let good = copies_of(key.clone(), 301).await;
    let foreign = copies_of(other, 302).await;
    assert!(good > 0 && foreign > 0);
    let options = RedriveOptions {
        dlq_url: dlq_url.clone(),
        to_url: source_url.clone(),
        dry_run: false,
        max: None,
    };
    let mut unsealer = Unsealer::new(kms.clone(), vec![key]);
    let report = redrive(&sqs, Some(&mut unsealer), None, &options, &mut |_| {})
        .await
        .expect("one copy's KMS refusal does not stop the run");
    // Each batch holds copies with no original (an empty body): left as such.
    let left = |why: &str| report.left.get(why).copied().unwrap_or(0);
    assert_eq!(report.received as usize, good + foreign, "{report:?}");
    assert!(report.redriven > 0 && left("kms_refused") > 0, "{report:?}");
    assert_eq!(
        report.redriven + left("kms_refused") + left("empty_body"),
        report.received,
        "{report:?}"
    );
    let counts = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let count = |name| {
        counts.attributes().unwrap()[&name]
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(
        count(QueueAttributeName::ApproximateNumberOfMessages) as u64,
        report.received - report.redriven,
        "every copy not sent back is visible again"
    );
    assert_eq!(
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        0,
        "nothing left in flight"
    );
}

/// The DLQ operator cannot store logins of its own (insiders' third
/// round, finding 1). Its own login, sent from its role, is rejected
/// (`operator_message_unsigned`) and its copy claims no row: `dlq-redrive`
/// leaves it (`not_a_producers`), and its original sent back by hand with
/// the copy's attributes is refused again. Logins it rebuilds and seals
/// itself are refused: another user's tokens, a second row for a stored
/// message at its `sent_at` + 1 ms, rows dated 0001 and 2100 (each with no
/// copy signature), a forged copy signature, and the function's own signed
/// copy of the operator's login (its row key unsigned). The function
/// rebuilds only from a copy it signed, of a producer's message, dated
/// within what SQS keeps, and a refused rebuilt login's copy claims no row
/// key; a producer's message that claims to be a copy has its claims
/// dropped.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn the_dlq_operators_own_logins_are_never_stored() {
    use login_etl::ingest::event::SourceAttributes;
    use login_etl::ingest::redrive::{RedriveOptions, redrive};
    use login_etl::privacy::dead_letter::rebuilt::{REBUILT_SEAL, Rebuilt, RebuiltVerifier, seal};
    use login_etl::privacy::dead_letter::{Sealer, Unsealer};

    const OPERATOR: &str = "AROAOPERATOR000000000";
    let Queues {
        _moto,
        sqs,
        kms,
        source_url,
        dlq_url,
        key,
    } = queues_and_key().await;
    let db = TestDb::create().await;
    let h = handler(&db)
        .await
        .with_dead_letter_queue(
            DeadLetterQueue::new(sqs.clone(), dlq_url.clone())
                .with_sealer(Sealer::generate(&kms, &key).await.unwrap()),
        )
        .with_dlq_operator(Some(OPERATOR.into()))
        .with_rebuilt_verifier(RebuiltVerifier::new(kms.clone(), key.clone()));
    let handle = |records| summary_of(&h, records);
    let as_operator = |mut r: login_etl::ingest::event::SqsRecord| {
        r.attributes.as_mut().unwrap().sender_id = Some(format!("{OPERATOR}:redrive"));
        r
    };
    let now = chrono::Utc::now().timestamp_millis();
    let login = |user: &str, ip: &str| login_body(user, ip, format!("dev-{user}").into());

    // The operator's own login: refused, and its copy claims no row.
    let own = as_operator(arrived("own", &login("u-own", "10.9.9.9"), now - 60_000));
    let summary = handle(vec![own.clone()]).await;
    assert_eq!(
        (
            summary.inserted,
            summary.rejected.get("operator_message_unsigned")
        ),
        (0, Some(&1)),
        "{summary:?}"
    );
    let copies = peek(&sqs, &dlq_url).await;
    assert_eq!(copies.len(), 1);
    let held = copies[0].message_attributes().unwrap();
    assert!(
        !held.contains_key("source_signature"),
        "the copy of the operator's own message carries no signed row key"
    );
    assert!(held.contains_key("copy_signature") && held.contains_key("sealed_body"));
    assert!(
        held.len() <= 10,
        "SQS takes 10 attributes a message: {held:?}"
    );

    // dlq-redrive leaves it; sent back by hand with the copy's attributes, refused again.
    let options = RedriveOptions {
        dlq_url: dlq_url.clone(),
        to_url: source_url.clone(),
        dry_run: false,
        max: None,
    };
    let mut unsealer = Unsealer::new(kms.clone(), vec![key.clone()]);
    let run = redrive(&sqs, Some(&mut unsealer), None, &options, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        (run.redriven, run.left.get("not_a_producers")),
        (0, Some(&1)),
        "{run:?}"
    );
    let mut by_hand = own.clone();
    by_hand.message_id = Some("by-hand".into());
    by_hand.message_attributes = Some(SourceAttributes::from_named(|name| {
        held.get(name)
            .and_then(|v| v.string_value())
            .map(str::to_owned)
            .filter(|_| name.starts_with("source_"))
    }));
    let summary = handle(vec![by_hand]).await;
    assert_eq!(summary.inserted, 0, "{summary:?}");

    // A producer's login, stored; then rebuilt logins the operator seals itself.
    let stored_at = now - 3_600_000;
    let summary = handle(vec![arrived(
        "stored",
        &login("u-victim", "10.1.1.1"),
        stored_at,
    )])
    .await;
    assert_eq!(summary.inserted, 1);
    let masker = common::keys::test_masker();
    let victims = masked_body(&login("u-victim", "10.1.1.1"), &masker);
    let forged_signature = format!("v1.{}", "0".repeat(64));
    // (the row key's id, the copy-shaped body, its date, the copy's code and signature)
    type Case<'a> = (&'a str, String, i64, Option<(&'a str, &'a str)>);
    let cases: [Case; 5] = [
        (
            "another-users-tokens",
            victims.replace("u-victim", "u-thief"),
            now - 60_000,
            None,
        ),
        ("stored", victims.clone(), stored_at + 1, None),
        (
            "year-1",
            victims.replace("u-victim", "u-year-1"),
            -62_135_596_800_000,
            None,
        ),
        (
            "year-2100",
            victims.replace("u-victim", "u-year-2100"),
            4_102_444_800_000,
            None,
        ),
        (
            "forged-signature",
            victims.clone(),
            stored_at,
            Some(("invalid_json", forged_signature.as_str())),
        ),
    ];
    let mut rebuilt = Vec::new();
    for (id, body, sent, copy) in cases {
        let sent = sent.to_string();
        let sealed = seal(
            &kms,
            &key,
            &Rebuilt {
                source_message_id: id,
                sent_timestamp: &sent,
                key_version: 1,
                body: &body,
            },
        )
        .await
        .unwrap();
        let mut r = as_operator(arrived(&format!("rebuilt-{id}"), &body, now));
        r.message_attributes = Some(SourceAttributes::from_named(|name| match name {
            "source_message_id" => Some(id.to_owned()),
            "source_sent_timestamp" => Some(sent.clone()),
            "rebuilt_key_version" => Some("1".into()),
            n if n == REBUILT_SEAL => Some(sealed.clone()),
            "source_rejection_code" => copy.map(|(code, _)| code.to_owned()),
            "copy_signature" => copy.map(|(_, signature)| signature.to_owned()),
            _ => None,
        }));
        rebuilt.push(r);
    }
    let summary = handle(rebuilt).await;
    assert_eq!(
        (
            summary.inserted,
            summary.rejected.get("rebuilt_login_unverified")
        ),
        (0, Some(&5)),
        "{summary:?}"
    );
    let admin = db.client().await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the producer's login alone");

    // A producer's message that claims to be a copy: its claims are not
    // carried into its own copy, which names and seals it as it is.
    drain(&sqs, &dlq_url).await;
    let mut claims = arrived("claims", &login("u-claims", "10.2.2.2"), now);
    claims.message_attributes = Some(SourceAttributes::from_named(|name| match name {
        "rejection_code" => Some("invalid_json".into()),
        "source_message_id" => Some("carol@example.com +1-415-555-0100".into()),
        "source_sent_timestamp" => Some("1".into()),
        "sealed_body" | "sealed_key" => Some("bm90IHNlYWxlZA==".into()),
        "copy_signature" => Some(forged_signature.clone()),
        _ => None,
    }));
    let summary = handle(vec![claims]).await;
    assert_eq!(
        summary.rejected.get("dead_letter_copy"),
        Some(&1),
        "{summary:?}"
    );
    let copy = drain(&sqs, &dlq_url).await;
    assert_eq!(copy.len(), 1);
    assert_eq!(attr(&copy[0], "source_message_id"), "claims");
    assert_ne!(attr(&copy[0], "sealed_body"), "bm90IHNlYWxlZA==");

    // Copies that kept no original (no dead-letter key), through
    // `dlq-redrive --rebuild`: the operator's own login's copy is signed,
    // but its row key is not, so it is left, and a rebuilt login made of it
    // by hand is refused; a producer's login older than SQS keeps anything
    // is refused when rebuilt, and that refusal's copy claims no row key.
    use login_etl::ingest::redrive::Rebuilder;
    let bare = handler(&db)
        .await
        .with_contract(login_etl::contract::Contract::STRICT)
        .with_dead_letter_queue(DeadLetterQueue::new(sqs.clone(), dlq_url.clone()))
        .with_dlq_operator(Some(OPERATOR.into()));
    let old = now - 40 * 86_400_000;
    let beta = login("u-old", "10.3.3.3").replace("1.0.0", "2.3.0-beta1");
    let records = vec![
        as_operator(arrived("own-bare", &login("u-own", "10.9.9.8"), now)),
        arrived("old", &beta, old),
    ];
    bare.handle(&SqsBatch::new(records), Deadline::NONE)
        .await
        .unwrap();
    let unsealed = peek(&sqs, &dlq_url).await;
    let own = unsealed
        .iter()
        .find(|c| attr(c, "source_message_id") == "own-bare")
        .unwrap();
    let own_body = own.body().unwrap().to_owned();
    let sealed = seal(
        &kms,
        &key,
        &Rebuilt {
            source_message_id: "own-bare",
            sent_timestamp: &attr(own, "source_sent_timestamp"),
            key_version: 1,
            body: &own_body,
        },
    )
    .await
    .unwrap();
    let mut by_hand = as_operator(arrived("rebuilt-own-bare", &own_body, now));
    by_hand.message_attributes = Some(SourceAttributes::from_named(|name| match name {
        "source_message_id" => Some("own-bare".into()),
        "source_sent_timestamp" => Some(attr(own, "source_sent_timestamp")),
        "rebuilt_key_version" => Some("1".into()),
        n if n == REBUILT_SEAL => Some(sealed.clone()),
        "source_rejection_code" => Some(attr(own, "rejection_code")),
        "copy_signature" => Some(attr(own, "copy_signature")),
        _ => None,
    }));
    let run = redrive(
        &sqs,
        None,
        Some(&Rebuilder::new(kms.clone(), key.clone())),
        &options,
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (run.rebuilt, run.left.get("not_a_producers")),
        (1, Some(&1)),
        "{run:?}"
    );
    let arn = "arn:aws:sqs:us-east-1:123456789012:logins";
    let mut back: Vec<_> = drain(&sqs, &source_url)
        .await
        .iter()
        .map(|m| as_operator(login_etl::poll::queue::to_record(m, arn)))
        .collect();
    back.push(by_hand);
    let summary = handle(back).await;
    assert_eq!(
        (
            summary.inserted,
            summary.rejected.get("rebuilt_login_unverified"),
            summary.rejected.get("sent_timestamp_out_of_range")
        ),
        (0, Some(&1), Some(&1)),
        "{summary:?}"
    );
    let refused = drain(&sqs, &dlq_url).await;
    let again = refused
        .iter()
        .find(|c| attr(c, "rejection_code") == "sent_timestamp_out_of_range")
        .unwrap();
    assert!(
        !again
            .message_attributes()
            .unwrap()
            .contains_key("source_signature"),
        "a refused rebuilt login's copy claims no row key"
    );
}

/// Erasure first, while the database is down: with the visibility backoff
/// (as the template deploys it) a batch the database cannot take is
/// reported, its rejects copied to the DLQ; a warm function keeps the
/// erasure list it read, so an erased user's login that the contract
/// rejects is skipped even then, no copy; another user's reject is copied.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn an_erased_users_rejected_login_gets_no_copy_while_the_database_is_down() {
    use login_etl::privacy::masking::{Masker, MaskingKey};
    use login_etl::table::privileges::Role;
    use serde_json::Value;

    let Queues {
        _moto,
        sqs,
        source_url,
        dlq_url,
        ..
    } = queues_and_key().await;
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "5d0c6e1a-7b2f-4f3e-8a90-1c2d3e4f5a6b";
    let h = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", TEST_KEY),
        ("CONTRACT", "strict"),
    ])
    .await
    .with_dead_letter_queue(DeadLetterQueue::new(sqs.clone(), dlq_url.clone()))
    .with_backoff(
        login_etl::config::backoff::Schedule { base: 30, max: 900 },
        login_etl::ingest::backoff::Visibility::new(sqs.clone(), Some(source_url.clone())),
    );
    let handle = |records| summary_of(&h, records);
    let now = chrono::Utc::now().timestamp_millis();
    let login = |user: &str, device: Value| login_body(user, "10.4.4.4", device);
    handle(vec![arrived("first", &login(user, "d-1".into()), now)]).await;
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let caller = "arn:aws:sts::123456789012:assumed-role/erasers/test";
    login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), caller)
        .await
        .expect("erased");
    // A batch after the erasure: its write finds the list out of date and
    // the function reads it again.
    let after = vec![arrived("after", &login("someone-else", "d-2".into()), now)];
    assert_eq!(handle(after).await.inserted, 1);
    // Down for the function's login (53300, too many connections: what a
    // server at its limit says), its session ended.
    let admin = db.client().await;
    let role = db.role_name(Role::Ingest);
    admin
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT 0"))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap();
    // The erased user's login and another user's, both rejected by the
    // strict contract (a null device id), and a valid one, backed off.
    let summary = handle(vec![
        arrived("erased", &login(user, Value::Null), now),
        arrived("other", &login("someone-else", Value::Null), now),
        arrived("valid", &login("someone-else", "d-3".into()), now),
    ])
    .await;
    assert_eq!(summary.erased, 1, "{summary:?}");
    let copies = drain(&sqs, &dlq_url).await;
    let named: Vec<String> = copies
        .iter()
        .map(|c| attr(c, "source_message_id"))
        .collect();
    assert_eq!(named, ["other"], "{summary:?}");
    admin
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT -1"))
        .await
        .unwrap();
}
