//! Large batches: one statement, the COPY fast path and its fallbacks, the
//! ingest role alone, every column of a COPY-sized batch against the oracle.

use super::*;

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
        count: login_etl::ingest::sink::COPY_MIN_ROWS + 100,
        seed,
        ..Options::default()
    })
}

#[tokio::test]
async fn copy_fast_path_falls_back_to_insert_on_duplicates() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let n = login_etl::ingest::sink::COPY_MIN_ROWS as u64 + 100;
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
    let n = login_etl::ingest::sink::COPY_MIN_ROWS;
    fifo_batch_stops_at_refused_row(n + 100, n + 50).await;
}

/// The ingest role of `login-etl grants` runs the function with the vault
/// on, COPY-sized and small batches, redelivery included, and can read back
/// nothing it wrote nor change a row.
#[tokio::test]
async fn the_ingest_role_is_all_the_function_needs_and_it_can_read_nothing_back() {
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let key = || login_etl::privacy::vault::DataKey::new(&[9; 32], vec![4, 5, 6], "local").unwrap();
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
    assert!(valid.len() >= login_etl::ingest::sink::COPY_MIN_ROWS);

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
