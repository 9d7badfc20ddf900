//! The batch handler against a real PostgreSQL: one throwaway database per test.

use crate::common;

use common::oracle::{ExpectedRow, assert_table_matches, expected_row};
use common::sqs::{scripted_sqs, sqs_client};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, HandlerError, Outcome, SqsBatch};
use serde_json::Value;

mod copy;
mod reports;

/// The fixture with every rejection reason and every kind of defect:
/// exactly the records that are not logins are reported, and each login is
/// a row whose every column, its defects included, equals the oracle's
/// (tests/common/oracle.rs), on the INSERT path.
#[tokio::test]
async fn mixed_batch_reports_exactly_the_invalid_records_and_writes_correct_rows() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let event = load_event("sqs-mixed.json");
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    assert_eq!(failures(&resp), expected_failures(&event));
    let want: Vec<ExpectedRow> = event
        .records
        .iter()
        .zip(expectations(&event))
        .filter(|(_, (_, e))| e.starts_with("insert"))
        .map(|(m, _)| expected_row(TEST_KEY, m))
        .collect();
    assert!(
        want.iter().filter(|r| r.defects.is_some()).count() >= 10,
        "the fixture has logins with defects, stored"
    );
    assert!(
        expectations(&event)
            .iter()
            .any(|(_, e)| e == "reject:no_sent_timestamp"),
        "the fixture has a record without SentTimestamp, rejected: its day (part of the key) would be the day it was read"
    );
    assert_table_matches(&db.client().await, &want).await;
}

#[tokio::test]
async fn the_same_batch_twice_adds_no_rows() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    for name in [
        "sqs-valid.json",
        "sqs-mixed.json",
        "sqs-duplicates.json",
        "sqs-fifo.json",
    ] {
        let event = load_event(name);
        let first = h
            .handle(&SqsBatch::from(&event), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        let after_first = count_rows(&client).await;
        let second = h
            .handle(&SqsBatch::from(&event), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        assert_eq!(count_rows(&client).await, after_first, "{name}");
        assert_eq!(failures(&first.0), failures(&second.0), "{name}");
        assert_eq!(second.1.inserted, 0, "{name}");
        assert_eq!(
            second.1.duplicates,
            first.1.inserted + first.1.duplicates,
            "{name}"
        );
    }
}

#[tokio::test]
async fn duplicate_tokens_for_equal_pii_and_one_row_per_message_id() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let event = load_event("sqs-duplicates.json");
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    let client = db.client().await;
    // five records, one of them delivered twice in the batch
    assert_eq!(count_rows(&client).await, 4);
    assert_eq!((summary.inserted, summary.duplicates), (4, 1));
    let same: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE masked_ip = $1",
            &[&hmac_hex(TEST_KEY, "66.249.66.1")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(same, 4);
    let same_dev: i64 = client
        .query_one(
            "SELECT count(DISTINCT masked_device_id) FROM user_logins",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(same_dev, 2);
}

#[tokio::test]
async fn upstream_table_is_upgraded_in_place_and_filled() {
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
                masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date);
             INSERT INTO user_logins VALUES ('old-1', 'ios', repeat('ab', 32), repeat('cd', 32), NULL, 230, '2020-01-01'),
                                            ('old-2', 'ios', repeat('ab', 32), repeat('cd', 32), NULL, 230, '2020-01-01');",
        )
        .await
        .unwrap();
    let h = handler(&db).await; // RUN_MIGRATIONS=true upgrades the table
    let event = load_event("sqs-valid.json");
    handle_all_ok(&h, &event).await;
    assert_eq!(count_rows(&client).await, 2 + event.records.len() as i64);
    let cols: Vec<String> = client
        .query("SELECT column_name::text FROM information_schema.columns WHERE table_name = 'user_logins' ORDER BY ordinal_position", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        cols,
        [
            "user_id",
            "device_type",
            "masked_ip",
            "masked_device_id",
            "locale",
            "app_version",
            "create_date",
            "message_id",
            "app_version_text",
            "sent_at",
            "key_version",
            "extra",
            "defects",
            "user_tag"
        ]
    );
    // The old table's rows are in the first partition of user_logins_rows,
    // read through the view user_logins.
    let (view, old_rows): (bool, i64) = client
        .query_one(
            "SELECT (SELECT relkind = 'v' FROM pg_class WHERE oid = 'user_logins'::regclass), \
             (SELECT count(*) FROM user_logins_legacy WHERE user_id_text LIKE 'old-%')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((view, old_rows), (true, 2));
    // migrating again is a no-op
    handler(&db).await;
    assert_eq!(count_rows(&client).await, 2 + event.records.len() as i64);
}

/// A rollback (docs/upgrade.md): the previous release's binaries call the
/// write of its thirteen columns, which a database this release made has
/// too (migrations/functions/login_etl_write.sql); as the ingest role,
/// its row is stored, without a tag. (tests/test_dist.py runs 0.2.0's
/// binary itself.)
#[tokio::test]
async fn the_previous_releases_write_is_there_on_a_database_this_release_made() {
    let db = TestDb::create().await;
    let ingest = connect(&db.ingest_url().await).await;
    let version: i32 = ingest
        .query_one("SELECT version::int4 FROM login_etl_key_state()", &[])
        .await
        .unwrap()
        .get(0);
    let token = "a".repeat(64);
    let n: i64 = ingest
        .query_one(
            "SELECT login_etl_write(0::int8, $1::int4, $1::int4, ARRAY['m-020']::varchar[], \
             ARRAY['u-020']::varchar[], ARRAY['ios']::varchar[], ARRAY[$2]::varchar[], ARRAY[$2]::varchar[], \
             ARRAY['en']::varchar[], ARRAY[2003000]::int4[], ARRAY['2.3.0']::varchar[], \
             ARRAY[(now() AT TIME ZONE 'UTC')::date], ARRAY[now()], ARRAY[$1::int2], \
             ARRAY[NULL]::text[], ARRAY[NULL]::jsonb[])",
            &[&version, &token],
        )
        .await
        .expect("0.2.0's write")
        .get(0);
    assert_eq!(n, 1);
    let tag: Option<i64> = db
        .client()
        .await
        .query_one(
            "SELECT user_tag FROM user_logins WHERE message_id = 'm-020'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tag, None);
}

#[tokio::test]
async fn missing_schema_fails_the_invocation_with_a_hint() {
    let db = TestDb::create().await;
    // A role that may connect and nothing more: no table exists to grant on.
    let url = db.bare_role_url().await;
    let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
    let err = h
        .handle(
            &SqsBatch::from(&load_event("sqs-valid.json")),
            Deadline::NONE,
        )
        .await
        .map(|o| o.response)
        .unwrap_err();
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("make migrate") && msg.contains("user_logins is missing"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_only_that_record() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    // The INSERT path's size: its bisection (copy.rs has the COPY path's).
    let count = login_etl::ingest::sink::COPY_MIN_ROWS - 1;
    let event = synth::event(&Options {
        count,
        ..Options::default()
    });
    // Refuse records 17 and 140 by their user ids.
    let bad: Vec<String> = [17usize, 140]
        .iter()
        .map(|&i| {
            let body: Value =
                serde_json::from_str(event.records[i].body.as_deref().unwrap()).unwrap();
            body["user_id"].as_str().unwrap().to_owned()
        })
        .collect();
    client
        .batch_execute(&format!("ALTER TABLE user_logins_rows ADD CONSTRAINT no_bad_users CHECK (coalesce(user_id_text, user_id::text) NOT IN ('{}', '{}'))", bad[0], bad[1]))
        .await
        .unwrap();
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let want = vec![
        event.records[17].message_id.clone().unwrap(),
        event.records[140].message_id.clone().unwrap(),
    ];
    assert_eq!(failures(&resp), want);
    assert_eq!(summary.refused, 2);
    assert_eq!(count_rows(&client).await, count as i64 - 2);
}

#[tokio::test]
async fn fifo_batch_stops_at_the_first_invalid_record() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let event = load_event("sqs-fifo.json");
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    assert_eq!(failures(&resp), expected_failures(&event));
    let client = db.client().await;
    let mut inserted: Vec<String> = expectations(&event)
        .into_iter()
        .filter(|(_, e)| e.starts_with("insert"))
        .map(|(id, _)| id)
        .collect();
    inserted.sort();
    assert_eq!(message_ids_in_table(&client).await, inserted);
}

/// A FIFO batch of `count` records whose record `bad` the database refuses:
/// it and every later record are reported, every earlier one is written.
async fn fifo_batch_stops_at_refused_row(count: usize, bad: usize) {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let event = synth::event(&Options {
        count,
        fifo: true,
        ..Options::default()
    });
    let body: Value = serde_json::from_str(event.records[bad].body.as_deref().unwrap()).unwrap();
    client
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT no_bad_user CHECK (coalesce(user_id_text, user_id::text) <> '{}')",
            body["user_id"].as_str().unwrap()
        ))
        .await
        .unwrap();
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    assert_eq!(failures(&resp), ids[bad..].to_vec());
    assert_eq!(summary.inserted, bad as u64);
    // The statements a FIFO bisection needs to find `bad` (ranges popped in
    // batch order, stopping at the refused row), plus the COPY tried first
    // by batches that are large enough.
    let mut inserts = 0;
    let mut todo = Vec::new();
    todo.push(0..count);
    while let Some(r) = todo.pop() {
        inserts += 1;
        if r.contains(&bad) {
            if r.len() == 1 {
                break;
            }
            let mid = r.start + r.len() / 2;
            todo.push(mid..r.end);
            todo.push(r.start..mid);
        }
    }
    let copy = u32::from(count >= login_etl::ingest::sink::COPY_MIN_ROWS);
    assert_eq!(
        summary.statements,
        inserts + copy,
        "{count} rows, refused at {bad}"
    );
    let mut before = ids[..bad].to_vec();
    before.sort();
    assert_eq!(message_ids_in_table(&client).await, before);
}

#[tokio::test]
async fn fifo_batch_stops_at_the_first_refused_row_and_writes_nothing_after_it() {
    fifo_batch_stops_at_refused_row(10, 6).await;
}

/// A handler whose database is a port nothing listens on, and the port.
async fn handler_on_a_closed_port() -> (login_etl::BatchHandler, u16) {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let vars = [
        ("DATABASE_URL", url.as_str()),
        ("MASKING_KEY", TEST_KEY),
        ("DB_CONNECT_TIMEOUT_MS", "2000"),
    ];
    (handler_with(&vars).await, port)
}

#[tokio::test]
async fn unreachable_postgres_fails_the_invocation_and_reports_nothing_as_done() {
    let (h, port) = handler_on_a_closed_port().await;
    let err = h
        .handle(
            &SqsBatch::from(&load_event("sqs-mixed.json")),
            Deadline::NONE,
        )
        .await
        .map(|o| o.response)
        .unwrap_err();
    // Refused at once, and said so (no clock read: a retry loop would be
    // nextest's slow-timeout).
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(err.is_retryable());
    assert!(matches!(err, HandlerError::Database(_)));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{port}")) && msg.contains("reachable"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_connection_closed_between_invocations_is_reopened() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let first = synth::event(&Options {
        count: 20,
        seed: 1,
        ..Options::default()
    });
    h.handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    let killed: i64 = client
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'login-etl'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let second = synth::event(&Options {
        count: 20,
        seed: 2,
        ..Options::default()
    });
    assert!(
        h.handle(&SqsBatch::from(&second), Deadline::NONE)
            .await
            .map(|o| o.response)
            .unwrap()
            .batch_item_failures
            .is_empty()
    );
    assert_eq!(count_rows(&client).await, 40);
}

/// A large batch is read while its COPY is open: a record near its end
/// without a messageId, not an SQS message at all, or a payload cut short
/// there, is found after the first rows went into the COPY. The invocation
/// fails, nothing commits, and the connection serves the next batch.
#[tokio::test]
async fn a_bad_record_late_in_a_streamed_batch_fails_it_with_nothing_written() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let options = |seed| Options {
        count: 600,
        seed,
        ..Options::default()
    };
    let mut json = serde_json::to_value(synth::event(&options(1))).unwrap();
    json["Records"][550]["messageId"] = Value::from(42);
    let batch: SqsBatch = serde_json::from_value(json).unwrap();
    let err = h.handle(&batch, Deadline::NONE).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::MalformedRecord { index: 550 }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("record 550 of the batch is not an SQS message"),
        "{err}"
    );
    assert_eq!(count_rows(&db.client().await).await, 0);

    let mut json = serde_json::to_value(synth::event(&options(2))).unwrap();
    json["Records"][599]["messageId"] = Value::Null;
    let batch: SqsBatch = serde_json::from_value(json).unwrap();
    let err = h.handle(&batch, Deadline::NONE).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::MissingMessageId { index: 599 }),
        "{err}"
    );
    assert_eq!(count_rows(&db.client().await).await, 0);

    // The payload as Lambda sent it, cut short inside record 550: read as
    // far as it goes, so the first 550 rows went into the COPY.
    let text = serde_json::to_string(&synth::event(&options(4))).unwrap();
    let cut = text.match_indices("{\"messageId\"").nth(550).unwrap().0 + 30;
    let batch = SqsBatch::from_payload(bytes::Bytes::from(text[..cut].to_owned())).unwrap();
    let err = h.handle(&batch, Deadline::NONE).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::UnreadablePayload { index: 550 }),
        "{err}"
    );
    assert!(!err.is_retryable() && err.class() == "malformed_event");
    assert!(
        err.to_string()
            .contains("the payload stops being JSON at record 550"),
        "{err}"
    );
    assert_eq!(count_rows(&db.client().await).await, 0);

    let good = SqsBatch::from(&synth::event(&options(3)));
    let (resp, summary) = h.handle(&good, Deadline::NONE).await.unwrap().into_parts();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(summary.inserted, 600);
    assert_eq!(count_rows(&db.client().await).await, 600);
}

/// A FIFO batch without a DLQ stops validating at its first reject; the
/// ids after it are still read, so a malformed record past the stop fails
/// the batch, with the COPY (open for 600 rows) rolled back.
#[tokio::test]
async fn a_malformed_record_after_a_fifo_stop_fails_the_batch_with_nothing_written() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let options = |seed| Options {
        count: 600,
        seed,
        fifo: true,
        ..Options::default()
    };
    let mut json = serde_json::to_value(synth::event(&options(4))).unwrap();
    json["Records"][100]["body"] = Value::from("not a login");
    json["Records"][550]["body"] = serde_json::json!({"ip": "10.1.2.3"});
    let batch: SqsBatch = serde_json::from_value(json).unwrap();
    let err = h.handle(&batch, Deadline::NONE).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::MalformedRecord { index: 550 }),
        "{err}"
    );
    assert!(!err.to_string().contains("10.1.2.3"), "{err}");
    assert_eq!(count_rows(&db.client().await).await, 0);
    let good = SqsBatch::from(&synth::event(&options(5)));
    let (resp, summary) = h.handle(&good, Deadline::NONE).await.unwrap().into_parts();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(summary.inserted, 600);
}

/// With the database down, a batch holding a malformed record fails as
/// malformed (not retryable), not as the outage: it can never succeed.
#[tokio::test]
async fn a_malformed_record_fails_the_batch_as_such_while_the_database_is_down() {
    let (h, _) = handler_on_a_closed_port().await;
    let mut json = serde_json::to_value(load_event("sqs-mixed.json")).unwrap();
    json["Records"][2]["messageId"] = Value::from(7);
    let batch: SqsBatch = serde_json::from_value(json).unwrap();
    let err = h.handle(&batch, Deadline::NONE).await.unwrap_err();
    assert!(
        matches!(err, HandlerError::MalformedRecord { index: 2 }),
        "{err}"
    );
    assert!(!err.is_retryable() && err.class() == "malformed_event");
}

#[tokio::test]
async fn a_record_without_message_id_fails_the_invocation() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let mut event = load_event("sqs-valid.json");
    event.records[3].message_id = None;
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap_err();
    assert!(
        matches!(err, HandlerError::MissingMessageId { index: 3 }),
        "{err}"
    );
    assert_eq!(count_rows(&db.client().await).await, 0);
}
