//! A claim signed after a rotation, judged by an environment that has
//! written nothing since: its key state in memory still says the old
//! version, and a signature at the new one is no claim at that version.
//! The environment reads the database's state again before judging the
//! batch, so a redriven original lands on its own row, and the copy of one
//! rejected again names the original, not the redriven message.

use super::*;

use std::collections::HashMap as Attributes;

use aws_lambda_events::event::sqs::SqsMessage;
use common::sqs::string_attribute;
use login_etl::ingest::dlq::DeadLetterQueue;
use login_etl::ingest::event::{RecordAttributes, SourceAttributes, SqsRecord};

/// A dead-letter queue of its own in a moto of its own (`fifo`: a FIFO one).
async fn dead_letter_queue(fifo: bool) -> (common::moto::Moto, aws_sdk_sqs::Client, String) {
    let (moto, port) = common::moto::start_moto();
    let sqs = common::sqs::sqs_client(&format!("http://127.0.0.1:{port}")).await;
    let mut create = sqs.create_queue().queue_name(if fifo {
        "claims-dlq.fifo"
    } else {
        "claims-dlq"
    });
    if fifo {
        create = create.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
    }
    let url = create.send().await.unwrap().queue_url().unwrap().to_owned();
    (moto, sqs, url)
}

/// An original that is still no login (`original-0`), to be sent back.
fn no_login(seed: u64) -> SqsMessage {
    let mut original = event(1, seed, None).records.remove(0);
    original.message_id = Some("original-0".into());
    original.body = Some("{\"user_id\": ".into());
    original
}

/// `original` sent back as `dlq-redrive` sends it: a new id and
/// SentTimestamp, its own in the attributes, signed by `signer`.
fn redriven(original: &SqsMessage, id: &str, signer: &Masker) -> SqsMessage {
    let mut m = original.clone();
    let source = m.message_id.clone().unwrap();
    let sent = m.attributes["SentTimestamp"].clone();
    let body = m.body.clone().unwrap();
    m.message_id = Some(id.to_owned());
    let later = sent.parse::<i64>().unwrap() + 60_000;
    m.attributes
        .insert("SentTimestamp".into(), later.to_string());
    let signature = signer.redrive_signature(&source, &sent, &body);
    for (name, value) in [
        ("source_message_id", source.as_str()),
        ("source_sent_timestamp", sent.as_str()),
        ("source_signature", signature.as_str()),
    ] {
        m.message_attributes
            .insert(name.into(), string_attribute(value));
    }
    m
}

fn one(message: SqsMessage) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = vec![message];
    event
}

#[tokio::test]
async fn a_redriven_original_signed_after_a_rotation_lands_on_its_row_in_an_environment_that_has_not_written_since()
 {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let stored = event(12, 4100, None);
    // One environment holds both versions; the other only the first, and
    // reads the secret again when the database names the second.
    let both = function(&ingest, 2).await;
    let old = warm_function_on_the_old_key(&ingest).await;
    assert!(deliver(&both, &stored).await.is_empty());
    // Each reads the key state (version 1) with a batch of its own.
    assert!(deliver(&old, &event(3, 4101, None)).await.is_empty());
    assert!(deliver(&both, &event(3, 4102, None)).await.is_empty());
    let rows = count_rows(&db.client().await).await;
    assert_eq!(rows, 18);

    rotate(&db, 2, RekeyOptions::default()).await;
    // dlq-redrive, after the rotation, signs at version 2.
    let signer = masker(2);
    for (i, h) in [&both, &old].into_iter().enumerate() {
        // A new login before it: the batch is read again from its start,
        // and the login stored once.
        let mut back = event(1, 4110 + i as u64, None);
        back.records.push(redriven(
            &stored.records[i],
            &format!("redriven-{i}"),
            &signer,
        ));
        assert!(deliver(h, &back).await.is_empty(), "environment {i}");
        assert_eq!(
            count_rows(&db.client().await).await,
            rows + 1 + i as i64,
            "environment {i}: the new login once, the redriven original on its own row"
        );
    }
    // The check above can fail: unsigned, the same message is a new row.
    let mut unsigned = redriven(&stored.records[2], "redriven-unsigned", &signer);
    unsigned.message_attributes.remove("source_signature");
    assert!(deliver(&both, &one(unsigned)).await.is_empty());
    assert_eq!(count_rows(&db.client().await).await, rows + 3);
    // A producer's version no database is at: read again once, then judged
    // as it is (no claim), its message stored on its own row.
    let mut forged = redriven(&stored.records[3], "forged", &signer);
    forged.message_attributes.insert(
        "source_signature".into(),
        string_attribute(&format!("v9.{}", "0".repeat(64))),
    );
    assert!(deliver(&old, &one(forged)).await.is_empty());
    assert_eq!(count_rows(&db.client().await).await, rows + 4);
}

/// A record as a DLQ copy comes back (SQS moved it, or someone sent it on).
fn copy_come_back(m: &aws_sdk_sqs::types::Message, id: &str) -> SqsRecord {
    let attrs: Attributes<&str, &str> = m
        .message_attributes()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.string_value()?)))
        .collect();
    SqsRecord {
        message_id: Some(id.to_owned()),
        body: m.body().map(str::to_owned),
        attributes: Some(RecordAttributes {
            sent_timestamp: Some(chrono::Utc::now().timestamp_millis().to_string()),
            approximate_receive_count: Some("1".into()),
            ..Default::default()
        }),
        event_source_arn: Some("arn:aws:sqs:us-east-1:123456789012:logins".into()),
        message_attributes: Some(SourceAttributes::from_named(|name| {
            attrs.get(name).map(|v| (*v).to_owned())
        })),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn the_copy_of_a_claim_signed_after_a_rotation_names_its_original_in_an_environment_that_has_not_written_since()
 {
    let (_moto, sqs, dlq_url) = dead_letter_queue(false).await;
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let with_dlq = |h: BatchHandler| {
        h.with_dead_letter_queue(DeadLetterQueue::new(sqs.clone(), dlq_url.clone()))
    };
    let (first, second) = (
        with_dlq(function(&ingest, 2).await),
        with_dlq(warm_function_on_the_old_key(&ingest).await),
    );
    // Both read the key state (version 1) with a batch of their own.
    assert!(deliver(&first, &event(3, 4200, None)).await.is_empty());
    assert!(deliver(&second, &event(3, 4201, None)).await.is_empty());
    rotate(&db, 2, RekeyOptions::default()).await;

    // An original that is still no login, sent back after the rotation.
    let back = one(redriven(&no_login(4202), "redriven-0", &masker(2)));
    assert!(deliver(&first, &back).await.is_empty(), "rejected: handled");
    let copies = common::sqs::receive_all(&sqs, &dlq_url, Some(60)).await;
    assert_eq!(copies.len(), 1);
    let named = |m: &aws_sdk_sqs::types::Message| {
        m.message_attributes().unwrap()["source_message_id"]
            .string_value()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        named(&copies[0]),
        "original-0",
        "the copy names the original"
    );
    sqs.delete_message()
        .queue_url(&dlq_url)
        .receipt_handle(copies[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    // That copy (signed at version 2) comes back to the other environment,
    // which reads the secret again: its new copy still names the original.
    let batch = SqsBatch::new(vec![copy_come_back(&copies[0], "moved-back-0")]);
    let (response, _) = second
        .handle(&batch, Deadline::NONE)
        .await
        .unwrap()
        .into_parts();
    assert!(failures(&response).is_empty());
    let again = common::sqs::receive_all(&sqs, &dlq_url, Some(60)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(named(&again[0]), "original-0", "still the original");
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn a_claim_no_key_state_can_judge_comes_back_and_gets_no_copy() {
    let (_moto, sqs, dlq_url) = dead_letter_queue(true).await;
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    // Version 1 only, and no secret to read again: after the rotation it
    // can judge no claim of version 2.
    let h = function(&ingest, 1)
        .await
        .with_dead_letter_queue(DeadLetterQueue::new(sqs.clone(), dlq_url.clone()));
    assert!(deliver(&h, &event(3, 4300, None)).await.is_empty());
    rotate(&db, 2, RekeyOptions::default()).await;

    // A FIFO queue's rejects go to the DLQ before the write: an original
    // that is still no login, sent back after the rotation.
    let mut original = no_login(4301);
    original.event_source_arn = Some("arn:aws:sqs:us-east-1:123456789012:logins.fifo".into());
    original
        .attributes
        .insert("MessageGroupId".into(), "group-0".into());
    // Before it, a reject with no claim: its copy shows the DLQ works.
    let mut control = original.clone();
    control.message_id = Some("control-0".into());
    let mut back = one(control);
    back.records
        .push(redriven(&original, "redriven-0", &masker(2)));
    assert!(
        deliver(&h, &back).await.contains(&"redriven-0".to_owned()),
        "it comes back"
    );
    let copies = common::sqs::receive_all(&sqs, &dlq_url, Some(60)).await;
    let named: Vec<_> = copies
        .iter()
        .map(|m| m.message_attributes().unwrap()["source_message_id"].string_value())
        .collect();
    assert_eq!(
        named,
        [Some("control-0")],
        "the control's copy, none under the wrong original"
    );
}
