//! `make bench` step "masking-key rotation": what `login-etl rotate-key`
//! costs on a large table, and what it costs ingest meanwhile, in one run.
//!
//! `user_logins` is preloaded with `BENCH_REKEY_ROWS` rows (default
//! 20,000,000; SQL `generate_series`, tokens under key version 1) and the
//! vault with one entry per ten rows and kind. Then, as the roles `login-etl
//! grants` prints (rotate, ingest):
//! 1. ingest alone: batches of 1,000 through the real handler, one every
//!    250 ms (4,000 logins a second, 1.7 times the average of 200 M a day),
//!    for a median;
//! 2. `rotate-key` to version 2 (the switch, the rows in chunks, the vault),
//!    with the same ingest running beside it at the same pace;
//! 3. the figures: rows and vault entries re-keyed per second (each phase
//!    on its own), how long the switch took, ingest's median and slowest
//!    batch alone and during the re-key (the ratio is the slowdown).
//!
//! Under `cargo test` it runs a smoke pass of 20,000 rows.

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use login_etl::grants::{self, Role};
use login_etl::masking::{KeyVersions, Masker};
use login_etl::rekey::{self, RekeyOptions};
use login_etl::synth::{self, Options};
use login_etl::{BatchHandler, Config, Deadline, SqsBatch};
use tokio_postgres::Client;

const KEY2: &str = "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2";

fn keys_doc() -> String {
    serde_json::json!({ "versions": [KEY, KEY2] }).to_string()
}

async fn role(admin: &Client, db: &str, url: &str, role: Role) -> String {
    let name = format!("{db}_{}", role.as_str());
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; {}",
            grants::sql(role, &name, "public").unwrap()
        ))
        .await
        .unwrap();
    url.replacen("postgres@", &format!("{name}@"), 1)
}

async fn preload(c: &Client, rows: u64) {
    let t = Instant::now();
    let chunk = 5_000_000u64;
    let mut at = 0;
    while at < rows {
        let to = (at + chunk).min(rows);
        c.batch_execute(&format!(
            "INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
               app_version_text, create_date, message_id, sent_at) \
             SELECT gen_random_uuid()::text, 'android', encode(sha256((g % 5000000)::text::bytea), 'hex'), \
               encode(sha256((-(g % 7000000))::text::bytea), 'hex'), 'RU', 2003000, '2.3.0', \
               (now() - interval '3 hours')::date, gen_random_uuid()::text, \
               now() - interval '3 hours' - ({rows} - g) * interval '432 microseconds' \
             FROM generate_series({}, {to}) g",
            at + 1
        ))
        .await
        .unwrap();
        at = to;
        eprintln!(
            "   preloaded {at} of {rows} rows ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    // One vault entry per ten rows and kind (the values repeat; the vault
    // holds each once). Dummy ciphertexts: a re-key never decrypts.
    let entries = (rows / 10).max(1);
    c.batch_execute(&format!(
        "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version) \
         SELECT k, encode(sha256((k || g)::bytea), 'hex'), 'bench', decode(repeat('00', 12), 'hex'), '\\x00', 1, 2 \
         FROM generate_series(1, {entries}) g, (VALUES ('ip'), ('device_id')) AS kinds(k)"
    ))
    .await
    .unwrap();
    for table in ["user_logins", "user_logins_pii_vault"] {
        c.batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .unwrap();
    }
    eprintln!(
        "   preloaded {} vault entries; {:.0} s in all",
        2 * entries,
        t.elapsed().as_secs_f64()
    );
}

async fn handler(url: &str) -> BatchHandler {
    let doc = keys_doc();
    let config = Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(url.to_owned()),
        "MASKING_KEY" => Some(doc.clone()),
        _ => None,
    })
    .unwrap();
    login_etl::startup::build(&config).await.unwrap()
}

fn batch(count: usize, seed: u64) -> SqsBatch {
    SqsBatch::from(&synth::event(&Options {
        count,
        seed,
        sent_timestamp_ms: Utc::now().timestamp_millis() - 60_000 - count as i64 * 1_000,
        ..Options::default()
    }))
}

/// One batch every this long, alone and beside the re-key.
const PACE: Duration = Duration::from_millis(250);

/// Writes `b`, then waits out the rest of [`PACE`]; the write's time.
async fn write(h: &BatchHandler, b: &SqsBatch) -> Duration {
    let t = Instant::now();
    let outcome = h
        .handle(b, Deadline::NONE)
        .await
        .expect("the batch is written");
    assert_eq!(outcome.into_parts().1.inserted as usize, b.records.len());
    let took = t.elapsed();
    tokio::time::sleep(PACE.saturating_sub(took)).await;
    took
}

#[tokio::main]
async fn main() {
    let full = full_run();
    let rows: u64 = if full {
        std::env::var("BENCH_REKEY_ROWS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20_000_000)
    } else {
        20_000
    };
    let per_batch = if full { 1_000 } else { 100 };
    let (db, url) = create_db("rekey").await;
    let admin = connect(&url).await;
    let target =
        login_etl::config::DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone()))
            .unwrap();
    login_etl::startup::migrate(&target).await.unwrap();
    preload(&admin, rows).await;
    admin.batch_execute("CHECKPOINT").await.unwrap();
    let ingest_url = role(&admin, &db, &url, Role::Ingest).await;
    let rotate_url = role(&admin, &db, &url, Role::Rotate).await;
    let h = Arc::new(handler(&ingest_url).await);

    // 1. Ingest alone.
    let mut alone = Vec::new();
    for seed in 1..=if full { 15 } else { 2 } {
        alone.push(write(&h, &batch(per_batch, seed)).await);
    }

    // 2. The re-key, with ingest beside it.
    let done = Arc::new(AtomicBool::new(false));
    let beside = {
        let (h, done) = (Arc::clone(&h), Arc::clone(&done));
        tokio::spawn(async move {
            let mut took = Vec::new();
            let mut seed = 1_000_000u64;
            while !done.load(Ordering::Relaxed) {
                let at = Instant::now();
                took.push((at, write(&h, &batch(per_batch, seed)).await));
                seed += 1;
            }
            took
        })
    };
    let masker =
        Masker::versions(&KeyVersions::parse(&keys_doc(), "bench").unwrap(), None).unwrap();
    let mut rotator = connect(&rotate_url).await;
    let started = Instant::now();
    let report = rekey::rotate(
        &mut rotator,
        &masker,
        "arn:aws:sts::123456789012:assumed-role/bench/rekey",
        RekeyOptions::default(),
        &mut |p| {
            eprintln!(
                "   re-keying: {} of ~{} rows, {:.0} rows/s, ~{:.0} s left",
                p.done, p.estimate, p.rate, p.eta_seconds
            )
        },
    )
    .await
    .expect("rotate-key");
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let timed = beside.await.unwrap();
    // The batches in flight while the switch ran (it is rotate-key's first step).
    let at_switch = timed
        .iter()
        .filter(|(at, d)| *at + *d >= started && *at <= started + report.switch)
        .map(|(_, d)| *d)
        .max()
        .unwrap_or_default();
    let mut during: Vec<Duration> = timed.into_iter().map(|(_, d)| d).collect();
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM user_logins WHERE key_version <> 2) \
             + (SELECT count(*) FROM user_logins_pii_vault WHERE key_version <> 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "everything is under version 2");
    assert!(
        report.rows >= rows,
        "{} of {rows} rows re-keyed",
        report.rows
    );

    let slowest = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let (m_alone, m_during) = (median(&mut alone), median(&mut during));
    let rows_rate = report.rows as f64 / report.rows_time.as_secs_f64().max(1e-3);
    let vault_rate = report.vault_entries as f64 / report.vault_time.as_secs_f64().max(1e-3);
    println!(
        "| rows | vault entries | switch (ms) | slowest batch across it (ms) | rows re-keyed/s | vault entries/s | whole re-key (s) | ingest ms per batch of {per_batch}, alone (slowest) | during the re-key (slowest) | slowdown (medians) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2}x |",
        report.rows,
        report.vault_entries,
        ms(report.switch),
        ms(at_switch),
        rows_rate,
        vault_rate,
        took.as_secs_f64(),
        ms(m_alone),
        ms(slowest(&alone)),
        ms(m_during),
        ms(slowest(&during)),
        ms(m_during) / ms(m_alone).max(1e-3),
    );
    println!(
        "per 100 M rows: {:.0} min for the rows, plus the vault at {:.0} entries/s ({} batches of {per_batch} written during the re-key)",
        100e6 / rows_rate / 60.0,
        vault_rate,
        during.len()
    );
    drop(rotator);
    drop(admin);
    let admin = connect(&admin_url()).await;
    drop_db(&db).await;
    for r in [Role::Ingest, Role::Rotate] {
        let _ = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {db}_{}", r.as_str()))
            .await;
    }
}
