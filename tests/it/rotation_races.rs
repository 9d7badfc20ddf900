//! `login-etl rotate-key` beside what runs with it, on the real PostgreSQL,
//! each program as its granted role: the races the soak (tests/soak/) and a
//! review found, each replayed here on purpose.

use crate::common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::keys::*;
use common::*;
use login_etl::privacy::rekey::{self, RekeyOptions};
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;

/// Vault entries of `n` distinct ip values at version 1, inserted as the
/// owner: (kind, value's token at version 1, at version 2).
async fn fill_vault(db: &TestDb, n: usize) -> Vec<(String, String)> {
    let (one, two) = (masker(1), masker(2));
    let mut pairs = Vec::new();
    for i in 0..n {
        let ip: std::net::IpAddr = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
            .parse()
            .unwrap();
        pairs.push((
            one.ip(&ip).as_str().to_owned(),
            two.ip(&ip).as_str().to_owned(),
        ));
    }
    let tokens: Vec<&str> = pairs.iter().map(|(t, _)| t.as_str()).collect();
    db.client()
        .await
        .execute(
            "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version) \
             SELECT 'ip', t, 'k', '\\x000102030405060708090a0b'::bytea, '\\x00'::bytea, 1, 2 FROM unnest($1::text[]) t",
            &[&tokens],
        )
        .await
        .unwrap();
    pairs
}

/// Functions already on version 2 store the new tokens of values whose old
/// entries the re-key has not reached yet (their twins), one transaction
/// each, from the switch until `done`: the interleaving in which rotate-key
/// used to stop with SQLSTATE 23505 on the vault's primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_rekey_finishes_while_functions_store_new_twins() {
    let db = TestDb::create().await;
    db.migrate().await;
    let pairs = fill_vault(&db, 4_000).await;
    let ingest = db.role_url(Role::Ingest).await;
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, admin, twins) = (done.clone(), db.client().await, pairs.clone());
        let ingest = connect(&ingest).await;
        tokio::spawn(async move {
            while admin
                .query_one("SELECT version FROM user_logins_key_state", &[])
                .await
                .unwrap()
                .get::<_, i16>(0)
                < 2
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut stored = 0;
            for (_, twin) in twins.iter().rev() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                // As the function stores one (its owner's function).
                stored += ingest
                    .execute(
                        "SELECT login_etl_store_vault('k', 'local', '\\x01'::bytea, \
                         ARRAY['ip'], ARRAY[$1::varchar], ARRAY['\\x0c0b0a090807060504030201'::bytea], \
                         ARRAY['\\x01'::bytea], ARRAY[current_date], 2::int2, 2::int2)",
                        &[&twin],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            stored
        })
    };
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    let options = RekeyOptions {
        chunk_pages: 10_000,
        ..RekeyOptions::default()
    };
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let rotated = rekey::rotate(&mut rotate, &masker(2), CALLER, options, &mut |_| {}).await;
    done.store(true, Ordering::SeqCst);
    let twins_stored = writer.await.unwrap();
    let report = rotated.expect("rotate-key finishes the first time, twins arriving or not");
    assert!(
        twins_stored > 0,
        "the functions stored twins beside the re-key"
    );
    let vault = db
        .client()
        .await
        .query("SELECT token, key_version FROM user_logins_pii_vault", &[])
        .await
        .unwrap();
    assert_eq!(
        vault.len(),
        pairs.len(),
        "one entry per value, twins merged"
    );
    let want: std::collections::BTreeSet<&str> = pairs.iter().map(|(_, t)| t.as_str()).collect();
    for r in &vault {
        assert_eq!(r.get::<_, i16>(1), 2, "every entry at version 2");
        assert!(
            want.contains(r.get::<_, &str>(0)),
            "every token a value's version-2 token"
        );
    }
    assert_eq!(
        report.vault_entries,
        pairs.len() as u64,
        "each old entry re-keyed or merged once"
    );
}

/// message id -> (ip, device_id) as sent.
fn values(event: &aws_lambda_events::event::sqs::SqsEvent) -> HashMap<String, (IpAddr, String)> {
    event
        .records
        .iter()
        .map(|m| {
            let body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            (
                m.message_id.clone().unwrap(),
                (
                    body["ip"].as_str().unwrap().trim().parse().unwrap(),
                    body["device_id"].as_str().unwrap().trim().to_owned(),
                ),
            )
        })
        .collect()
}

/// Rows of two days in the DEFAULT partition, one after the other on every
/// page; `maintain` makes the partition of one of them between two chunks
/// of rotate-key's walk of the DEFAULT partition's range. The rows it moved
/// and the rows it left then sit at the same page and line numbers (ctids)
/// in two tables: each chunk must re-key only rows of the table it walks,
/// or one row gets another's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_made_out_of_the_default_partition_mid_walk_keeps_every_rows_tokens() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let maintain = db.role_url(Role::Maintain).await;
    let today = chrono::Utc::now().date_naive();
    let noon = |days_ago: i64| {
        (today - chrono::TimeDelta::days(days_ago))
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    };
    let [a, b] = [(10, 31), (11, 32)].map(|(days_ago, seed)| {
        synth::event(&Options {
            count: 1_500,
            seed,
            sent_timestamp_ms: noon(days_ago),
            ..Options::default()
        })
    });
    let mut mixed = a.clone();
    mixed.records = a
        .records
        .iter()
        .zip(&b.records)
        .flat_map(|(x, y)| [x.clone(), y.clone()])
        .collect();
    let h = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", &doc(&K, 1)),
        ("ERASURE_KEY", &doc(&E, 1)),
    ])
    .await;
    handle_all_ok(&h, &mixed).await;
    let in_default: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM user_logins_default", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(in_default, 3_000, "both days in the DEFAULT partition");

    let first_day = today - chrono::TimeDelta::days(10);
    let mut made = false;
    let mut between_chunks = |_: rekey::Progress| {
        if made {
            return;
        }
        made = true;
        let maintain = maintain.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let c = connect(&maintain).await;
                    let m = login_etl::table::partitions::ensure_partition(&c, first_day)
                        .await
                        .unwrap();
                    assert_eq!(
                        m.map(|m| m.moved),
                        Some(1_500),
                        "one day moved out of DEFAULT"
                    );
                })
        })
        .join()
        .unwrap();
    };
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    let options = RekeyOptions {
        chunk_pages: 1,
        progress_every: Duration::ZERO,
        ..RekeyOptions::default()
    };
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    rekey::rotate(
        &mut rotate,
        &masker(2),
        CALLER,
        options,
        &mut between_chunks,
    )
    .await
    .expect("rotate-key finishes");
    assert!(made, "the partition was made between two chunks");

    let sent = values(&mixed);
    let two = masker(2);
    let rows = db
        .client()
        .await
        .query(
            "SELECT message_id, masked_ip, masked_device_id, key_version FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3_000);
    let wrong = rows
        .iter()
        .filter(|r| {
            let (ip, device) = &sent[r.get::<_, &str>(0)];
            r.get::<_, i16>(3) != 2
                || r.get::<_, &str>(1) != two.ip(ip).as_str()
                || r.get::<_, &str>(2) != two.device_id(device).as_str()
        })
        .count();
    assert_eq!(
        wrong, 0,
        "rows whose tokens are not their own values' at version 2"
    );
}

/// The session of `pid` waits for a lock (pg_stat_activity, as the admin).
async fn waits_for_a_lock(admin: &tokio_postgres::Client, pid: i32) -> bool {
    for _ in 0..200 {
        let waiting: bool = admin
            .query_one(
                "SELECT coalesce((SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1), false)",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// The function's vault write and rotate-key's chunk of the vault lock the
/// twins they share in one order, (kind, token), each in one statement, so
/// neither waits for the other in a circle. The review's interleaving, held
/// in place by a third session's lock on the first twin: the function
/// waits to move that twin forward and would then store the second, while
/// the chunk moves the old entries of both values to their twins. In the
/// order of before (the function's UPDATE of the entries behind, then its
/// INSERT of the others; the chunk's inserts in physical order) the two
/// deadlocked as soon as the lock went: `deadlock detected` in the
/// function's transaction, a retry and a second's stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_functions_vault_write_and_the_vault_rekey_never_deadlock() {
    let db = TestDb::create().await;
    db.migrate().await;
    let admin = db.client().await;
    // Two values whose version-2 tokens are x < y; y's old entry first in
    // the vault's physical order.
    let (one, two) = (masker(1), masker(2));
    let token = |m: &login_etl::privacy::masking::Masker, ip: &str| {
        m.ip(&ip.parse().unwrap()).as_str().to_owned()
    };
    let (mut a, mut b) = ("192.0.2.1", "192.0.2.2");
    if token(&two, a) > token(&two, b) {
        std::mem::swap(&mut a, &mut b);
    }
    let (x, y) = (token(&two, a), token(&two, b));
    for old in [token(&one, b), token(&one, a)] {
        admin
            .execute(
                "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen) \
                 VALUES ('ip', $1, 'k', '\\x000102030405060708090a0b'::bytea, '\\x00'::bytea, 1, 2, current_date - 2)",
                &[&old],
            )
            .await
            .unwrap();
    }
    // The switch, and no chunk yet.
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    let options = RekeyOptions {
        max_chunks: Some(0),
        ..RekeyOptions::default()
    };
    rekey::arm(&admin, &two).await.unwrap();
    rekey::rotate(&mut rotate, &two, CALLER, options, &mut |_| {})
        .await
        .expect("the switch");
    // A function at version 2 stored x's twin yesterday.
    admin
        .execute(
            "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen) \
             VALUES ('ip', $1, 'k', '\\x0c0b0a090807060504030201'::bytea, '\\x01'::bytea, 2, 2, current_date - 1)",
            &[&x],
        )
        .await
        .unwrap();
    let olds: Vec<String> = admin
        .query(
            "SELECT ctid::text FROM user_logins_pii_vault WHERE key_version = 1 ORDER BY ctid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let holder = db.client().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM user_logins_pii_vault WHERE kind = 'ip' AND token = '{x}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let ingest = connect(&db.role_url(Role::Ingest).await).await;
    let ingest_pid: i32 = ingest
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // The statements the function and rotate-key send, each in its
    // transaction.
    let store = format!(
        "BEGIN; \
         SELECT login_etl_store_vault('k', 'local', '\\x01'::bytea, ARRAY['ip', 'ip'], ARRAY['{x}', '{y}'], \
           ARRAY['\\x0c0b0a090807060504030201'::bytea, '\\x0c0b0a090807060504030202'::bytea], \
           ARRAY['\\x01'::bytea, '\\x02'::bytea], ARRAY[current_date, current_date], 2::int2, 2::int2); \
         COMMIT"
    );
    let rekey = format!(
        "BEGIN; \
         SELECT login_etl_rekey_vault_chunk(ARRAY['{}', '{}']::tid[], ARRAY['ip', 'ip'], ARRAY['{y}', '{x}'], 1::int2); \
         COMMIT",
        olds[0], olds[1]
    );
    let function = tokio::spawn(async move { ingest.batch_execute(&store).await });
    if !waits_for_a_lock(&admin, ingest_pid).await {
        panic!("the function does not wait for x: {:?}", function.await);
    }
    let rotate_pid: i32 = rotate
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let chunk = tokio::spawn(async move { rotate.batch_execute(&rekey).await });
    if !waits_for_a_lock(&admin, rotate_pid).await {
        panic!("the chunk does not wait for x: {:?}", chunk.await);
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let (stored, moved) = tokio::time::timeout(Duration::from_secs(10), async {
        (function.await.unwrap(), chunk.await.unwrap())
    })
    .await
    .expect("both finish");
    stored.expect("the function's vault write commits, no deadlock");
    moved.expect("the chunk commits, no deadlock");
    let entries: Vec<(String, i16, bool)> = admin
        .query(
            "SELECT token::text, key_version, last_seen = current_date FROM user_logins_pii_vault ORDER BY token",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        entries,
        [(x, 2, true), (y, 2, true)],
        "one entry per value, at version 2, seen today"
    );
}
