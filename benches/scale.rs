//! `make bench-scale`: what ingest, `forget` and retention cost as
//! `user_logins` grows, in one run on one CPU.
//!
//! The narrow row (`user_logins_rows`: partitioned by day of `sent_at`,
//! unique `(sent_at, message_id)`), written through the real handler
//! (`BatchHandler`, the sink, COPY for 10,000-record batches, INSERT for
//! 1,000). The unpartitioned layout of before, and its upgrade, were
//! measured here until the narrow row (docs/scale-performance.md keeps
//! those figures): this version no longer writes into it.
//!
//! Preloading is SQL `generate_series` into today's partition (at 200 M
//! logins a day, 20 M rows are 2.4 hours of them): random message ids,
//! `sent_at` rising up to three hours ago, so that the measured batches
//! (sent in the last three hours) arrive after them, as live traffic does;
//! through the key's index (it rises).
//! A `CHECKPOINT` before each measurement: the first change to a page after
//! one writes the whole page to the WAL, which is what random keys pay.
//!
//! `BENCH_SCALE_ROUNDS` (default 15): batches of 1,000 per median. With
//! `BENCH_SCALE_ROWS=` (no size) only the empty tables are compared.
//!
//! Sizes: `BENCH_SCALE_ROWS` (default `20000000,100000000`); a size the
//! disk cannot hold (about 420 B a row with indexes, plus 10 GB spare) is
//! skipped and said so. Under `cargo test` it runs a smoke pass of 20,000.

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::table::maintain::MaintainOptions;
use login_etl::{BatchHandler, Config, Deadline, SqsBatch};
use tokio_postgres::Client;

const BYTES_PER_ROW: u64 = 420;

async fn handler(url: &str) -> BatchHandler {
    let config = Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(url.to_owned()),
        "MASKING_KEY" => Some(KEY.to_owned()),
        _ => None,
    })
    .unwrap();
    login_etl::startup::build(&config).await.unwrap()
}

/// A batch of `count` valid logins, one a second up to a minute ago.
fn batch(count: usize, seed: u64) -> SqsBatch {
    let now = Utc::now().timestamp_millis();
    SqsBatch::from(&synth::event(&Options {
        count,
        seed,
        invalid_every: 0,
        sent_timestamp_ms: now - 60_000 - count as i64 * 1_000,
        ..Options::default()
    }))
}

async fn wal_lsn(c: &Client) -> String {
    c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

async fn wal_since(c: &Client, lsn: &str) -> f64 {
    c.query_one(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        &[&lsn],
    )
    .await
    .unwrap()
    .get(0)
}

/// Median handler time per 1,000 messages and WAL bytes per row, over
/// `rounds` batches of `size` (after a CHECKPOINT).
async fn ingest(
    h: &BatchHandler,
    c: &Client,
    size: usize,
    rounds: usize,
    seed: &mut u64,
) -> (f64, f64) {
    c.batch_execute("CHECKPOINT").await.unwrap();
    let batches: Vec<SqsBatch> = (0..rounds)
        .map(|_| {
            *seed += 1;
            batch(size, *seed)
        })
        .collect();
    let lsn = wal_lsn(c).await;
    let mut times = Vec::new();
    for b in &batches {
        let t = Instant::now();
        let out = h.handle(b, Deadline::NONE).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(out.summary.inserted as usize, size, "every row written");
    }
    let wal = wal_since(c, &lsn).await / (size * rounds) as f64;
    (ms(median(&mut times)) * 1_000.0 / size as f64, wal)
}

/// [`ingest`] at both batch sizes, `((small, rounds), (large, rounds))`.
async fn both_sizes(
    h: &BatchHandler,
    c: &Client,
    ((small, r1), (large, r2)): ((usize, usize), (usize, usize)),
    seed: &mut u64,
) -> ((f64, f64), (f64, f64)) {
    (
        ingest(h, c, small, r1, seed).await,
        ingest(h, c, large, r2, seed).await,
    )
}

fn free_disk_bytes() -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1", "/var/lib/postgresql"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .or_else(|| {
            std::process::Command::new("df")
                .args(["--output=avail", "-B1", "/"])
                .output()
                .ok()
        });
    out.and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// Adds rows to `table` up to `total` in it (today's date, random message
/// ids, sent_at rising to three hours ago), in chunks with progress.
async fn preload(c: &Client, table: &str, from: u64, total: u64) -> Duration {
    let t = Instant::now();
    let chunk = 5_000_000u64;
    let mut at = from;
    while at < total {
        let to = (at + chunk).min(total);
        // 2.4 hours per 20 M rows, ending three hours ago.
        c.batch_execute(&format!(
            "INSERT INTO {table} (user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
               message_id, sent_at) \
             SELECT gen_random_uuid(), 'android', sha256(g::text::bytea), \
               sha256((-g)::text::bytea), CASE WHEN g % 3 = 0 THEN NULL ELSE 'RU' END, \
               2003000, gen_random_uuid(), \
               now() - interval '3 hours' - ({total} - g) * interval '432 microseconds' \
             FROM generate_series({}, {to}) g",
            at + 1
        ))
        .await
        .unwrap();
        at = to;
        eprintln!(
            "   preloaded {at} of {total} rows ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    c.batch_execute(&format!("VACUUM ANALYZE {table}"))
        .await
        .unwrap();
    t.elapsed()
}

async fn size_of(c: &Client) -> String {
    c.query_one(
        "SELECT pg_size_pretty(sum(pg_table_size(c.oid))) || ' heap, ' || \
           pg_size_pretty(sum(pg_indexes_size(c.oid))) || ' indexes' \
         FROM pg_class c WHERE c.relname LIKE 'user_logins%' AND c.relkind = 'r'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// `forget` of one user with ingest running beside it (batches of 100):
/// its duration and the longest ingest invocation meanwhile.
async fn forget_beside_ingest(url: &str, h: Arc<BatchHandler>) -> (Duration, Duration, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (h, stop) = (Arc::clone(&h), Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut longest, mut seed) = (Duration::ZERO, 900_000u64);
            while !stop.load(Ordering::SeqCst) {
                seed += 1;
                let b = batch(100, seed);
                let t = Instant::now();
                h.handle(&b, Deadline::NONE).await.unwrap();
                longest = longest.max(t.elapsed());
            }
            longest
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut eraser = connect(url).await;
    let user: String = eraser
        .query_one("SELECT user_id FROM user_logins LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let masker = login_etl::privacy::masking::Masker::new(
        &login_etl::privacy::masking::MaskingKey::from_hex(KEY, "bench").unwrap(),
    );
    let t = Instant::now();
    let done = login_etl::privacy::forget::forget(&mut eraser, &user, masker.users(), "arn:bench")
        .await
        .unwrap();
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    (took, writer.await.unwrap(), done.rows)
}

fn row(
    label: &str,
    rows: u64,
    b1k: (f64, f64),
    b10k: (f64, f64),
    base: Option<((f64, f64), (f64, f64))>,
) {
    let ratio = |v: f64, b: f64| format!("{:.2}x", v / b);
    let (r1, r10, w1) = match base {
        Some((e1, e10)) => (ratio(b1k.0, e1.0), ratio(b10k.0, e10.0), ratio(b1k.1, e1.1)),
        None => ("-".into(), "-".into(), "-".into()),
    };
    println!(
        "| {label} | {rows} | {:.1} ({r1}) | {:.1} ({r10}) | {:.0} ({w1}) | {:.0} |",
        b1k.0, b10k.0, b1k.1, b10k.1
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if Utc::now().format("%H").to_string().as_str() < "04" {
        eprintln!(
            "note: before 04:00 UTC the preloaded rows (dated three hours ago) sit in yesterday's partition, not in the one ingest writes to"
        );
    }
    let full = full_run();
    let sizes: Vec<u64> = if full {
        std::env::var("BENCH_SCALE_ROWS")
            .unwrap_or_else(|_| "20000000,100000000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        vec![20_000]
    };
    // BENCH_SCALE_ROUNDS: more batches of 1,000 per median, for the small
    // differences an empty table shows (10,000-record batches: a quarter).
    let rounds1k = match std::env::var("BENCH_SCALE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
    {
        Some(n) if full => n,
        _ if full => 15,
        _ => 2,
    };
    let rounds10k = if full { (rounds1k / 4).max(1) } else { 1 };
    // The smoke pass under `cargo test` writes smaller batches.
    let (small, large) = if full { (1_000, 10_000) } else { (100, 1_000) };
    let sizes_and_rounds = ((small, rounds1k), (large, rounds10k));
    let mut seed = 1u64;
    println!(
        "| layout | rows already in the table | ms per 1,000 messages, batches of 1,000 (vs empty) | same, batches of 10,000 (vs empty) | WAL B/row, batches of 1,000 (vs empty) | WAL B/row, batches of 10,000 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");

    let first = sizes.first().copied().unwrap_or(0);

    // The narrow row: partitioned by day of sent_at, unique (sent_at, message_id).
    let (name_b, url_b) = create_db("scale_now").await;
    let cfg = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| url_b.clone())
    })
    .unwrap();
    login_etl::startup::migrate(&cfg, login_etl::Profile::Full)
        .await
        .unwrap();
    let b = connect(&url_b).await;
    let hb = Arc::new(handler(&url_b).await);
    let empty_b = both_sizes(&hb, &b, sizes_and_rounds, &mut seed).await;
    row(
        "now: the narrow row, partitioned by day, unique (sent_at, message_id)",
        0,
        empty_b.0,
        empty_b.1,
        None,
    );
    let mut forgets = Vec::new();
    for &size in &sizes {
        let have = count(&b).await;
        if free_disk_bytes() < (size.saturating_sub(have)) * BYTES_PER_ROW + 10_000_000_000 {
            println!("(now, {size} rows: skipped, not enough disk)");
            continue;
        }
        let took = preload(&b, "user_logins_rows", have, size).await;
        eprintln!(
            "   now: loaded to {size} in {:.0} s; {}",
            took.as_secs_f64(),
            size_of(&b).await
        );
        let at = both_sizes(&hb, &b, sizes_and_rounds, &mut seed).await;
        row(
            "now: the narrow row, partitioned by day, unique (sent_at, message_id)",
            size,
            at.0,
            at.1,
            Some(empty_b),
        );
        forgets.push((
            size,
            "no index on user_id",
            forget_beside_ingest(&url_b, Arc::clone(&hb)).await,
        ));
        if size == first {
            // The alternative: an index on user_id, paid by every insert.
            let t = Instant::now();
            b.batch_execute("CREATE INDEX user_logins_user_id ON user_logins_rows (user_id)")
                .await
                .unwrap();
            eprintln!(
                "   user_id index built in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            let with = both_sizes(&hb, &b, sizes_and_rounds, &mut seed).await;
            row(
                "now + index on user_id",
                size,
                with.0,
                with.1,
                Some(empty_b),
            );
            forgets.push((
                size,
                "with an index on user_id",
                forget_beside_ingest(&url_b, Arc::clone(&hb)).await,
            ));
            b.batch_execute("DROP INDEX user_logins_user_id")
                .await
                .unwrap();
        }
    }
    println!();
    println!(
        "| forget at | rows deleted | forget took | longest ingest invocation beside it (batches of 100) |"
    );
    println!("| --- | --- | --- | --- |");
    for (size, how, (took, longest, rows)) in &forgets {
        println!(
            "| {size} rows, {how} | {rows} | {:.0} ms | {:.0} ms |",
            ms(*took),
            ms(*longest)
        );
    }

    // Retention: 30 days past it, 50,000 rows a day, dropped by maintain.
    let per_day: u64 = if full { 50_000 } else { 100 };
    for back in 61..=90 {
        let day = Utc::now().date_naive() - TimeDelta::days(back);
        login_etl::table::partitions::ensure_partition(&b, day)
            .await
            .unwrap();
        b.batch_execute(&format!(
            "INSERT INTO user_logins_rows (user_id_text, message_id, sent_at) \
             SELECT 'r' || g, gen_random_uuid(), TIMESTAMPTZ '{day} 12:00Z' + g * interval '1 ms' \
             FROM generate_series(1, {per_day}) g"
        ))
        .await
        .unwrap();
    }
    // Once, not per day: each ANALYZE reads every partition (17 of the 31 s
    // the smoke pass took under `cargo test`).
    b.batch_execute("ANALYZE user_logins_rows; UPDATE user_logins_retention SET keep_days = 60")
        .await
        .unwrap();
    let t = Instant::now();
    let report = login_etl::table::maintain::run(
        &b,
        &MaintainOptions {
            retention_days: Some(60),
            ..MaintainOptions::default()
        },
    )
    .await
    .unwrap();
    println!();
    println!(
        "retention: {} partitions ({} rows, estimated) past 60 days dropped by `login-etl maintain` in {:.0} ms, with {} rows in the table",
        report.dropped.len(),
        report.rows_dropped(),
        ms(t.elapsed()),
        count(&b).await
    );
    assert_eq!(report.dropped.len(), 30);
    drop(hb);
    drop(b);
    drop_db(&name_b).await;
}

async fn count(c: &Client) -> u64 {
    // An estimate past a million (a count of 100 M rows takes minutes).
    let est: f64 = c
        .query_one(
            "SELECT coalesce(sum(greatest(reltuples, 0)), 0)::float8 FROM pg_class WHERE relname LIKE 'user_logins%' AND relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    if est > 1_000_000.0 {
        return est as u64;
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM user_logins", &[])
        .await
        .unwrap()
        .get(0);
    n as u64
}
