//! The batch handler against a real PostgreSQL: one throwaway database per test.

use crate::common;

use common::oracle::{ExpectedRow, assert_table_matches, expected_row};
use common::sqs::{scripted_sqs, sqs_client};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, HandlerError, Outcome, SqsBatch};
use serde_json::Value;

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
             INSERT INTO user_logins VALUES ('old-1', 'ios', 'x', 'y', NULL, 230, '2020-01-01'),
                                            ('old-2', 'ios', 'x', 'y', NULL, 230, '2020-01-01');",
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
            "defects"
        ]
    );
    // The old table is the first partition of a partitioned user_logins.
    let (partitioned, old_rows): (bool, i64) = client
        .query_one(
            "SELECT (SELECT relkind = 'p' FROM pg_class WHERE oid = 'user_logins'::regclass), \
             (SELECT count(*) FROM user_logins_legacy WHERE user_id LIKE 'old-%')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((partitioned, old_rows), (true, 2));
    // migrating again is a no-op
    handler(&db).await;
    assert_eq!(count_rows(&client).await, 2 + event.records.len() as i64);
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
    let event = synth::event(&Options {
        count: 200,
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
        .batch_execute(&format!("ALTER TABLE user_logins ADD CONSTRAINT no_bad_users CHECK (user_id NOT IN ('{}', '{}'))", bad[0], bad[1]))
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
    assert_eq!(count_rows(&client).await, 198);
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
            "ALTER TABLE user_logins ADD CONSTRAINT no_bad_user CHECK (user_id <> '{}')",
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
    let copy = u32::from(count >= login_etl::testing::ingest::sink::COPY_MIN_ROWS);
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
    assert!(matches!(err, HandlerError::Sink(_)));
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

#[tokio::test]
async fn a_large_generated_batch_is_one_statement() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let event = synth::event(&Options {
        count: 10_000,
        invalid_every: 50,
        ..Options::default()
    });
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(resp.batch_item_failures.len(), 200);
    assert_eq!(summary.inserted, 9_800);
    assert_eq!(summary.statements, 1, "one COPY");
    assert_eq!(count_rows(&db.client().await).await, 9_800);
}

/// A batch large enough for the COPY fast path, with fresh message ids.
fn copy_sized(seed: u64) -> aws_lambda_events::event::sqs::SqsEvent {
    synth::event(&Options {
        count: login_etl::testing::ingest::sink::COPY_MIN_ROWS + 100,
        seed,
        ..Options::default()
    })
}

#[tokio::test]
async fn copy_fast_path_falls_back_to_insert_on_duplicates() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let n = login_etl::testing::ingest::sink::COPY_MIN_ROWS as u64 + 100;
    let first = copy_sized(1);
    let (_, summary) = h
        .handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(
        (summary.inserted, summary.statements),
        (n, 1),
        "fresh rows: one COPY"
    );

    // Redelivered: the COPY is refused (unique message_id), the INSERT finds duplicates.
    let (resp, summary) = h
        .handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(
        (summary.inserted, summary.duplicates, summary.statements),
        (0, n, 2)
    );

    // Half old, half new: only the new half is written, once.
    let second = copy_sized(2);
    let mut mixed = second.clone();
    mixed.records.truncate(n as usize / 2);
    mixed
        .records
        .extend(first.records[..n as usize / 2].iter().cloned());
    let (resp, summary) = h
        .handle(&SqsBatch::from(&mixed), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!((summary.inserted, summary.duplicates), (n / 2, n / 2));
    assert_eq!(count_rows(&client).await, (n + n / 2) as i64);
    let mut want: Vec<String> = first
        .records
        .iter()
        .chain(&mixed.records[..n as usize / 2])
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    want.sort();
    assert_eq!(message_ids_in_table(&client).await, want);
}

#[tokio::test]
async fn copy_fast_path_refused_row_in_a_fifo_batch_keeps_order_semantics() {
    fifo_batch_stops_at_refused_row(login_etl::testing::ingest::sink::COPY_MIN_ROWS + 100, 550)
        .await;
}

/// The ingest role of `login-etl grants` runs the function with the vault
/// on, COPY-sized and small batches, redelivery included, and can read back
/// nothing it wrote nor change a row.
#[tokio::test]
async fn the_ingest_role_is_all_the_function_needs_and_it_can_read_nothing_back() {
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let key = || {
        login_etl::testing::privacy::vault::DataKey::new(&[9; 32], vec![4, 5, 6], "local").unwrap()
    };
    let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    let big = copy_sized(5);
    for _ in 0..2 {
        let resp = h
            .handle(&SqsBatch::from(&big), Deadline::NONE)
            .await
            .map(|o| o.response)
            .expect("COPY-sized batch as the ingest role");
        assert_eq!(failures(&resp), expected_failures(&big));
    }
    let event = load_event("sqs-mixed.json");
    let first = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    assert_eq!(failures(&first), expected_failures(&event));
    let second = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    assert_eq!(failures(&second), expected_failures(&event));
    // It cannot read any other column back, nor change rows.
    let writer = connect(&url).await;
    for sql in [
        "SELECT masked_ip FROM user_logins",
        "SELECT * FROM user_logins",
        "DELETE FROM user_logins",
        "UPDATE user_logins SET locale = NULL",
        "SELECT ciphertext FROM user_logins_pii_vault",
        "SELECT wrapped_key FROM user_logins_vault_keys",
        "DELETE FROM user_logins_pii_vault",
        "CREATE TABLE user_logins_x (a int)",
    ] {
        let err = writer.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    let client = db.client().await;
    let vault_entries: i64 = client
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        vault_entries > 0,
        "vault entries were written by the ingest role"
    );
}

/// A COPY-sized batch goes in by the COPY fast path (one statement, the EMF
/// document says `copied`), and every column of every row equals the
/// oracle's, computed from the message text alone (tests/common/oracle.rs):
/// a column swapped, shifted or mis-encoded in the COPY's row fails here.
/// The batch mixes in records that are not logins (rows must stay aligned
/// with their messages), logins with every kind of defect real apps send
/// (their NULLs and their `defects` list in the COPY's binary format),
/// non-canonical IPv6 and IPv4-mapped addresses, padded device ids,
/// non-ASCII user ids, every `app_version` shape, null locales and a
/// record without `SentTimestamp` (rejected).
#[tokio::test]
async fn a_copy_batch_writes_every_column_of_every_row_as_the_oracle_computes() {
    let db = TestDb::create().await;
    let (metrics, docs) = captured_metrics();
    let h = handler(&db).await.with_metrics(metrics);
    let mut event = synth::event(&Options {
        count: 1_500,
        invalid_every: 23,
        defective_every: 17,
        seed: 7,
        ..Options::default()
    });
    // Hand-written valid logins at positions the generator made valid.
    let bodies = [
        r#"{"user_id": "u-ipv6", "app_version": "0.96", "device_type": "ios", "ip": "  2001:0DB8:0000:0000:0000:FF00:0042:8329 ", "locale": null, "device_id": "  123-45-6789\t"}"#,
        r#"{"user_id": "Zoë-用户-\u202e", "app_version": "12", "device_type": "android", "ip": "::ffff:10.1.2.3", "locale": "pt-BR", "device_id": "987-65-4321"}"#,
        r#"{"user_id": "u-v4", "app_version": "999.999.999", "device_type": "ios", "ip": "10.1.2.3", "locale": "de-CH", "device_id": "000-00-0000"}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        event.records[10 + i].body = Some((*body).to_owned());
    }
    without_sent_timestamp(&mut event.records[14]);
    let valid: Vec<_> = event
        .records
        .iter()
        .zip(expectations(&event))
        .filter(|(_, (_, e))| e.starts_with("insert"))
        .map(|(m, _)| m)
        .collect();
    assert!(valid.len() >= login_etl::testing::ingest::sink::COPY_MIN_ROWS);

    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert_eq!(failures(&resp), expected_failures(&event));
    assert_eq!(
        (summary.inserted, summary.duplicates, summary.statements),
        (valid.len() as u64, 0, 1),
        "every row in one statement"
    );
    let summary_doc = docs.lock().unwrap()[0].clone();
    assert_eq!(summary_doc["copied"], true, "by the COPY fast path");

    let want: Vec<ExpectedRow> = valid.iter().map(|m| expected_row(TEST_KEY, m)).collect();
    // The batch covers the shapes that matter.
    let texts: Vec<Value> = valid
        .iter()
        .map(|m| serde_json::from_str(m.body.as_deref().unwrap()).unwrap())
        .collect();
    assert!(want.iter().any(|w| w.locale.is_none()));
    assert!(want.iter().filter(|w| w.defects.is_some()).count() >= 10 * 8);
    assert_eq!(expectations(&event)[14].1, "reject:no_sent_timestamp");
    assert!(
        texts
            .iter()
            .any(|b| b["ip"].as_str().is_some_and(|ip| ip.contains(':')))
    );
    for parts in 1..=3 {
        assert!(
            want.iter().any(|w| w
                .app_version_text
                .as_ref()
                .is_some_and(|t| t.split('.').count() == parts)),
            "a version of {parts} parts"
        );
    }
    assert_table_matches(&db.client().await, &want).await;
}

/// The number of transactions the INSERT path tries for `n` rows of which
/// those at `refused` are refused: every range is tried once, and a range
/// holding a refused row is split in two (left half first) down to that
/// row. Derived here from that rule, not from the crate.
fn bisection_statements(n: usize, refused: &[usize]) -> u32 {
    let mut statements = 0;
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..n);
    while let Some(r) = todo.pop() {
        if r.is_empty() {
            continue;
        }
        statements += 1;
        if r.len() > 1 && refused.iter().any(|i| r.contains(i)) {
            let mid = r.start + r.len() / 2;
            todo.push(mid..r.end);
            todo.push(r.start..mid);
        }
    }
    statements
}

/// The EMF documents the handler writes for one batch with duplicates
/// (redelivered and repeated in the batch), rows the database refuses,
/// rejected records sent to the DLQ, one whose copy the DLQ refuses and
/// empty bodies (never sent), checked field by field against counts this
/// test derives from how it built the batch; the ingest lag against the
/// oldest `SentTimestamp` it set (not the first record's), within the
/// invocation's time.
#[tokio::test]
async fn the_emf_documents_of_a_batch_count_what_happened_to_each_record() {
    use login_etl::testing::ingest::dlq::DeadLetterQueue;
    let db = TestDb::create().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut event = synth::event(&Options {
        count: 120,
        invalid_every: 6,
        seed: 96,
        sent_timestamp_ms: now_ms - 600_000,
        ..Options::default()
    });
    let label = |m: &aws_lambda_events::event::sqs::SqsMessage| {
        m.message_attributes["expect"].string_value.clone().unwrap()
    };
    // An earlier delivery committed the first 12 records.
    let mut earlier = event.clone();
    earlier.records.truncate(12);
    handler(&db)
        .await
        .handle(&SqsBatch::from(&earlier), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    let redelivered = earlier
        .records
        .iter()
        .filter(|m| label(m).starts_with("insert"))
        .count();
    // One rejected record whose DLQ copy the queue refuses.
    let dlq_refused = 40;
    assert_eq!(label(&event.records[dlq_refused]), "insert");
    event.records[dlq_refused].body = Some(r#"{"FAIL_ME": "a field name the copy keeps"}"#.into());
    event.records[dlq_refused]
        .message_attributes
        .get_mut("expect")
        .unwrap()
        .string_value = Some("reject:not_a_login_event".into());
    // One message delivered twice in the batch.
    let repeated = event.records[20].clone();
    assert_eq!(label(&repeated), "insert");
    event.records.push(repeated);
    // The oldest message sits in the middle; one has no SentTimestamp.
    let oldest_ms = now_ms - 3_600_000;
    event.records[70]
        .attributes
        .insert("SentTimestamp".into(), oldest_ms.to_string());
    without_sent_timestamp(&mut event.records[71]);
    // Two rows the database refuses.
    let refused_at = [50, 100];
    let user = |i: usize| -> String {
        let body: Value = serde_json::from_str(event.records[i].body.as_deref().unwrap()).unwrap();
        body["user_id"].as_str().unwrap().to_owned()
    };
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER TABLE user_logins ADD CONSTRAINT refuse_two CHECK (user_id NOT IN ('{}', '{}'))",
            user(refused_at[0]),
            user(refused_at[1])
        ))
        .await
        .unwrap();

    // What the test expects, from how it built the batch.
    let labels: Vec<String> = event.records.iter().map(label).collect();
    let valid: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].starts_with("insert"))
        .collect();
    let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
    for l in &labels {
        if let Some(code) = l.strip_prefix("reject:") {
            *by_reason.entry(code.to_owned()).or_default() += 1;
        }
    }
    let rejected: u64 = by_reason.values().sum();
    let empty = event
        .records
        .iter()
        .filter(|m| m.body.as_deref() == Some(""))
        .count() as u64;
    assert!(empty > 0 && by_reason.len() > 2);
    let duplicates = redelivered as u64 + 1;
    let refused = refused_at.len() as u64;
    let inserted = valid.len() as u64 - duplicates - refused;
    // Empty bodies too reach the DLQ (a copy says what they were); only the
    // copy the queue refuses and the refused rows are failures.
    let failures_want = 1 + refused;
    let sent = rejected - 1;
    let rows_refused: Vec<usize> = refused_at
        .iter()
        .map(|r| valid.iter().position(|v| v == r).unwrap())
        .collect();
    let statements = bisection_statements(valid.len(), &rows_refused);

    let port = scripted_sqs(false).await;
    let (metrics, docs) = captured_metrics();
    let h = handler(&db)
        .await
        .with_dead_letter_queue(DeadLetterQueue::new(
            sqs_client(&format!("http://127.0.0.1:{port}")).await,
            format!("http://127.0.0.1:{port}/000000000000/login-dlq"),
        ))
        .with_metrics(metrics);
    let before_ms = chrono::Utc::now().timestamp_millis();
    let started = std::time::Instant::now();
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    let took_ms = started.elapsed().as_millis() as u64;
    let after_ms = chrono::Utc::now().timestamp_millis();
    assert_eq!(resp.batch_item_failures.len() as u64, failures_want);

    let docs = docs.lock().unwrap().clone();
    assert_eq!(
        docs.len(),
        1 + by_reason.len(),
        "the summary and one document per rejection reason"
    );
    let d = &docs[0];
    assert_eq!(d["message"], "batch processed");
    for (name, want) in [
        ("RecordsReceived", event.records.len() as u64),
        ("RowsInserted", inserted),
        ("Duplicates", duplicates),
        ("Rejected", rejected),
        ("Refused", refused),
        ("BatchItemFailures", failures_want),
        ("SentToDlq", sent),
        ("InvocationFailed", 0),
        ("ColdStart", 1),
    ] {
        assert_eq!(d[name].as_u64(), Some(want), "{name}");
    }
    // The partitions made ahead, from the catalog: migrate made them
    // contiguous from today to its newest.
    let newest: chrono::NaiveDate = db
        .client()
        .await
        .query_one("SELECT max(hi) FROM login_etl_partitions()", &[])
        .await
        .unwrap()
        .get(0);
    let ahead = (newest - chrono::Utc::now().date_naive()).num_days() - 1;
    assert!(ahead >= 1, "migrate made partitions ahead");
    assert_eq!(d["PartitionDaysAhead"].as_i64(), Some(ahead));
    let lag = d["IngestLagMs"].as_u64().expect("IngestLagMs");
    let (low, high) = (
        (before_ms - oldest_ms) as u64,
        (after_ms - oldest_ms) as u64,
    );
    assert!(
        (low..=high).contains(&lag),
        "IngestLagMs {lag} is now minus the oldest SentTimestamp: within {low}..={high}"
    );
    let duration = d["BatchDurationMs"].as_u64().expect("BatchDurationMs");
    assert!(
        duration <= took_ms,
        "BatchDurationMs {duration} > {took_ms}"
    );
    assert_eq!(d["statements"].as_u64(), Some(u64::from(statements)));
    assert_eq!(d["copied"], false);
    assert_eq!(d["fifo"], false);
    assert_eq!(d["function_name"], "login-etl");
    assert_eq!(
        d["rejected_by_reason"],
        serde_json::to_value(&by_reason).unwrap()
    );
    // Every metric checked above is declared, so CloudWatch extracts it.
    let declared: Vec<&str> = d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in [
        "RecordsReceived",
        "RowsInserted",
        "Duplicates",
        "Rejected",
        "Refused",
        "BatchItemFailures",
        "SentToDlq",
        "BatchDurationMs",
        "InvocationFailed",
        "IngestLagMs",
        "PartitionDaysAhead",
    ] {
        assert!(declared.contains(&name), "{name} declared");
    }
    let per_reason: std::collections::BTreeMap<String, u64> = docs[1..]
        .iter()
        .map(|r| {
            assert_eq!(r["message"], "records rejected");
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["Rejected"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_reason, by_reason, "one document per reason, its count");
}

/// A producer adds fields: `app_build`, declared in `EXTRA_FIELDS`, is
/// kept in `extra` as the JSON it was (a nested document is not kept: a
/// defect of its row); `email`, declared nowhere, is named in the EMF
/// document and stored nowhere. With `UNKNOWN_FIELDS=reject` the message
/// goes to the DLQ as `unknown_field.email`, its value masked.
#[tokio::test]
async fn a_declared_field_is_kept_and_an_undeclared_one_named_never_stored() {
    const EMAIL: &str = "someone.unique@example.com";
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let mut event = synth::event(&Options {
        count: 3,
        seed: 54,
        ..Options::default()
    });
    for m in &mut event.records[..2] {
        let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["app_build"] = serde_json::json!("7.1 (beta)");
        body["email"] = EMAIL.into();
        m.body = Some(body.to_string());
    }
    let mut nested: Value =
        serde_json::from_str(event.records[2].body.as_deref().unwrap()).unwrap();
    nested["app_build"] = serde_json::json!({"ip": "10.1.2.3"});
    event.records[2].body = Some(nested.to_string());
    let (metrics, docs) = captured_metrics();
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", TEST_KEY),
        ("EXTRA_FIELDS", "app_build"),
    ])
    .await
    .with_metrics(metrics);
    let summary = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!((summary.inserted, summary.unknown_fields), (3, 2));
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT message_id, extra, row_to_json(u)::text, defects FROM user_logins u ORDER BY message_id",
            &[],
        )
        .await
        .unwrap();
    let mut kept = 0;
    for row in &rows {
        let whole: String = row.get(2);
        assert!(!whole.contains(EMAIL), "an undeclared field was stored");
        assert!(!whole.contains("10.1.2.3"), "a nested document was stored");
        let extra: Option<String> = client
            .query_one(
                "SELECT extra::text FROM user_logins WHERE message_id = $1",
                &[&row.get::<_, String>(0)],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(extra) = extra {
            let v: Value = serde_json::from_str(&extra).unwrap();
            assert_eq!(v, serde_json::json!({"app_build": "7.1 (beta)"}));
            assert_eq!(row.get::<_, Option<Vec<String>>>(3), None, "clean");
            kept += 1;
        } else {
            assert_eq!(
                row.get::<_, Option<Vec<String>>>(3),
                Some(vec!["app_build.not_scalar".to_owned()])
            );
        }
    }
    assert_eq!(kept, 2, "kept where sent, NULL elsewhere");
    let doc = docs.lock().unwrap()[0].clone();
    assert_eq!(doc["UnknownFields"], 2);
    assert_eq!(doc["unknown_fields"], serde_json::json!(["email"]));
    assert!(!doc.to_string().contains(EMAIL));

    // Refused instead, to the DLQ with its reason and no value of it.
    let (port, sent) = common::sqs::capturing_sqs().await;
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", TEST_KEY),
        ("EXTRA_FIELDS", "app_build"),
        ("UNKNOWN_FIELDS", "reject"),
    ])
    .await
    .with_dead_letter_queue(login_etl::testing::ingest::dlq::DeadLetterQueue::new(
        sqs_client(&format!("http://127.0.0.1:{port}")).await,
        format!("http://127.0.0.1:{port}/000000000000/login-dlq"),
    ));
    let summary = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!(
        summary.inserted, 1,
        "the nested document is a defect, not a reason"
    );
    assert_eq!(summary.rejected.get("unknown_field.email"), Some(&2));
    let sent = sent.lock().unwrap().clone();
    let entries: Vec<&Value> = sent
        .iter()
        .flat_map(|b| b["Entries"].as_array().unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(
            e["MessageAttributes"]["rejection_code"]["StringValue"],
            "unknown_field.email"
        );
        assert!(!e.to_string().contains(EMAIL));
    }
}
