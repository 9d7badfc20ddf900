//! `make bench` step "masking-key rotation": what `login-etl rotate-key`
//! costs on a large table, in one stream and in two jobs side by side
//! (`--jobs 2`), alone and beside ingest, in one run.
//!
//! `user_logins` is preloaded with `BENCH_REKEY_ROWS` rows (default
//! 20,000,000; SQL `generate_series`, tokens under key version 1) and the
//! vault with one entry per ten rows and kind. Then, as the roles `login-etl
//! grants` prints (rotate, ingest):
//! 1. ingest alone: batches of 1,000 through the real handler, one every
//!    250 ms (4,000 logins a second, 1.7 times the average of 200 M a day),
//!    for a median;
//! 2. four rotations, each to the next version, with a VACUUM between them
//!    (each re-key leaves a dead version of every row behind): with ingest
//!    stopped, in 1 job then in 2; with the same ingest beside it, in 1
//!    job then in 2;
//! 3. the figures of each: rows and vault entries re-keyed per second (each
//!    phase on its own), how long the switch took, ingest's median and
//!    slowest batch during it (against alone: the slowdown), and, with
//!    ingest stopped, the CPU time per 1,000 rows on each side: this
//!    process (the HMACs, the client) and the rotation's database backends
//!    (/proc/PID/stat of each; PostgreSQL's WAL writer, checkpointer and
//!    autovacuum are not in it). Those are what the runbook's estimate for
//!    a larger database is made of (docs/runbooks/leaked-key.md, "The masking key
//!    leaked").
//!
//! Under `cargo test` it runs a smoke pass of 20,000 rows.

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use login_etl::grants;
use login_etl::privacy::masking::{KeyVersions, Masker};
use login_etl::privacy::rekey::{self, RekeyOptions};
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{BatchHandler, Config, Deadline, SqsBatch};
use tokio_postgres::Client;

/// Versions 2 to 5 of the masking key (version 1 is `KEY`).
const NEXT_KEYS: [&str; 4] = [
    "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2",
    "a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6",
    "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "5a5b5c5d5e5f60616263646566676869707172737475767778797a7b7c7d7e7f",
];

/// The masking secret holding versions 1 to `n`.
fn keys_doc(n: usize) -> String {
    let mut versions = vec![KEY];
    versions.extend(&NEXT_KEYS[..n - 1]);
    serde_json::json!({ "versions": versions }).to_string()
}

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

async fn preload(c: &Client, rows: u64) {
    let t = Instant::now();
    let chunk = 5_000_000u64;
    let mut at = 0;
    while at < rows {
        let to = (at + chunk).min(rows);
        c.batch_execute(&format!(
            "INSERT INTO user_logins_rows (user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
               message_id, sent_at) \
             SELECT gen_random_uuid(), 'android', sha256((g % 5000000)::text::bytea), \
               sha256((-(g % 7000000))::text::bytea), 'RU', 2003000, gen_random_uuid(), \
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
    let doc = keys_doc(1 + NEXT_KEYS.len());
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
    assert_eq!(outcome.into_parts().1.inserted as usize, b.len());
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
    let target = login_etl::database::settings::DbConfig::from_lookup(&|k| {
        (k == "DATABASE_URL").then(|| url.clone())
    })
    .unwrap();
    login_etl::startup::migrate(&target, login_etl::Profile::Full)
        .await
        .unwrap();
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

    // 2. The rotations.
    let runs = [(1, false), (2, false), (1, true), (2, true)];
    println!(
        "| jobs | ingest | rows | vault entries | switch (ms) | rows re-keyed/s | vault entries/s | whole re-key (s) | client CPU ms per 1,000 rows | database CPU ms per 1,000 rows | ingest ms per batch of {per_batch} (slowest) | slowdown (medians) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let m_alone = median(&mut alone);
    let mut rates = Vec::new();
    for (i, (jobs, beside_ingest)) in runs.into_iter().enumerate() {
        let version = i + 2;
        if i > 0 {
            let t = Instant::now();
            for table in ["user_logins", "user_logins_pii_vault"] {
                // One statement each: VACUUM runs outside a transaction.
                admin
                    .batch_execute(&format!("VACUUM {table}"))
                    .await
                    .unwrap();
            }
            eprintln!("   vacuumed in {:.0} s", t.elapsed().as_secs_f64());
        }
        let run = rotation(
            &admin,
            &rotate_url,
            &h,
            version,
            jobs,
            beside_ingest,
            per_batch,
        )
        .await;
        let r = &run.report;
        assert_eq!(r.to as usize, version);
        assert!(r.rows >= rows, "{} of {rows} rows re-keyed", r.rows);
        let left: i64 = admin
            .query_one(
                "SELECT (SELECT count(*) FROM user_logins WHERE key_version <> $1) \
                 + (SELECT count(*) FROM user_logins_pii_vault WHERE key_version <> $1)",
                &[&(version as i16)],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "everything is under version {version}");
        let rows_rate = r.rows as f64 / r.rows_time.as_secs_f64().max(1e-3);
        let vault_rate = r.vault_entries as f64 / r.vault_time.as_secs_f64().max(1e-3);
        let per_k = |d: Duration| ms(d) * 1_000.0 / r.rows.max(1) as f64;
        let (cpu_client, cpu_db, during) = if beside_ingest {
            let mut during = run.during.clone();
            let m = median(&mut during);
            (
                "(ingest in the same process)".to_owned(),
                "(beside ingest's)".to_owned(),
                format!(
                    "{:.1} ({:.1}) | {:.2}x",
                    ms(m),
                    ms(during.iter().max().copied().unwrap_or_default()),
                    ms(m) / ms(m_alone).max(1e-3)
                ),
            )
        } else {
            (
                format!("{:.1}", per_k(run.client_cpu)),
                format!("{:.1}", per_k(run.database_cpu)),
                "(stopped) | (stopped)".to_owned(),
            )
        };
        println!(
            "| {jobs} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {cpu_client} | {cpu_db} | {during} |",
            if beside_ingest { "beside" } else { "stopped" },
            r.rows,
            r.vault_entries,
            ms(r.switch),
            rows_rate,
            vault_rate,
            run.took.as_secs_f64(),
        );
        rates.push(rows_rate);
    }
    println!(
        "ingest alone: {:.1} ms per batch of {per_batch} (slowest {:.1}); 2 jobs / 1 job, rows re-keyed/s: {:.2}x with ingest stopped, {:.2}x beside it",
        ms(m_alone),
        ms(alone.iter().max().copied().unwrap_or_default()),
        rates[1] / rates[0],
        rates[3] / rates[2],
    );
    println!(
        "per 100 M rows, ingest stopped: {:.0} min in 1 job, {:.0} min in 2",
        100e6 / rates[0] / 60.0,
        100e6 / rates[1] / 60.0,
    );
    drop(admin);
    let admin = connect(&admin_url()).await;
    drop_db(&db).await;
    for r in [Role::Ingest, Role::Rotate] {
        let _ = admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {db}_{}", r.as_str()))
            .await;
    }
}

/// One rotation's figures.
struct Rotation {
    report: rekey::RekeyReport,
    /// The whole command, switch to end.
    took: Duration,
    /// Ingest's batches written during it (beside ingest only).
    during: Vec<Duration>,
    /// CPU time of this process during it.
    client_cpu: Duration,
    /// CPU time of its database backends during it.
    database_cpu: Duration,
}

/// `rotate-key` to `version` in `jobs` jobs (as the rotate role), with
/// ingest beside it or not.
async fn rotation(
    owner: &Client,
    rotate_url: &str,
    h: &Arc<BatchHandler>,
    version: usize,
    jobs: usize,
    beside_ingest: bool,
    per_batch: usize,
) -> Rotation {
    let mut rotator = connect(rotate_url).await;
    let mut helpers = Vec::new();
    while jobs > 1 && helpers.len() < jobs {
        helpers.push(connect(rotate_url).await);
    }
    let mut backends = Vec::new();
    for c in std::iter::once(&rotator).chain(&helpers) {
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        backends.push(pid as u32);
    }
    let done = Arc::new(AtomicBool::new(false));
    let beside = beside_ingest.then(|| {
        let (h, done) = (Arc::clone(h), Arc::clone(&done));
        tokio::spawn(async move {
            let mut took = Vec::new();
            let mut seed = 1_000_000 * version as u64;
            while !done.load(Ordering::Relaxed) {
                took.push(write(&h, &batch(per_batch, seed)).await);
                seed += 1;
            }
            took
        })
    });
    let masker = Masker::versions(
        &KeyVersions::parse(&keys_doc(version), "bench").unwrap(),
        None,
    )
    .unwrap();
    // The tables' owner arms it (rotate-key --arm); the rotate role runs it.
    rekey::arm(owner, &masker)
        .await
        .expect("arming the rotation");
    let cpu_before = (cpu_time(std::process::id()), backends_cpu(&backends));
    let started = Instant::now();
    let report = rekey::rotate_side_by_side(
        &mut rotator,
        helpers,
        &masker,
        "arn:aws:sts::123456789012:assumed-role/bench/rekey",
        RekeyOptions::default(),
        &mut |p| {
            eprintln!(
                "   re-keying to version {version} in {jobs} job(s): {} of ~{} rows, {:.0} rows/s, ~{:.0} s left",
                p.done, p.estimate, p.rate, p.eta_seconds
            )
        },
    )
    .await
    .expect("rotate-key");
    let took = started.elapsed();
    let client_cpu = cpu_time(std::process::id()).saturating_sub(cpu_before.0);
    let database_cpu = backends_cpu(&backends).saturating_sub(cpu_before.1);
    done.store(true, Ordering::Relaxed);
    let during = match beside {
        Some(task) => task.await.unwrap(),
        None => Vec::new(),
    };
    Rotation {
        report,
        took,
        during,
        client_cpu,
        database_cpu,
    }
}

/// User + system CPU time of a process (or, for one that ended, zero).
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields 14 and 15 of proc(5), counted after the command's ")".
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn backends_cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|&p| cpu_time(p)).sum()
}

/// USER_HZ, the unit of /proc/PID/stat's times (`getconf CLK_TCK`).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}
