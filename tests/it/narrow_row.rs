//! The online upgrade of a wide `user_logins` with rows to the narrow row
//! (src/table/schema/narrow.rs), while the previous layout's writes go on:
//! inserts, a COPY, redeliveries, re-keys and erasures, each in a
//! transaction under a short lock timeout, none tried again. After it,
//! every row is there once with the values last written, rows from before
//! login-etl included, and this version's function finds a message the
//! previous one stored as a duplicate.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, Outcome, SqsBatch};
use tokio_postgres::Client;

/// The wide layout as 0.2.0 left it (its columns: `user_tag` came after;
/// its key and partitions by `create_date`), without the rest of the schema.
fn wide_sql(today: chrono::NaiveDate) -> String {
    let day = |d: i64| today + TimeDelta::days(d);
    let mut sql = String::from(
        "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
            masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date,
            message_id varchar(128), app_version_text varchar(32), sent_at timestamptz,
            key_version smallint NOT NULL DEFAULT 1, extra jsonb, defects text[])
            PARTITION BY RANGE (create_date);
         CREATE UNIQUE INDEX user_logins_key ON user_logins (sent_at, message_id, create_date);
         CREATE TABLE user_logins_default PARTITION OF user_logins DEFAULT;",
    );
    for d in -3..=1 {
        sql.push_str(&format!(
            "CREATE TABLE user_logins_p{} PARTITION OF user_logins FOR VALUES FROM ('{}') TO ('{}');",
            day(d).format("%Y%m%d"),
            day(d),
            day(d + 1)
        ));
    }
    sql
}

/// A token in the wide layout: 64 hex digits.
fn token(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// What a row should hold after the upgrade: its masked ip and key version.
type Expected = BTreeMap<String, (String, i16)>;

/// What the writer left: the rows it keyed by message id, and the user ids
/// of the rows it wrote without one (the upstream writer's), still there.
#[derive(Default)]
struct Written {
    rows: Expected,
    keyless: std::collections::BTreeSet<String>,
}

/// One write round of the previous layout, in its own transactions: ten new
/// rows by INSERT, one of them again (a redelivery), five by COPY; then,
/// while `user_logins` is still the old table, a re-key of the round
/// before's rows and an erasure of the one before that. The round's
/// insert counts are checked: exactly once, through the cutover too.
async fn write_round(client: &mut Client, round: usize, now: DateTime<Utc>, written: &mut Written) {
    let expected = &mut written.rows;
    let id = |k: usize| format!("{:08x}-0000-4000-8000-{:012x}", round, k);
    let ids: Vec<String> = (0..10).map(id).collect();
    let ips: Vec<String> = ids.iter().map(|i| token(i)).collect();
    let sent = now + TimeDelta::milliseconds(round as i64);
    let insert = "INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version,
            create_date, message_id, app_version_text, sent_at, key_version)
        SELECT 'writer', 'ios', ip, ip, 'en_US', 4002000, ($3::timestamptz AT TIME ZONE 'UTC')::date, m,
            '4.2.0', $3, 1
        FROM unnest($1::text[], $2::text[]) AS r(m, ip)
        ON CONFLICT DO NOTHING";
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    let n = tx.execute(insert, &[&ids, &ips, &sent]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(n, 10, "round {round}: every new row inserted once");
    let again = tx_execute(
        client,
        insert,
        &[&ids[..1].to_vec(), &ips[..1].to_vec(), &sent],
    )
    .await;
    assert_eq!(again, 0, "round {round}: a redelivery is no second row");
    for (i, ip) in ids.iter().zip(&ips) {
        expected.insert(i.clone(), (ip.clone(), 1));
    }

    let copied: Vec<String> = (10..15).map(id).collect();
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    let sink = tx
        .copy_in(
            "COPY user_logins (user_id, masked_ip, create_date, message_id, app_version, app_version_text, sent_at) FROM STDIN",
        )
        .await
        .unwrap();
    let mut text = String::new();
    for m in &copied {
        text.push_str(&format!(
            "copier\t{}\t{}\t{m}\t4002000\t4.2.0\t{}\n",
            token(m),
            sent.date_naive(),
            sent.to_rfc3339()
        ));
    }
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from(text)).await.unwrap();
    sink.finish().await.unwrap();
    tx.commit().await.unwrap();
    for m in &copied {
        expected.insert(m.clone(), (token(m), 1));
    }
    // A row as the upstream table's writer wrote it: no message id, no
    // sent_at (given a key as it comes, while the upgrade runs).
    let keyless = format!("keyless-{round}");
    tx_execute(
        client,
        "INSERT INTO user_logins (user_id, masked_ip, create_date) VALUES ($1, $2, ($3::timestamptz AT TIME ZONE 'UTC')::date)",
        &[&keyless, &token(&keyless), &sent],
    )
    .await;
    written.keyless.insert(keyless);

    // The previous release's re-key and erasure act on the old table only
    // (docs/upgrade.md: from `migrate` on, operators' commands run with
    // the new binary): taken under the table's lock, so that the check of
    // what user_logins is holds until the statement ran.
    if round < 2 {
        return;
    }
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '2s'; LOCK TABLE user_logins IN ROW EXCLUSIVE MODE")
        .await
        .unwrap();
    let table: bool = tx
        .query_one(
            "SELECT relkind = 'p' FROM pg_class WHERE oid = 'user_logins'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if table {
        let before = format!("{:08x}-", round - 1);
        let rekeyed = tx
            .execute(
                "UPDATE user_logins SET masked_ip = encode(sha256(masked_ip::bytea), 'hex'), key_version = 2
                 WHERE message_id LIKE $1 || '%'",
                &[&before],
            )
            .await
            .unwrap();
        assert_eq!(
            rekeyed, 15,
            "round {round}: the re-key found the round before's rows"
        );
        let erased = format!("{:08x}-", round - 2);
        let gone = tx
            .execute(
                "DELETE FROM user_logins WHERE message_id LIKE $1 || '%'",
                &[&erased],
            )
            .await
            .unwrap();
        assert_eq!(gone, 15, "round {round}: the erasure found its rows");
        let keyless = format!("keyless-{}", round - 2);
        let gone = tx
            .execute("DELETE FROM user_logins WHERE user_id = $1", &[&keyless])
            .await
            .unwrap();
        assert_eq!(
            gone, 1,
            "round {round}: the erasure found the row without a key"
        );
        written.keyless.remove(&keyless);
        for (id, (ip, version)) in written.rows.iter_mut() {
            if id.starts_with(&before) {
                *ip = hex::encode(sha2::Sha256::digest(ip.as_bytes()));
                *version = 2;
            }
        }
        written.rows.retain(|id, _| !id.starts_with(&erased));
    }
    tx.commit().await.unwrap();
}

/// Two counts a query selects.
async fn counts(client: &Client, sql: &str) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client.query_one(sql, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

async fn tx_execute(
    client: &mut Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> u64 {
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL lock_timeout = '2s'")
        .await
        .unwrap();
    let n = tx.execute(sql, params).await.unwrap();
    tx.commit().await.unwrap();
    n
}

use sha2::Digest;

#[tokio::test]
async fn a_wide_table_with_rows_is_upgraded_while_the_previous_layout_writes() {
    let db = TestDb::create().await;
    let owner = db.client().await;
    let today = Utc::now().date_naive();
    owner.batch_execute(&wide_sql(today)).await.unwrap();
    // 20,000 rows over the last three days as the function wrote them,
    // and 300 from before login-etl (no sent_at, no message id), two of
    // them alike in every column.
    owner
        .batch_execute(&format!(
            "INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version,
                create_date, message_id, app_version_text, sent_at, key_version)
             SELECT 'user-' || g % 500, 'android', encode(sha256(('ip' || g)::bytea), 'hex'),
                 encode(sha256(('d' || g)::bytea), 'hex'), 'en_US', 4002000 + g % 7, (t AT TIME ZONE 'UTC')::date,
                 gen_random_uuid()::text, '4.2.' || g % 7 || CASE WHEN g % 20 = 0 THEN '-beta' ELSE '' END, t, 1
             FROM generate_series(1, 20000) g,
                 LATERAL (SELECT '{start}'::timestamptz + (g * interval '3 days') / 20000 AS t) s;
             INSERT INTO user_logins (user_id, masked_ip, create_date, app_version)
             SELECT 'upstream-' || g, encode(sha256(('up' || g)::bytea), 'hex'), DATE '{old}', 3001000
             FROM generate_series(1, 298) g;
             INSERT INTO user_logins (user_id, masked_ip, create_date, app_version)
             SELECT 'twin', encode(sha256('twin'::bytea), 'hex'), DATE '{old}', 3001000 FROM generate_series(1, 2);",
            start = (today - TimeDelta::days(3)).and_hms_opt(0, 0, 0).unwrap().and_utc().to_rfc3339(),
            old = today - TimeDelta::days(2),
        ))
        .await
        .unwrap();
    // Messages the previous release stored a minute ago, to come again.
    let sent_ms = Utc::now().timestamp_millis() - 60_000;
    let stored_before = synth::event(&Options {
        count: 20,
        seed: 75,
        invalid_every: 0,
        sent_timestamp_ms: sent_ms,
        ..Options::default()
    });
    for m in &stored_before.records {
        let sent_before = DateTime::from_timestamp_millis(
            m.attributes["SentTimestamp"]
                .parse()
                .expect("a SentTimestamp"),
        )
        .unwrap();
        owner
            .execute(
                "INSERT INTO user_logins (user_id, create_date, message_id, sent_at, masked_ip)
                 VALUES ('before', $1, $2, $3, NULL)",
                &[
                    &sent_before.date_naive(),
                    &m.message_id.as_deref().unwrap(),
                    &sent_before,
                ],
            )
            .await
            .unwrap();
    }
    let before: Vec<(String, String, i16)> = owner
        .query(
            "SELECT message_id, coalesce(masked_ip, ''), key_version FROM user_logins WHERE message_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    // An adopter's own readers of the old table: one of every column, one
    // of two columns only.
    let (analyst, auditor) = (
        format!("{}_analyst", db.name),
        format!("{}_auditor", db.name),
    );
    db.bare_named_role(&analyst).await;
    db.bare_named_role(&auditor).await;
    owner
        .batch_execute(&format!(
            "GRANT SELECT ON user_logins TO \"{analyst}\";
             GRANT SELECT (user_id, create_date) ON user_logins TO \"{auditor}\""
        ))
        .await
        .unwrap();

    // The previous layout's writer, until a round ends wholly after the cutover.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, rounds_done) = (Arc::clone(&stop), Arc::clone(&rounds_done));
        let mut client = db.client().await;
        let now = Utc::now();
        tokio::spawn(async move {
            let mut written = Written::default();
            let mut round = 0;
            while !stop.load(Ordering::SeqCst) {
                write_round(&mut client, round, now, &mut written).await;
                round += 1;
                rounds_done.fetch_add(1, Ordering::SeqCst);
            }
            written
        })
    };
    let rounds = |n: usize| {
        let (done, w) = (Arc::clone(&rounds_done), &writer);
        move || {
            let done = Arc::clone(&done);
            async move { w.is_finished() || done.load(Ordering::SeqCst) >= n }
        }
    };
    wait_until("three rounds written before the upgrade", rounds(3)).await;
    let config = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| db.url.clone())
    })
    .unwrap();
    let target = login_etl::startup::migrate(&config, login_etl::Profile::Masking)
        .await
        .expect("the upgrade");
    assert!(target.contains("(applied)"), "{target}");
    let after = rounds_done.load(Ordering::SeqCst) + 2;
    wait_until("a round written wholly after the cutover", rounds(after)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writer
        .await
        .expect("no write of the previous layout failed");

    let kind: String = owner
        .query_one(
            "SELECT relkind::text FROM pg_class WHERE oid = 'user_logins'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kind, "v", "user_logins is the view over user_logins_rows");
    let gone: bool = owner
        .query_one("SELECT to_regclass('user_logins_wide') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(gone, "the old parent is dropped");

    // The readers read the view as they read the table, no more.
    const EVERY_COLUMN: &str = "SELECT count(*), count(masked_ip) FROM user_logins";
    const TWO_COLUMNS: &str = "SELECT count(user_id), count(create_date) FROM user_logins";
    let analyst_client = connect(&with_user(&db.url, &analyst)).await;
    let auditor_client = connect(&with_user(&db.url, &auditor)).await;
    assert_eq!(
        counts(&analyst_client, EVERY_COLUMN)
            .await
            .expect("the analyst reads every column of the view"),
        counts(&owner, EVERY_COLUMN).await.unwrap()
    );
    assert_eq!(
        counts(&auditor_client, TWO_COLUMNS)
            .await
            .expect("the auditor reads its two columns of the view"),
        counts(&owner, TWO_COLUMNS).await.unwrap()
    );
    for (reader, sql) in [
        (&auditor_client, "SELECT count(masked_ip) FROM user_logins"),
        (&analyst_client, "SELECT count(*) FROM user_logins_rows"),
        (&auditor_client, "SELECT count(*) FROM user_logins_rows"),
    ] {
        let refused = reader
            .query_one(sql, &[])
            .await
            .expect_err("a reader reads no column it was not granted, nor the table beneath");
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }

    // Every row once, with the values last written.
    let now: BTreeMap<String, (String, i16)> = owner
        .query(
            "SELECT message_id, coalesce(masked_ip, ''), key_version FROM user_logins
             WHERE message_id NOT LIKE 'upstream-%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut want: BTreeMap<String, (String, i16)> =
        before.into_iter().map(|(m, ip, v)| (m, (ip, v))).collect();
    want.extend(written.rows);
    let total: i64 = owner
        .query_one(
            "SELECT count(*) FROM user_logins WHERE message_id NOT LIKE 'upstream-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total as usize, now.len(), "no message stored twice");
    assert_eq!(
        now.len(),
        want.len(),
        "no row lost, none kept that was erased"
    );
    assert!(now == want, "every row holds the values last written");
    // The rows from before login-etl: each kept (the two alike too), keyed
    // by a message id of their own, at their day's midnight.
    let upstream = owner
        .query_one(
            "SELECT count(*), count(DISTINCT message_id), count(*) FILTER (WHERE user_id = 'twin'),
                    bool_and(sent_at = create_date::timestamp AT TIME ZONE 'UTC')
             FROM user_logins WHERE message_id LIKE 'upstream-%'",
            &[],
        )
        .await
        .unwrap();
    let keyless = written.keyless.len() as i64;
    assert_eq!(upstream.get::<_, i64>(0), 300 + keyless);
    assert_eq!(upstream.get::<_, i64>(1), 300 + keyless);
    let kept: std::collections::BTreeSet<String> = owner
        .query(
            "SELECT user_id FROM user_logins WHERE user_id LIKE 'keyless-%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        kept, written.keyless,
        "rows without a key: each once, none erased kept"
    );
    assert_eq!(upstream.get::<_, i64>(2), 2);
    assert!(upstream.get::<_, bool>(3));
    // The values as they read before: a version with a suffix keeps it.
    let beta: i64 = owner
        .query_one(
            "SELECT count(*) FROM user_logins WHERE app_version_text LIKE '%-beta'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(beta, 1000);

    // This version's function, on the upgraded table: a message the
    // previous release stored comes again, and is no second row.
    let h = handler(&db).await;
    let (resp, again) = h
        .handle(&SqsBatch::from(&stored_before), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .expect("the batch is handled");
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    assert_eq!((again.inserted, again.duplicates), (0, 20));
}
