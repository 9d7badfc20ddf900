//! The soak: everything at once, as an operator's day brings it, checked
//! against invariants computed apart from the code under test.
//!
//! Each seed draws a schedule (schedule.rs): logins from a few thousand
//! users with shared ip and device values, valid and invalid, over three
//! days and past retention, DLQ-redriven copies; and, at random times,
//! `maintain` with retention, `forget` of users stored, in flight and not
//! yet sent (rerun on exit 75), a key version appended and `rotate-key`
//! run (`kill -9` half way, then run again), database outages (a clean
//! stop or a crash), killed backends, `kill -9` of a function environment
//! and of `login-etl poll`, reveals and DLQ redrives. It runs them against
//! the real binary (world.rs, lambda.rs) and a PostgreSQL server of its
//! own, every command as the role `login-etl grants` prints, then checks
//! (check.rs). A failing seed prints its schedule and the command that
//! replays it; the schedule is the seed's alone, what the processes and
//! PostgreSQL do in between is theirs, so a replay reproduces the same
//! operations at the same times, not always the same interleaving.
//!
//! Settings (environment; `make soak` passes its variables through):
//! `SOAK_SEED` (the first seed; default: drawn from the clock, and
//! printed), `SOAK_SEEDS` (how many seeds, one after another; default 1),
//! `SOAK_SECONDS` (each seed's schedule; default 20), `SOAK_ENVS` (function
//! environments; default 3), `SOAK_RATE` (logins a second; default 150),
//! `SOAK_KEEP=1` (keep a passing seed's logs under target/soak/).

mod aws;
mod check;
#[path = "../common/mod.rs"]
mod common;
mod lambda;
mod output;
mod schedule;
mod world;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schedule::{Plan, Shape};
use world::World;

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        _ => default,
    }
}

fn main() {
    // cargo test passes its own flags (--include-ignored, --nocapture): the
    // soak has no test list, it runs.
    let first_seed = setting(
        "SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 1_000_000,
    );
    let seeds = setting("SOAK_SEEDS", 1);
    let shape = Shape {
        seconds: setting("SOAK_SECONDS", 20).max(5),
        envs: setting("SOAK_ENVS", 3).clamp(1, 16) as usize,
        rate: setting("SOAK_RATE", 150).max(1) as u32,
        retention_days: 5,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    let mut failed = Vec::new();
    let mut total_ops = 0;
    for seed in first_seed..first_seed + seeds {
        let (ok, ops) = runtime.block_on(run_seed(seed, shape));
        total_ops += ops;
        if !ok {
            failed.push(seed);
        }
    }
    println!(
        "soak: {seeds} seed(s) of {} s, {total_ops} operations, {:.1} s in all; {}",
        shape.seconds,
        began.elapsed().as_secs_f64(),
        if failed.is_empty() {
            "every invariant held".to_owned()
        } else {
            format!("FAILED seeds: {failed:?}")
        }
    );
    runtime.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(i32::from(!failed.is_empty()));
}

async fn run_seed(seed: u64, shape: Shape) -> (bool, usize) {
    let plan = Plan::draw(seed, shape);
    let (sent, valid, kinds) = plan.counts();
    let ops: usize = kinds.values().sum();
    println!(
        "soak seed {seed}: {} s, {sent} logins ({valid} valid) to {} function environments and login-etl poll; {ops} operations: {}",
        shape.seconds,
        shape.envs,
        kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak/seed-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    let mut world = World::build(
        plan,
        PathBuf::from(env!("CARGO_BIN_EXE_login-etl")),
        dir.clone(),
    )
    .await;
    world.start_ingest().await;
    let progress = {
        let world = world.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                println!("soak seed {seed}: {}", world.progress());
            }
        })
    };
    world.run_schedule().await;
    let drained = world.drain(Duration::from_secs(60)).await;
    progress.abort();
    let _ = progress.await;
    world.stop_ingest().await;
    let cutoff = check::cutoff(shape.retention_days);
    let mut violations = std::mem::take(&mut *world.violations.lock().unwrap());
    if !drained {
        violations.push("the source queue did not drain within 60 s of the schedule's end".into());
    }
    violations.extend(check::check(&world, cutoff).await);
    let progress = world.progress();
    let tally = world.tally.lock().unwrap();
    println!(
        "soak seed {seed}: {progress} · forget exit 75 (rerun): {}, killed rotate-key runs: {}, failures during faults (rerun): {}; {}",
        tally.tempfail,
        tally.killed,
        tally.excused,
        world
            .lambda_env_counts()
            .iter()
            .map(|(i, level, c, copied)| format!(
                "fn{i}@{level}: {} invocations ({copied} committed by COPY), {} cold starts",
                c.invocations.load(std::sync::atomic::Ordering::Relaxed),
                c.cold_starts.load(std::sync::atomic::Ordering::Relaxed)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ok = violations.is_empty();
    if ok {
        println!("soak seed {seed}: every invariant held");
        if std::env::var("SOAK_KEEP").is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    } else {
        println!("soak seed {seed}: {} VIOLATIONS", violations.len());
        for v in &violations {
            println!("  - {v}");
        }
        println!(
            "the schedule of seed {seed} (sends left out):\n{}",
            world.plan.describe()
        );
        println!(
            "replay: make soak SEED={seed} SOAK_SECONDS={} SOAK_ENVS={} SOAK_RATE={}; logs: {}",
            shape.seconds,
            shape.envs,
            shape.rate,
            dir.display()
        );
    }
    drop(tally);
    // Drop the world (its server and processes) before the next seed.
    drop(Arc::try_unwrap(world).ok());
    (ok, ops)
}
