//! The release binary as Lambda runs it, against a minimal Runtime API served
//! here on 127.0.0.1: time from process start to its first
//! `GET /runtime/invocation/next` (cold start, with DATABASE_URL and
//! MASKING_KEY; the database connection is lazy, so no network wait is in
//! it), peak RSS (VmHWM) after handling the largest batch an event-source
//! mapping can send (6 MB), and warm invocations of 10, 1,000 and 10,000
//! records as an event-source mapping hands them over: from the event
//! handed out by `next` to the answer's `POST` (what Lambda bills), beside
//! the floor of the same rows from this process in the same round.

#[path = "common.rs"]
mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use login_etl::privacy::masking::{Masker, MaskingKey};
use login_etl::synth::{self, Options};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What the fake Runtime API saw.
#[derive(Default)]
struct Api {
    first_next: Option<Instant>,
    /// Events not yet handed out; `next` waits for one.
    events: VecDeque<Bytes>,
    /// When each event was handed out.
    handed: Vec<Instant>,
    /// Each answer (or error report), when its `POST` arrived, and its path.
    responses: Vec<(Instant, Bytes)>,
    paths: Vec<String>,
    notify: Arc<Notify>,
}

impl Api {
    fn with_event(event: Bytes) -> Self {
        Self {
            events: VecDeque::from([event]),
            ..Self::default()
        }
    }
}

async fn route(
    req: Request<Incoming>,
    api: Arc<Mutex<Api>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    if path.ends_with("/invocation/next") {
        let notify = api.lock().unwrap().notify.clone();
        // Held until an event is queued (then, or when the process is killed).
        let event = loop {
            let mut queued = std::pin::pin!(notify.notified());
            queued.as_mut().enable();
            {
                let mut a = api.lock().unwrap();
                if a.first_next.is_none() {
                    a.first_next = Some(Instant::now());
                    a.notify.notify_waiters();
                }
                if let Some(event) = a.events.pop_front() {
                    a.handed.push(Instant::now());
                    break event;
                }
            }
            queued.await;
        };
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            + 900_000;
        return Ok(Response::builder()
            .header("Lambda-Runtime-Aws-Request-Id", "bench-1")
            .header("Lambda-Runtime-Deadline-Ms", deadline.to_string())
            .header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:000000000000:function:login-etl",
            )
            .header(
                "Lambda-Runtime-Trace-Id",
                "Root=1-00000000-000000000000000000000000",
            )
            .body(Full::new(event))
            .unwrap());
    }
    let arrived = Instant::now();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut a = api.lock().unwrap();
    a.responses.push((arrived, body));
    a.paths.push(path);
    a.notify.notify_waiters();
    Ok(Response::builder()
        .status(202)
        .body(Full::new(Bytes::new()))
        .unwrap())
}

async fn serve(api: Arc<Mutex<Api>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let api = api.clone();
            tokio::spawn(http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |r| route(r, api.clone())),
            ));
        }
    });
    port
}

fn spawn(binary: &str, port: u16, db_url: &str, stdout: Stdio) -> Child {
    Command::new(binary)
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "login-etl")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        // The template's LogLevel.
        .env("AWS_LAMBDA_LOG_LEVEL", "INFO")
        // As Lambda sets it: without it the AWS SDK asks the instance
        // metadata service for the region at cold start (2.5 ms here).
        .env("AWS_REGION", "us-east-1")
        .env("DATABASE_URL", db_url)
        .env("MASKING_KEY", KEY)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary} ({e}); cargo builds it for this bench, or set LOGIN_ETL_BINARY"))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn wait_for(api: &Arc<Mutex<Api>>, what: impl Fn(&Api) -> bool, limit: Duration) {
    let notify = api.lock().unwrap().notify.clone();
    let deadline = Instant::now() + limit;
    while !what(&api.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "the function did not get there within {limit:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(20), notify.notified()).await;
    }
}

/// The CPU time the process has used so far, in all its threads.
fn process_cpu(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// Percentile `p` (0-100) of `v`.
fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() - 1) * p / 100]
}

/// Warm invocations through the Runtime API, one environment, each event
/// handed out when the last is answered (a deep queue): for each size, the
/// time from the event handed out to the answer's arrival and the
/// process's CPU in between, and in the same round the floor of as many
/// fresh rows from this process (binary COPY from 500 rows, a bare
/// `BEGIN; INSERT; COMMIT` below, as `benches/batch_pg.rs` takes them).
async fn warm_invocations(binary: &str, url: &str, full: bool) {
    let client = connect(url).await;
    let masker = Masker::new(&MaskingKey::from_hex(KEY, "bench").unwrap());
    let api = Arc::new(Mutex::new(Api::default()));
    let port = serve(api.clone()).await;
    // What it writes to stdout (its log lines, as CloudWatch Logs ingests
    // them): bytes per invocation, for docs/cost.md.
    let log = std::env::temp_dir().join(format!("login-etl-bench-{}.log", std::process::id()));
    let written = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let child = spawn(
        binary,
        port,
        url,
        std::fs::File::create(&log).unwrap().into(),
    );
    // `BENCH_WARM=records:runs` runs one size alone (e.g. under `perf record -p`).
    let only = std::env::var("BENCH_WARM").ok().map(|v| {
        let (n, runs) = v.split_once(':').expect("BENCH_WARM=records:runs");
        [(n.parse().unwrap(), runs.parse().unwrap())]
    });
    let sizes: &[(usize, usize)] = match &only {
        Some(one) => one,
        None if full => &[(10, 301), (1_000, 61), (10_000, 15)],
        None => &[(10, 2), (1_000, 1)],
    };
    // `BENCH_DEFECTIVE_EVERY=n`: every n-th record a login with a defect,
    // for the log lines each defect code adds (docs/cost.md).
    let defective_every = std::env::var("BENCH_DEFECTIVE_EVERY")
        .map_or(0, |v| v.parse().expect("BENCH_DEFECTIVE_EVERY=n (a count)"));
    let log_lines = || std::fs::read(&log).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    let mut seed = 40_000_000;
    for &(n, runs) in sizes {
        let (mut took, mut cpu, mut floor, mut logged, mut lines_logged) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // The first round warms up (the connection, the server's plans).
        for round in 0..=runs {
            seed += 2;
            let event = bench_event_with_defects(n, seed, defective_every);
            let event = Bytes::from(serde_json::to_vec(&event).unwrap());
            let before = process_cpu(child.id());
            let (log_before, lines_before) = (written(), log_lines());
            let answers = {
                let mut a = api.lock().unwrap();
                a.events.push_back(event);
                a.notify.notify_waiters();
                a.responses.len() + 1
            };
            wait_for(
                &api,
                |a| a.responses.len() >= answers,
                Duration::from_secs(60),
            )
            .await;
            // A thread that ended in between takes its time with it.
            let spent = process_cpu(child.id()).saturating_sub(before);
            // The batch's document is written before the handler answers.
            let (log_bytes, lines) = (written() - log_before, log_lines() - lines_before);
            let (handed, (arrived, answer)) = {
                let a = api.lock().unwrap();
                let path = &a.paths[answers - 1];
                assert!(
                    path.ends_with("/response"),
                    "the function reported an error ({path}): {:?}",
                    a.responses[answers - 1].1
                );
                (a.handed[answers - 1], a.responses[answers - 1].clone())
            };
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(
                answer["batchItemFailures"].as_array().map(Vec::len),
                Some(0),
                "every record of the batch written: {answer}"
            );

            let other = login_etl::SqsBatch::from(&bench_event(n, seed + 1));
            let rows = rows_of(&other, &masker);
            let started = Instant::now();
            if n >= 500 {
                copy_rows(&client, &rows).await;
            } else {
                client.batch_execute(&bare_insert(&rows)).await.unwrap();
            }
            if round > 0 {
                floor.push(started.elapsed());
                took.push(arrived - handed);
                cpu.push(spent);
                logged.push(log_bytes);
                lines_logged.push(lines);
            }
        }
        let (p50, p90, f) = (
            percentile(&mut took, 50),
            percentile(&mut took, 90),
            median(&mut floor),
        );
        let (floor_is, goal) = match n {
            10 => ("BEGIN; INSERT; COMMIT", "goal: <= 1.2, issue 42"),
            1_000 => ("binary COPY", "goal: a p50 <= 6 ms, issue 42"),
            _ => ("binary COPY", "goal: <= 1.15, issue 42"),
        };
        logged.sort_unstable();
        lines_logged.sort_unstable();
        println!(
            "through the Runtime API, warm, {runs} invocations of {n} records: p50 {:.3} ms (p90 {:.3}), the function's CPU p50 {:.3} ms; {floor_is} of as many rows from here p50 {:.3} ms: ratio {:.2} ({goal}); log lines at INFO {} bytes an invocation in {} lines (p50)",
            ms(p50),
            ms(p90),
            ms(median(&mut cpu)),
            ms(f),
            p50.as_secs_f64() / f.as_secs_f64(),
            logged[logged.len() / 2],
            lines_logged[lines_logged.len() / 2]
        );
    }
    stop(child);
    let _ = std::fs::remove_file(&log);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = full_run();
    // Cargo builds the binary for this target's profile: the bench profile
    // under `cargo bench`, the debug one for the smoke run of `cargo test`.
    let binary = std::env::var("LOGIN_ETL_BINARY")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_login-etl").into());
    let (db, url) = create_db("process").await;
    let db_config = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| url.clone())
    });
    login_etl::startup::migrate(&db_config.unwrap(), login_etl::Profile::Full)
        .await
        .unwrap();

    if std::env::var_os("BENCH_WARM").is_some() {
        warm_invocations(&binary, &url, full).await;
        drop_db(&db).await;
        return;
    }

    // Cold start: process start -> first `next`.
    let runs = if full { 25 } else { 2 };
    let mut cold = Vec::new();
    for _ in 0..runs {
        let api = Arc::new(Mutex::new(Api::default()));
        let port = serve(api.clone()).await;
        let started = Instant::now();
        let child = spawn(&binary, port, &url, Stdio::null());
        wait_for(&api, |a| a.first_next.is_some(), Duration::from_secs(10)).await;
        cold.push(api.lock().unwrap().first_next.unwrap() - started);
        stop(child);
    }
    let min = *cold.iter().min().unwrap();
    println!(
        "cold start to first Runtime API `next` ({runs} runs): median {:.2} ms, min {:.2} ms",
        ms(median(&mut cold)),
        ms(min)
    );

    // Peak memory on the largest batch an event-source mapping sends (payload <= 6 MB).
    let mut count = if full { 9_500 } else { 500 };
    let event = loop {
        let e = serde_json::to_vec(&synth::event(&Options {
            count,
            invalid_every: 25,
            seed: 77,
            ..Options::default()
        }))
        .unwrap();
        if e.len() <= 6 * 1024 * 1024 {
            break e;
        }
        count -= 250;
    };
    let size = event.len();
    let api = Arc::new(Mutex::new(Api::with_event(Bytes::from(event))));
    let port = serve(api.clone()).await;
    let child = spawn(&binary, port, &url, Stdio::null());
    let started = Instant::now();
    wait_for(&api, |a| !a.responses.is_empty(), Duration::from_secs(120)).await;
    let took = started.elapsed();
    let rss = peak_rss_kib(child.id());
    let response = api.lock().unwrap().responses[0].1.clone();
    stop(child);
    let resp: serde_json::Value = serde_json::from_slice(&response).unwrap();
    let failures = resp["batchItemFailures"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    assert_eq!(
        failures,
        count / 25,
        "the function handled the batch: {resp}"
    );
    println!(
        "largest batch: {count} records, {:.2} MB payload: peak RSS {:.1} MB, {:.0} ms from process start to response",
        size as f64 / 1_048_576.0,
        rss as f64 / 1024.0,
        ms(took)
    );
    warm_invocations(&binary, &url, full).await;
    drop_db(&db).await;
}
