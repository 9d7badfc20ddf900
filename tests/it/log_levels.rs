//! The function's real output as Lambda filters it. With JSON logs and an
//! `ApplicationLogLevel`, Lambda keeps a line only if it is a JSON object
//! whose `"level"` is at or above the configured level; a line without a
//! valid `"level"` counts as INFO (AWS docs, "Log-level filtering"). An EMF
//! document dropped by that filter takes its metrics with it, so these tests
//! run the real binary behind a Runtime API, as the ingest role, apply that
//! filter to everything it wrote, and check that the metrics still add up.

use crate::common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use common::runtime_api::{Outcome, RuntimeApi};
use common::*;
use login_etl::synth::{self, Options};
use serde_json::Value;

const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

fn rank(level: &str) -> usize {
    LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(level))
        .unwrap_or(2)
}

/// Lambda's filter: the lines it keeps at `configured`.
fn lambda_keeps(output: &str, configured: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| {
            let doc: Value = serde_json::from_str(line).ok()?;
            let level = doc.get("level").and_then(Value::as_str).unwrap_or("INFO");
            // Not a JSON object: INFO as well.
            let level = if doc.is_object() { level } else { "INFO" };
            (rank(level) >= rank(configured)).then_some(doc)
        })
        .collect()
}

/// Runs the binary as one execution environment at `level` until `events`
/// are answered; returns the outcomes and everything it wrote.
async fn run_function(
    db_url: &str,
    level: &str,
    events: &[SqsEvent],
    extra: &[(&str, &str)],
) -> (Vec<Outcome>, String) {
    let api = RuntimeApi::start().await;
    for (i, event) in events.iter().enumerate() {
        api.push(&format!("req-{i}"), event);
    }
    let log = std::env::temp_dir().join(format!(
        "login-etl-levels-{}-{level}-{}.log",
        std::process::id(),
        closed_port()
    ));
    let out = std::fs::File::create(&log).unwrap();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", "login-etl")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", level)
        .env("DATABASE_URL", db_url)
        .env("DB_CONNECT_TIMEOUT_MS", "1000")
        .env("MASKING_KEY", TEST_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(extra.iter().copied())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the function binary runs");
    let outcomes = api
        .wait_for(events.len(), Duration::from_secs(60), || {
            match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "the function exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
                _ => Ok(()),
            }
        })
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let outcomes = (0..events.len())
        .map(|i| outcomes[&format!("req-{i}")].clone())
        .collect();
    (outcomes, output)
}

/// Sums metric `name` over the summary documents kept.
fn total(docs: &[Value], name: &str) -> u64 {
    docs.iter()
        .filter(|d| d.get("_aws").is_some() && d.get("RecordsReceived").is_some())
        .filter_map(|d| d[name].as_u64())
        .sum()
}

#[tokio::test]
async fn at_warn_and_error_every_emf_document_survives_the_lambda_filter_and_adds_up() {
    for level in ["WARN", "ERROR"] {
        let db = TestDb::create().await;
        let url = db.ingest_url().await;
        let first = synth::event(&Options {
            count: 120,
            invalid_every: 9,
            seed: 401,
            ..Options::default()
        });
        let second = synth::event(&Options {
            count: 40,
            invalid_every: 7,
            seed: 402,
            ..Options::default()
        });
        // The first batch again: all duplicates (and the same rejections).
        let events = [first.clone(), second.clone(), first.clone()];
        let (outcomes, output) = run_function(&url, level, &events, &[]).await;
        for o in &outcomes {
            assert!(matches!(o, Outcome::Response(_)), "{o:?}");
        }
        let kept = lambda_keeps(&output, level);
        let valid = |e: &SqsEvent| {
            expectations(e)
                .into_iter()
                .filter(|(_, x)| x.starts_with("insert"))
                .count() as u64
        };
        let invalid = |e: &SqsEvent| e.records.len() as u64 - valid(e);
        assert_eq!(
            total(&kept, "RecordsReceived"),
            events.iter().map(|e| e.records.len() as u64).sum::<u64>(),
            "{level}: RecordsReceived"
        );
        assert_eq!(
            total(&kept, "RowsInserted"),
            valid(&first) + valid(&second),
            "{level}: RowsInserted"
        );
        assert_eq!(
            total(&kept, "Duplicates"),
            valid(&first),
            "{level}: Duplicates"
        );
        assert_eq!(
            total(&kept, "Rejected"),
            2 * invalid(&first) + invalid(&second),
            "{level}: Rejected"
        );
        assert_eq!(total(&kept, "ColdStart"), 1, "{level}: one cold start");
        assert_eq!(total(&kept, "InvocationFailed"), 0, "{level}");
        // The per-reason documents survive too and add up to the same total.
        let by_reason: u64 = kept
            .iter()
            .filter(|d| d["message"] == "records rejected")
            .filter_map(|d| d["Rejected"].as_u64())
            .sum();
        assert_eq!(by_reason, total(&kept, "Rejected"), "{level}: by reason");
        // Nothing below the level was written as a JSON log line at all,
        // except the EMF documents, which carry the configured level.
        for doc in lambda_keeps(&output, "TRACE") {
            let level_of = doc["level"].as_str().unwrap_or("INFO");
            assert!(rank(level_of) >= rank(level), "{level}: {doc}");
        }
        let ids: BTreeSet<String> = message_ids_in_table(&db.client().await)
            .await
            .into_iter()
            .collect();
        assert_eq!(ids.len() as u64, valid(&first) + valid(&second));
    }
}

#[tokio::test]
async fn a_failed_invocation_writes_its_document_and_the_cold_start_at_error() {
    // No database: every invocation fails as a whole.
    let url = format!(
        "postgres://login_etl_ingest@127.0.0.1:{}/login_etl",
        closed_port()
    );
    let event = synth::event(&Options {
        count: 25,
        invalid_every: 5,
        seed: 403,
        sent_timestamp_ms: chrono::Utc::now().timestamp_millis() - 600_000,
        ..Options::default()
    });
    // Without the backoff (it has its own tests), the invocation fails.
    let (outcomes, output) = run_function(
        &url,
        "ERROR",
        &[event.clone(), event.clone()],
        &[("BACKOFF_BASE_SECONDS", "0")],
    )
    .await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Error(_))),
        "{outcomes:?}"
    );
    let kept = lambda_keeps(&output, "ERROR");
    let summaries: Vec<&Value> = kept
        .iter()
        .filter(|d| d["message"] == "batch failed")
        .collect();
    assert_eq!(summaries.len(), 2, "one document per failed invocation");
    for (i, doc) in summaries.iter().enumerate() {
        assert_eq!(doc["RecordsReceived"], 25);
        assert_eq!(doc["InvocationFailed"], 1);
        assert_eq!(doc["RowsInserted"], 0);
        assert!(doc["BatchDurationMs"].is_u64());
        let lag = doc["IngestLagMs"].as_u64().expect("IngestLagMs");
        assert!(lag >= 600_000, "the oldest message's age: {lag}");
        assert_eq!(doc["ColdStart"].as_u64(), (i == 0).then_some(1), "{doc}");
    }
    let classes: Vec<&Value> = kept
        .iter()
        .filter(|d| d["message"] == "batch write failed")
        .map(|d| &d["failure_class"])
        .collect();
    assert_eq!(classes, ["database_unavailable", "database_unavailable"]);
}
