//! End to end through the real Lambda runtime: `cargo lambda watch` serves the
//! runtime APIs to the function's binary, `cargo lambda invoke` sends every
//! file of `events/`, and the test
//! checks responses, rows, and that the function's output at TRACE holds no
//! raw ip or device_id. Needs cargo-lambda, which `make test` installs.

use crate::common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `cargo lambda watch` serving the runtime APIs, and the function polling
/// them; both stopped (each its process group) on drop.
pub(crate) struct Watch {
    children: Vec<Child>,
    pub(crate) log: std::path::PathBuf,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The function first, while the runtime APIs still answer it.
        for child in self.children.iter_mut().rev() {
            let pgid = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
            let _ = child.wait();
        }
    }
}

fn cargo_lambda() -> String {
    std::env::var("CARGO_LAMBDA").unwrap_or_else(|_| "cargo-lambda".into())
}

/// `cargo lambda watch --only-lambda-apis`, and the binary the tests built
/// polling it with the environment cargo-lambda names. Not `cargo lambda
/// watch` alone: its `cargo run` builds the binary without the
/// dev-dependencies' features, a second variant of every crate above serde
/// (100 s beside the other tests on a fresh clone), and swaps
/// target/debug/login-etl under the tests that run it.
fn start_watch(db_url: &str, port: u16) -> Watch {
    start_watch_with(db_url, port, &[])
}

/// [`start_watch`], the function's environment with `more`.
pub(crate) fn start_watch_with(db_url: &str, port: u16, more: &[(&str, String)]) -> Watch {
    let log =
        std::env::temp_dir().join(format!("login-etl-watch-{}-{port}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let apis = Command::new(cargo_lambda())
        .args([
            "lambda",
            "watch",
            "--only-lambda-apis",
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out.try_clone().unwrap())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run the tests with `make test`, which installs cargo-lambda",
                cargo_lambda()
            )
        });
    let mut watch = Watch {
        children: vec![apis],
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not listen within 60 s; log: {}",
            watch.log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let function = Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("http://127.0.0.1:{port}/.rt"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", FUNCTION)
        .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "4096")
        .env("DATABASE_URL", db_url)
        .env("MASKING_KEY", TEST_KEY)
        .env("AWS_LAMBDA_LOG_LEVEL", "trace")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .envs(more.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("the function's binary runs");
    watch.children.push(function);
    watch
}

/// The function's name under `--only-lambda-apis` (cargo-lambda's own).
const FUNCTION: &str = "_";

/// Invokes with `cargo lambda invoke`; Ok(response) or Err(error output).
fn invoke(port: u16, file: &str) -> Result<Value, String> {
    invoke_path(port, &fixture_path(file))
}

/// [`invoke`] with the event in the file at `path`.
pub(crate) fn invoke_path(port: u16, path: &str) -> Result<Value, String> {
    let out = Command::new(cargo_lambda())
        .args([
            "lambda",
            "invoke",
            FUNCTION,
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
            &port.to_string(),
        ])
        .args(["--output-format", "json", "--data-file", path])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo lambda invoke runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("response is JSON ({e}): {stdout}")))
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn failure_ids(resp: &Value) -> Vec<String> {
    resp["batchItemFailures"]
        .as_array()
        .expect("batchItemFailures is an array")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// Every raw ip and device_id in the fixtures, except loopback addresses that
/// the harness itself prints (it talks to the function over 127.0.0.1).
fn raw_pii_in_fixtures() -> Vec<String> {
    let mut values = Vec::new();
    for entry in std::fs::read_dir(format!("{}/events", env!("CARGO_MANIFEST_DIR"))).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let event: Value = serde_json::from_str(&text).unwrap();
        for rec in event["Records"].as_array().unwrap() {
            let body = match &rec["body"] {
                Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
                other => other.clone(),
            };
            for key in ["ip", "device_id"] {
                if let Some(v) = body.get(key).and_then(Value::as_str) {
                    let v = v.trim().trim_matches('\0');
                    if !["127.0.0.1", "::1", ""].contains(&v) {
                        values.push(v.to_owned());
                    }
                }
            }
        }
    }
    assert!(
        values.len() > 30,
        "the fixtures hold many PII values to look for"
    );
    values
}

#[tokio::test]
#[ignore = "needs cargo-lambda on PATH or in CARGO_LAMBDA; run by `make test`"]
async fn every_event_file_through_cargo_lambda_watch() {
    let db = TestDb::create().await;
    let port = closed_port();
    // Migrated by the admin; the function runs as the ingest role.
    let watch = start_watch(&db.ingest_url().await, port);
    let client = db.client().await;

    // The first invoke waits for the function's cold start (it polls the runtime APIs).
    let valid = load_event("sqs-valid.json");
    let resp = invoke(port, "sqs-valid.json").expect("valid batch succeeds");
    assert!(failure_ids(&resp).is_empty(), "{resp}");
    assert_eq!(count_rows(&client).await, valid.records.len() as i64);

    for file in [
        "sqs-mixed.json",
        "sqs-duplicates.json",
        "sqs-fifo.json",
        "sqs-valid.json",
    ] {
        let event = load_event(file);
        let resp = invoke(port, file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(failure_ids(&resp), expected_failures(&event), "{file}");
        let rows = count_rows(&client).await;
        let again = invoke(port, file).unwrap();
        assert_eq!(
            failure_ids(&again),
            expected_failures(&event),
            "{file} twice"
        );
        assert_eq!(
            count_rows(&client).await,
            rows,
            "invoking {file} twice adds no rows"
        );
    }
    let inserted: usize = ["sqs-valid.json", "sqs-mixed.json", "sqs-fifo.json"]
        .iter()
        .map(|f| {
            expectations(&load_event(f))
                .iter()
                .filter(|(_, e)| e.starts_with("insert"))
                .count()
        })
        .sum::<usize>()
        + 4; // sqs-duplicates.json: five records, one delivered twice
    assert_eq!(count_rows(&client).await, inserted as i64);
    let masked = hmac_hex(TEST_KEY, "199.172.111.135");
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE masked_ip = $1",
            &[&masked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "the one row with this ip (sqs-valid.json, invoked twice) carries its HMAC"
    );

    // A record of the wrong shape: the handler reaches it and fails the batch.
    let err =
        invoke(port, "sqs-malformed.json").expect_err("a malformed record fails the invocation");
    // cargo-lambda wraps long messages over several decorated lines.
    let words = |err: &str| -> String {
        err.split_whitespace()
            .filter(|w| w.chars().any(char::is_alphanumeric))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(words(&err).contains("is not an SQS message"), "{err}");
    // Not an SQS event at all: refused as the payload's bytes are taken
    // from the runtime, before the batch is handled.
    let not_an_event =
        std::env::temp_dir().join(format!("not-an-event-{}.json", std::process::id()));
    std::fs::write(
        &not_an_event,
        r#"{"Records": {"ip": "10.20.30.40", "device_id": "999-88-7777"}}"#,
    )
    .unwrap();
    let err2 = invoke_path(port, not_an_event.to_str().unwrap())
        .expect_err("a payload that is not an SQS event fails the invocation");
    std::fs::remove_file(&not_an_event).ok();
    assert!(words(&err2).contains("not an SQS batch event"), "{err2}");
    for err in [&err, &err2] {
        assert!(
            !err.contains("10.20.30.40") && !err.contains("999-88-7777"),
            "the error must not echo the payload"
        );
    }

    drop(watch_log_checked(watch));
}

/// Stops the function, then checks its whole output for raw PII.
fn watch_log_checked(watch: Watch) -> String {
    let path = watch.log.clone();
    drop(watch);
    let mut log = String::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        log.contains("\"message\":\"batch processed\""),
        "the function logged at TRACE in JSON: {log}"
    );
    assert!(
        log.contains("\"level\":\"TRACE\""),
        "TRACE was on: {}",
        &log[..log.len().min(2000)]
    );
    for value in raw_pii_in_fixtures() {
        assert!(
            !log.contains(&value),
            "raw PII value found in the function's output (redacted here)"
        );
    }
    log
}
