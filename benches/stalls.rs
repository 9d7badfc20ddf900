//! `make bench` step 7: the longest write beside each operation that runs
//! with live ingest, at the sizes of a 200 M-a-day deployment, against the
//! same writer alone in the same run (one CPU, one server: judge by the
//! ratio). A writer sends a batch of 100 logins every 10 ms as the ingest
//! role; beside it:
//!
//! 1. **rotate-key's switch** with a vault of `BENCH_STALLS_VAULT` entries
//!    (default 4,000,000: the distinct values of weeks of traffic) and an
//!    erasure list a tenth of that, as the rotate role; the run stops after
//!    the switch, the erasure list and a first chunk of rows;
//! 2. **maintain after days of failed runs**, `BENCH_STALLS_DAY` of today's
//!    rows (default 10,000,000: 1.2 hours at 200 M a day) waiting in the
//!    DEFAULT partition, as the maintain role: the swap and the drain.
//!
//! Under `cargo test` it runs a smoke pass of 20,000 rows each;
//! `BENCH_STALLS_ONLY=switch|default` runs one of the two.

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use login_etl::grants;
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{BatchHandler, Config, Deadline, SqsBatch};
use tokio_postgres::Client;

fn size(var: &str, full: u64) -> u64 {
    if !full_run() {
        return 20_000;
    }
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(full)
}

/// A login role of database `db` holding what `login-etl grants` prints.
async fn role(admin: &Client, db: &str, url: &str, role: Role) -> String {
    let name = format!("{db}_{}", role.as_str());
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; {}",
            grants::sql(role, &name, "public", login_etl::Profile::Full).unwrap()
        ))
        .await
        .unwrap();
    url.replacen("postgres@", &format!("{name}@"), 1)
}

async fn drop_roles(admin: &Client, db: &str) {
    for r in [Role::Ingest, Role::Rotate, Role::Maintain] {
        let _ = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {db}_{}", r.as_str()))
            .await;
    }
}

async fn handler(url: &str, keys: &str) -> BatchHandler {
    let config = Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(url.to_owned()),
        "MASKING_KEY" => Some(keys.to_owned()),
        _ => None,
    })
    .unwrap();
    login_etl::startup::build(&config).await.unwrap()
}

/// Every batch's time, until `stop`.
fn writer(
    h: Arc<BatchHandler>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Duration)>> {
    tokio::spawn(async move {
        let (mut times, mut seed) = (Vec::new(), 1u64 << 40);
        while !stop.load(Ordering::SeqCst) {
            seed += 1;
            let b = SqsBatch::from(&synth::event(&Options {
                count: 100,
                seed,
                sent_timestamp_ms: Utc::now().timestamp_millis(),
                ..Options::default()
            }));
            let t = Instant::now();
            let out = h.handle(&b, Deadline::NONE).await.unwrap();
            times.push((t, t.elapsed()));
            assert!(
                out.response.batch_item_failures.is_empty(),
                "a write failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times
    })
}

/// Median, 99th percentile and longest batch, in ms.
fn spread(times: &[(Instant, Duration)]) -> (f64, f64, f64) {
    let mut times: Vec<Duration> = times.iter().map(|(_, d)| *d).collect();
    times.sort();
    let at = |q: f64| ms(times[((times.len() - 1) as f64 * q) as usize]);
    (at(0.5), at(0.99), at(1.0))
}

/// The writer alone for `secs`, then beside `op`; both spreads, and `op`'s result.
async fn beside<T>(
    h: Arc<BatchHandler>,
    alone_for: Duration,
    op: impl std::future::Future<Output = T>,
) -> ((f64, f64, f64), (f64, f64, f64), T, Duration) {
    // Warm: the first batch connects and reads the erasure list.
    let warm = SqsBatch::from(&synth::event(&Options {
        count: 100,
        seed: 1 << 50,
        sent_timestamp_ms: Utc::now().timestamp_millis(),
        ..Options::default()
    }));
    h.handle(&warm, Deadline::NONE).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(h.clone(), stop.clone());
    tokio::time::sleep(alone_for).await;
    stop.store(true, Ordering::SeqCst);
    let alone = spread(&w.await.unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(h, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let out = op.await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut with = w.await.unwrap();
    let spread_with = spread(&with);
    // When the slowest batches began, from the operation's start: which
    // of its steps held them.
    with.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    eprintln!(
        "   slowest batches beside it: {}",
        with.iter()
            .take(5)
            .map(|(at, d)| format!(
                "{:.0} ms at {:+.2} s",
                ms(*d),
                at.saturating_duration_since(t).as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (alone, spread_with, out, took)
}

fn report(what: &str, alone: (f64, f64, f64), with: (f64, f64, f64)) {
    println!(
        "  {what}: batch of 100 alone p50 {:.1} / p99 {:.1} / max {:.1} ms; beside it p50 {:.1} / p99 {:.1} / max {:.1} ms (longest {:.1}x alone's)",
        alone.0,
        alone.1,
        alone.2,
        with.0,
        with.1,
        with.2,
        with.2 / alone.2
    );
}

async fn switch_beside_ingest(admin: &Client) {
    let vault = size("BENCH_STALLS_VAULT", 4_000_000);
    let erasures = vault / 10;
    let (name, url) = create_db("stalls_switch").await;
    login_etl::startup::migrate(
        &login_etl::database::settings::DbConfig::from_lookup(&|k| {
            (k == "DATABASE_URL").then(|| url.clone())
        })
        .unwrap(),
        login_etl::Profile::Full,
    )
    .await
    .unwrap();
    let owner = connect(&url).await;
    let t = Instant::now();
    owner
        .batch_execute(&format!(
            "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version) \
               SELECT CASE WHEN g % 2 = 0 THEN 'ip' ELSE 'device_id' END, encode(sha256(g::text::bytea), 'hex'), 'k', \
                 '\\x000102030405060708090a0b'::bytea, '\\x00'::bytea, 1, 2 FROM generate_series(1, {vault}) g; \
             INSERT INTO user_logins_erased (user_key, key_version) \
               SELECT encode(sha256((-g)::text::bytea), 'hex'), 1 FROM generate_series(1, {erasures}) g;"
        ))
        .await
        .unwrap();
    for table in ["user_logins_pii_vault", "user_logins_erased"] {
        owner
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await
            .unwrap();
    }
    owner.batch_execute("CHECKPOINT").await.unwrap();
    eprintln!(
        "   loaded {vault} vault entries and {erasures} erasures ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let ingest = role(&owner, &name, &url, Role::Ingest).await;
    let rotate = role(&owner, &name, &url, Role::Rotate).await;
    let keys = format!(
        "{{\"versions\": [\"{KEY}\", \"{}\"]}}",
        KEY.chars().rev().collect::<String>()
    );
    let h = Arc::new(handler(&ingest, &keys).await);
    let masker = login_etl::privacy::masking::Masker::versions(
        &login_etl::privacy::masking::KeyVersions::parse(&keys, "bench").unwrap(),
        None,
    )
    .unwrap();
    login_etl::privacy::rekey::arm(&connect(&url).await, &masker)
        .await
        .expect("arming the rotation");
    let mut c = connect(&rotate).await;
    let (alone, with, rotated, took) = beside(h, Duration::from_secs(3), async {
        login_etl::privacy::rekey::rotate(
            &mut c,
            &masker,
            "arn:aws:sts::123456789012:assumed-role/bench",
            login_etl::privacy::rekey::RekeyOptions {
                max_chunks: Some(1),
                ..Default::default()
            },
            &mut |_| {},
        )
        .await
        .unwrap()
    })
    .await;
    println!(
        "1. rotate-key's switch, vault of {vault} entries, {erasures} erasures: switch {:.1} ms, then the erasure list re-keyed ({} entries) in {:.1} s",
        ms(rotated.switch),
        rotated.erasures,
        took.as_secs_f64()
    );
    report("ingest", alone, with);
    drop(c);
    drop(owner);
    drop_db(&name).await;
    drop_roles(admin, &name).await;
}

async fn default_day_beside_ingest(admin: &Client) {
    let rows = size("BENCH_STALLS_DAY", 10_000_000);
    let (name, url) = create_db("stalls_default").await;
    login_etl::startup::migrate(
        &login_etl::database::settings::DbConfig::from_lookup(&|k| {
            (k == "DATABASE_URL").then(|| url.clone())
        })
        .unwrap(),
        login_etl::Profile::Full,
    )
    .await
    .unwrap();
    let owner = connect(&url).await;
    let today = Utc::now().date_naive().format("%Y%m%d");
    let t = Instant::now();
    owner
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows DETACH PARTITION user_logins_p{today}; DROP TABLE user_logins_p{today}; \
             INSERT INTO user_logins_default (user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
               message_id, sent_at, key_version) \
             SELECT gen_random_uuid(), 'android', sha256(g::text::bytea), sha256((-g)::text::bytea), 'RU', 2003000, \
               gen_random_uuid(), date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + g * interval '1 microsecond', 1 \
             FROM generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    owner
        .batch_execute("VACUUM ANALYZE user_logins_default")
        .await
        .unwrap();
    // The load's WAL checkpointed before the measurement, not during it.
    owner.batch_execute("CHECKPOINT").await.unwrap();
    eprintln!(
        "   loaded {rows} of today's rows into the DEFAULT partition ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let ingest = role(&owner, &name, &url, Role::Ingest).await;
    let maintain = role(&owner, &name, &url, Role::Maintain).await;
    let h = Arc::new(handler(&ingest, KEY).await);
    let c = connect(&maintain).await;
    // The writer's batches go to the DEFAULT partition until the swap.
    let (alone, with, report_of, took) = beside(h, Duration::from_secs(3), async {
        login_etl::table::maintain::run(&c, &login_etl::table::maintain::MaintainOptions::default())
            .await
            .unwrap()
    })
    .await;
    let drained = report_of.drained_from_default + report_of.moved_from_default();
    println!(
        "2. maintain with {rows} of today's rows in DEFAULT: {:.1} s, {drained} rows moved back ({:.0} rows/s), DEFAULT left with {}",
        took.as_secs_f64(),
        drained as f64 / took.as_secs_f64(),
        report_of.default_rows
    );
    report("ingest", alone, with);
    drop(c);
    drop(owner);
    drop_db(&name).await;
    drop_roles(admin, &name).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let admin = connect(&admin_url()).await;
    // BENCH_STALLS_ONLY=switch|default: one of the two.
    let only = std::env::var("BENCH_STALLS_ONLY").unwrap_or_default();
    if only != "default" {
        switch_beside_ingest(&admin).await;
    }
    if only != "switch" {
        default_day_beside_ingest(&admin).await;
    }
}
