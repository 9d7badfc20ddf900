//! No raw ip or device_id, and never the masking key, in anything the
//! function writes: every event file, generated batches, and the error paths
//! (invalid records, rows the database refuses, an unreachable database, a
//! malformed event), through the function's own subscriber at TRACE in JSON.

use crate::common;

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, Outcome, SqsBatch};
use serde_json::Value;

/// Raw ip and device_id values of a batch in every form a log could carry
/// them: as sent, canonical (an IPv6 address lowercased and compressed, as
/// `IpAddr` prints it) and JSON-escaped (`\u0000` inside a device id); except
/// 127.0.0.1, the test database's own address, which the function rightly
/// logs as its target.
fn pii_of(event: &SqsEvent) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for m in &event.records {
        if let Ok(body) = serde_json::from_str::<Value>(m.body.as_deref().unwrap_or("")) {
            for key in ["ip", "device_id"] {
                if let Some(raw) = body.get(key).and_then(Value::as_str) {
                    let v = raw.trim().trim_matches('\0');
                    let mut forms = vec![v.to_owned()];
                    if let Ok(ip) = v.parse::<std::net::IpAddr>() {
                        forms.push(ip.to_string());
                    }
                    // The address an ip with a port or a zone carries.
                    if let Ok(sa) = v.parse::<std::net::SocketAddr>() {
                        forms.push(sa.ip().to_string());
                    }
                    if let Some(Ok(ip)) = v
                        .split_once('%')
                        .map(|(a, _)| a.parse::<std::net::IpAddr>())
                    {
                        forms.push(ip.to_string());
                    }
                    let escaped = serde_json::to_string(raw).unwrap();
                    forms.push(escaped.trim_matches('"').to_owned());
                    // A word ("unknown", sent as an ip) is no one's address.
                    let word = |f: &str| f.bytes().all(|b| b.is_ascii_lowercase());
                    for f in forms {
                        if f.len() >= 3
                            && f != "127.0.0.1"
                            && f != "::1"
                            && !word(&f)
                            && seen.insert(f.clone())
                        {
                            out.push(f);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether `text` holds any of `values`, in one pass (Aho-Corasick): one
/// `str::contains` per value, thousands of them over megabytes of TRACE
/// output, took most of this file's time in a debug build.
fn holds_any(text: &str, values: &[String]) -> bool {
    aho_corasick::AhoCorasick::new(values)
        .expect("the PII values make a searcher")
        .is_match(text)
}

/// A batch of one record per body.
fn event_of(bodies: &[&str]) -> SqsEvent {
    let mut event = synth::event(&Options {
        count: bodies.len(),
        seed: 65,
        ..Options::default()
    });
    for (m, b) in event.records.iter_mut().zip(bodies) {
        m.body = Some((*b).to_owned());
    }
    event
}

/// The log targets are the module paths docs/configuration.md documents:
/// `RUST_LOG`'s `login_etl::ingest=trace` (the binary's own filter) keeps
/// the batch path's TRACE lines, emitted by the real handler
/// (`login_etl::ingest::handler`'s "record valid"); a directive naming
/// another module keeps none of them.
#[tokio::test]
async fn rust_log_names_the_batch_path_by_its_module_path() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let mut seed = 0;
    let mut lines = |filter: &'static str| {
        seed += 1;
        let (h, seed) = (&h, seed);
        async move {
            let out = Capture::default();
            let writer = out.clone();
            let _guard = tracing::subscriber::set_default(login_etl::logging::subscriber(
                move || writer.clone(),
                true,
                filter,
            ));
            let batch = synth::event(&Options {
                count: 3,
                invalid_every: 0,
                seed,
                ..Options::default()
            });
            h.handle(&SqsBatch::from(&batch), Deadline::NONE)
                .await
                .unwrap();
            out.text()
        }
    };
    let ingest = lines("login_etl::ingest=trace").await;
    assert!(ingest.contains("record valid"), "{ingest}");
    let elsewhere = lines("login_etl::privacy=trace").await;
    assert!(!elsewhere.contains("\"level\":\"TRACE\""), "{elsewhere}");
}

#[tokio::test]
async fn nothing_the_function_writes_at_trace_contains_raw_pii_or_the_key() {
    let out = Capture::default();
    let writer = out.clone();
    let _ = tracing_log::LogTracer::init(); // tokio-postgres logs through `log`
    let _guard = tracing::subscriber::set_default(login_etl::logging::subscriber(
        move || writer.clone(),
        true,
        "trace",
    ));

    let db = TestDb::create().await;
    // The summary lines are EMF documents written beside the log: capture them too.
    let emf = Capture::default();
    let emf_writer = emf.clone();
    // The PII vault is on: its data key must never show either.
    let data_key = [0x5au8; 32];
    let h = handler(&db)
        .await
        .with_metrics(
            login_etl::ingest::metrics::Metrics::new("LoginEtl", "login-etl", "pii-test")
                .with_output(move |line| {
                    let mut w = emf_writer.clone();
                    std::io::Write::write_all(&mut w, format!("{line}\n").as_bytes()).unwrap();
                }),
        )
        .with_vault(
            login_etl::privacy::vault::DataKey::new(&data_key, vec![9; 40], "local").unwrap(),
        );
    let mut batches: Vec<SqsEvent> = [
        "sqs-valid.json",
        "sqs-mixed.json",
        "sqs-duplicates.json",
        "sqs-fifo.json",
    ]
    .iter()
    .map(|f| load_event(f))
    .collect();
    // Logins as real apps send them too: ports on ips, suffixed versions,
    // null device ids, numeric user ids (stored with their defects).
    batches.push(synth::event(&Options {
        count: 2_000,
        invalid_every: 7,
        defective_every: 3,
        seed: 61,
        ..Options::default()
    }));
    batches.push(synth::event(&Options {
        count: 10,
        invalid_every: 4,
        fifo: true,
        seed: 62,
        ..Options::default()
    }));
    // Upper-case IPv6 (logged canonical would be lower-case) and a NUL
    // inside a device id (logged escaped would be \u0000).
    batches.push(event_of(&[
        r#"{"user_id":"u-6","app_version":"1.0","device_type":"ios","ip":"2001:0DB8:AC10::FE01","locale":null,"device_id":"611-22-3344"}"#,
        r#"{"user_id":"u-7","app_version":"1.0","device_type":"ios","ip":"FE80:0:0:0:0:0:0:1","locale":null,"device_id":"711-22\u00003344"}"#,
        r#"{"user_id":"u-8","app_version":"x","device_type":"ios","ip":"2001:DB8::BEEF","locale":null,"device_id":"811-22-3344"}"#,
    ]));
    let mut errors = Vec::new();
    for b in &batches {
        h.handle(&SqsBatch::from(b), Deadline::NONE)
            .await
            .map(|o| o.response)
            .unwrap();
    }
    // The database refuses rows: the refusal path logs.
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT no_ios CHECK (device_type <> 'ios') NOT VALID",
        )
        .await
        .unwrap();
    let refused = synth::event(&Options {
        count: 300,
        invalid_every: 9,
        seed: 63,
        ..Options::default()
    });
    let (_, summary) = h
        .handle(&SqsBatch::from(&refused), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(summary.refused > 0, "the refusal path ran");
    // What a refused row's DETAIL ("Failing row contains ...") would leak:
    // its user id and its tokens.
    let mut refused_row_values = Vec::new();
    for m in &refused.records {
        if let Ok(body) = serde_json::from_str::<Value>(m.body.as_deref().unwrap())
            && body["device_type"] == "ios"
            && let (Some(ip), Some(dev)) = (body["ip"].as_str(), body["device_id"].as_str())
            && let Ok(ip) = ip.parse::<std::net::IpAddr>()
            && let Some(user) = body["user_id"].as_str()
        {
            refused_row_values.push(user.to_owned());
            refused_row_values.push(hmac_hex(TEST_KEY, &ip.to_string()));
            refused_row_values.push(hmac_hex(TEST_KEY, dev.trim()));
        }
    }
    assert!(refused_row_values.len() >= 3 * summary.refused);
    batches.push(refused);
    // Connection cut twice mid-statement, and a lock timeout: the transient
    // error paths log too.
    let proxy = common::proxy::Proxy::start(admin_port()).await;
    proxy.plan(&[
        common::proxy::Cut::ClientToServerAfter(20_000),
        common::proxy::Cut::ClientToServerAfter(20_000),
    ]);
    let cut = handler_with(&[
        (
            "DATABASE_URL",
            &through_port(&db.ingest_url().await, proxy.port),
        ),
        ("MASKING_KEY", TEST_KEY),
    ])
    .await;
    let cut_batch = synth::event(&Options {
        count: 200,
        seed: 66,
        ..Options::default()
    });
    errors.push(
        cut.handle(&SqsBatch::from(&cut_batch), Deadline::NONE)
            .await
            .map(|o| o.response)
            .unwrap_err()
            .to_string(),
    );
    assert_eq!(proxy.cuts().len(), 2, "both cuts fired");
    batches.push(cut_batch);
    let slow = handler_with(&[
        ("DATABASE_URL", &db.ingest_url().await),
        ("MASKING_KEY", TEST_KEY),
        ("DB_STATEMENT_TIMEOUT_MS", "200"),
    ])
    .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let locked_batch = synth::event(&Options {
        count: 30,
        seed: 67,
        ..Options::default()
    });
    errors.push(
        slow.handle(&SqsBatch::from(&locked_batch), Deadline::NONE)
            .await
            .map(|o| o.response)
            .unwrap_err()
            .to_string(),
    );
    tx.rollback().await.unwrap();
    batches.push(locked_batch);
    // The database is unreachable: the error path logs and returns an error.
    let down = handler_with(&[
        (
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:{}/x", closed_port()),
        ),
        ("MASKING_KEY", TEST_KEY),
    ])
    .await;
    let err_batch = synth::event(&Options {
        count: 50,
        seed: 64,
        ..Options::default()
    });
    errors.push(
        down.handle(&SqsBatch::from(&err_batch), Deadline::NONE)
            .await
            .map(|o| o.response)
            .unwrap_err()
            .to_string(),
    );
    batches.push(err_batch);
    // A malformed record: the handler fails the invocation when it reaches it.
    let malformed = std::fs::read_to_string(fixture_path("sqs-malformed.json")).unwrap();
    let batch: SqsBatch = serde_json::from_str(&malformed).unwrap();
    let e = down.handle(&batch, Deadline::NONE).await.unwrap_err();
    errors.push(e.to_string());
    errors.push(format!("{e:?} {batch:?}"));
    // A payload that is not an SQS event: the runtime reports this error.
    let not_an_event = r#"{"Records": {"ip": "10.20.30.40", "device_id": "999-88-7777"}}"#;
    let e = serde_json::from_str::<login_etl::SqsBatch>(not_an_event).unwrap_err();
    errors.push(e.to_string());
    errors.push(format!("{e:?}"));
    let jd = &mut serde_json::Deserializer::from_str(not_an_event);
    let e = serde_path_to_error::deserialize::<_, login_etl::SqsBatch>(jd).unwrap_err();
    errors.push(format!("{e} {e:?}"));

    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
        + &String::from_utf8(emf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("\"level\":\"TRACE\"") && logs.contains("\"level\":\"DEBUG\""),
        "verbose levels were on"
    );
    assert!(
        logs.contains("row refused by the database")
            && logs.contains("record rejected")
            && logs.contains("batch processed")
    );
    let mut values: Vec<String> = batches.iter().flat_map(pii_of).collect();
    values.extend(["10.20.30.40".to_owned(), "999-88-7777".to_owned()]); // in the malformed event
    assert!(values.len() > 4_000, "{} values", values.len());
    values.extend(refused_row_values);
    let everything = format!("{logs}\n{}", errors.join("\n"));
    assert!(
        !everything.contains("Failing row contains"),
        "a database DETAIL (which quotes rows) reached the output"
    );
    if std::env::var_os("PII_DEBUG").is_some() {
        for v in &values {
            if let Some(i) = everything.find(v.as_str()) {
                let lo = everything[..i].rfind('\n').unwrap_or(0);
                eprintln!(
                    "DEBUG {v:?} in: {}",
                    &everything[lo..(i + 200).min(everything.len())]
                );
            }
        }
    }
    assert!(
        !holds_any(&everything, &values),
        "raw PII found in the function's output or errors (value redacted)"
    );
    assert!(!everything.contains(TEST_KEY), "the masking key leaked");
    assert!(
        !everything.contains(&hex::encode(data_key)) && !everything.contains("90, 90, 90"),
        "the vault's data key leaked"
    );
    let vault_rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        vault_rows > 1_000,
        "the vault path ran ({vault_rows} entries)"
    );
}

/// The SDK's paths at TRACE too: rejected records copied to the DLQ (whose
/// request bodies are the raw messages) and visibility changes, through
/// moto, with `LOG_SIGNABLE_BODY=true`, which makes aws-sigv4 print request
/// bodies in its TRACE dump of each signed request, and
/// `LOG_SENSITIVE_BODIES=true`, which makes the SDK's orchestrator print
/// them too.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn with_the_dlq_the_backoff_and_log_signable_body_nothing_at_trace_contains_raw_pii() {
    let (_moto, port) = common::moto::start_moto();
    common::set_process_env(&[
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("LOG_SIGNABLE_BODY", "true".into()),
        ("LOG_SENSITIVE_BODIES", "true".into()),
    ]);
    let out = Capture::default();
    let writer = out.clone();
    let _ = tracing_log::LogTracer::init();
    let _guard = tracing::subscriber::set_default(login_etl::logging::subscriber(
        move || writer.clone(),
        true,
        "trace",
    ));
    let sqs = aws_sdk_sqs::Client::new(&login_etl::secrets::sdk_config().await);
    let dlq = sqs
        .create_queue()
        .queue_name("pii-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let source = sqs
        .create_queue()
        .queue_name("pii-source")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let key =
        || login_etl::privacy::vault::DataKey::new(&[0x3c; 32], vec![7; 40], "local").unwrap();
    let up = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", TEST_KEY),
        ("DLQ_URL", &dlq),
    ])
    .await
    .with_vault(key());
    let down = handler_with(&[
        (
            "DATABASE_URL",
            &format!("postgres://x@127.0.0.1:{}/x", closed_port()),
        ),
        ("MASKING_KEY", TEST_KEY),
        ("DLQ_URL", &dlq),
        ("SOURCE_QUEUE_URL", &source),
        ("BACKOFF_BASE_SECONDS", "30"),
    ])
    .await
    .with_vault(key());
    let batches: Vec<SqsEvent> = (0..3)
        .map(|seed| {
            synth::event(&Options {
                count: 60,
                invalid_every: 3,
                seed: 900 + seed,
                ..Options::default()
            })
        })
        .collect();
    let mut sent = 0;
    for b in &batches {
        let (_, summary) = up
            .handle(&SqsBatch::from(b), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        sent += summary.sent_to_dlq;
        let (_, summary) = down
            .handle(&SqsBatch::from(b), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        assert!(summary.failure.is_some() && summary.failed > 0);
    }
    assert!(sent > 30, "the DLQ path ran ({sent} copies)");
    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("\"level\":\"TRACE\""), "TRACE was on");
    // As text, and as the byte list a `Debug` of a body prints.
    let values: Vec<String> = batches
        .iter()
        .flat_map(pii_of)
        .flat_map(|v| {
            let bytes = v.bytes().map(|b| b.to_string()).collect::<Vec<_>>();
            [bytes.join(", "), v]
        })
        .collect();
    assert!(
        !holds_any(&logs, &values),
        "raw PII in the SDK's TRACE output (value redacted)"
    );
}

/// What the SDK tests run against: moto's SQS, Secrets Manager and KMS,
/// a queue and its DLQ, the three secrets (a database password and two
/// keys the test can look for) and the vault's KMS key.
struct Aws {
    _moto: common::moto::Moto,
    endpoint: String,
    queue: String,
    dlq: String,
    db_secret: String,
    masking_secret: String,
    erasure_secret: String,
    kms_key: String,
    /// The password, the masking key and the erasure key: none may appear.
    secrets: Vec<String>,
}

async fn aws_for(db: &TestDb, ingest_role: &str) -> Aws {
    let (moto, port) = common::moto::start_moto();
    let endpoint = format!("http://127.0.0.1:{port}");
    let sdk = common::moto::moto_sdk(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = |name: &'static str| {
        let sqs = sqs.clone();
        async move {
            sqs.create_queue()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url
                .unwrap()
        }
    };
    let (queue, dlq) = (queue("pii-logins").await, queue("pii-logins-dlq").await);
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let password = "pw-Zq8vRk2wLm5Tx9Ny";
    let (masking, erasure) = (
        "5e1a0c7f3b9d2e4a6c8f1b3d5e7a9c0b2d4f6a8c1e3b5d7f9a0c2e4b6d8f1a3c",
        "c3a1f8d6b4e2c0a9f7d5b3e1c8a6f4d2b0e9c7a5f3d1b8e6c4a2f0d9b7e5c3a1",
    );
    let (host_port, dbname) = {
        let rest = db.url.split_once('@').unwrap().1;
        let (host_port, name) = rest.split_once('/').unwrap();
        (host_port.to_owned(), name.to_owned())
    };
    let (host, port_text) = host_port.split_once(':').unwrap();
    let secret = |name: &'static str, value: String| {
        let sm = sm.clone();
        async move {
            sm.create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
                .unwrap()
                .arn
                .unwrap()
        }
    };
    let db_secret = secret(
        "login-etl/db",
        serde_json::json!({
            "engine": "postgres", "username": ingest_role, "password": password,
            "host": host, "port": port_text.parse::<u16>().unwrap(), "dbname": dbname,
        })
        .to_string(),
    )
    .await;
    let masking_secret = secret("login-etl/masking-key", masking.to_owned()).await;
    let erasure_secret = secret("login-etl/erasure-key", erasure.to_owned()).await;
    let kms_key = aws_sdk_kms::Client::new(&sdk)
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .arn
        .unwrap();
    Aws {
        _moto: moto,
        endpoint,
        queue,
        dlq,
        db_secret,
        masking_secret,
        erasure_secret,
        kms_key,
        secrets: vec![password.to_owned(), masking.to_owned(), erasure.to_owned()],
    }
}

impl Aws {
    /// The environment of the binary: everything from Secrets Manager and
    /// KMS through the SDK, every verbose switch on (a debug build keeps
    /// TRACE), and the SDK's own switches to print bodies.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DB_SECRET_ID", self.db_secret.clone()),
            ("DB_SSLMODE", "disable".into()),
            ("MASKING_KEY_SECRET_ID", self.masking_secret.clone()),
            ("ERASURE_KEY_SECRET_ID", self.erasure_secret.clone()),
            ("VAULT_KMS_KEY_ID", self.kms_key.clone()),
            ("DLQ_URL", self.dlq.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("LOG_SENSITIVE_BODIES", "true".into()),
            ("LOG_SIGNABLE_BODY", "true".into()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
    }

    /// Asserts that `output` holds no value of `events`, no secret, and no
    /// KMS plaintext data key.
    fn assert_clean(&self, output: &str, events: &[SqsEvent]) {
        assert!(
            output.contains("TRACE"),
            "TRACE was on: {}",
            &output[..output.len().min(2000)]
        );
        let mut values: Vec<String> = events.iter().flat_map(pii_of).collect();
        values.extend(self.secrets.iter().cloned());
        assert!(
            !holds_any(output, &values),
            "a raw ip, device id, key or the database password in the output (value redacted)"
        );
        assert!(
            !output.contains("Plaintext"),
            "KMS's plaintext data key in the output"
        );
    }
}

/// `login-etl poll` as a process of its own, its output in a file.
struct Poll {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Poll {
    /// Starts `login-etl poll <args>` with `aws`'s environment and `more`.
    fn start(aws: &Aws, tag: &str, more: &[(&str, &str)], args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("login-etl-{tag}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_login-etl"))
            .env_clear()
            .envs(aws.env())
            .envs(more.iter().copied())
            .arg("poll")
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("the binary runs");
        Poll { child, log }
    }

    /// Panics with the output if the consumer has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "poll exited ({status}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// SIGTERM, then its exit status and whole output (the file removed).
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        let output = std::fs::read_to_string(&self.log).unwrap();
        let _ = std::fs::remove_file(&self.log);
        (status, output)
    }
}

/// `login-etl poll` in a debug build at TRACE, with the SDK told to print
/// bodies (`LOG_SENSITIVE_BODIES`, `LOG_SIGNABLE_BODY`): the SDK reads every
/// message, each secret and a data key, and its TRACE output would carry
/// them all (read response bodies, debug prints of `ReceiveMessage` and
/// `GetSecretValue` outputs). None of it is written.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn poll_at_trace_with_the_sdk_printing_bodies_writes_no_pii_key_or_password() {
    let (aws, event, output) = poll_output("pii-poll", "trace").await;
    assert!(
        output.contains("ReceiveMessage") || output.contains("receive"),
        "the consumer received: {}",
        &output[..output.len().min(2000)]
    );
    aws.assert_clean(&output, &[event]);
}

/// The binary's filter takes the module paths docs/configuration.md
/// documents: under `RUST_LOG=warn,login_etl::ingest=trace`, `login-etl
/// poll` writes the batch path's TRACE lines ("record valid",
/// `login_etl::ingest::handler`) and not its own INFO ("polling",
/// `login_etl::poll`); under `login_etl::poll=trace`, the reverse.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn the_binarys_rust_log_names_the_batch_path_by_its_module_path() {
    let has = |output: &str, level: &str, message: &str| {
        output
            .lines()
            .any(|l| l.trim_start().starts_with(level) && l.contains(message))
    };
    let (_, _, ingest) = poll_output("rust-log-ingest", "warn,login_etl::ingest=trace").await;
    assert!(
        has(&ingest, "TRACE", "record valid") && !has(&ingest, "INFO", "polling"),
        "{}",
        &ingest[..ingest.len().min(2000)]
    );
    let (_, _, poll) = poll_output("rust-log-poll", "warn,login_etl::poll=trace").await;
    assert!(
        has(&poll, "INFO", "polling") && !has(&poll, "TRACE", "record valid"),
        "{}",
        &poll[..poll.len().min(2000)]
    );
}

/// `login-etl poll` under `rust_log` over 40 messages (a quarter of them
/// invalid), stopped once their rows are in: its whole output.
async fn poll_output(tag: &str, rust_log: &str) -> (Aws, SqsEvent, String) {
    let db = TestDb::create().await;
    db.ingest_url().await;
    let aws = aws_for(
        &db,
        &db.role_name(login_etl::table::privileges::Role::Ingest),
    )
    .await;
    let event = synth::event(&Options {
        count: 40,
        invalid_every: 4,
        seed: 4_401,
        ..Options::default()
    });
    let sqs = aws_sdk_sqs::Client::new(&common::moto::moto_sdk(&aws.endpoint).await);
    for m in &event.records {
        sqs.send_message()
            .queue_url(&aws.queue)
            .message_body(m.body.clone().unwrap())
            .send()
            .await
            .unwrap();
    }
    let valid = event.records.len() - event.records.len() / 4;
    let mut poll = Poll::start(
        &aws,
        tag,
        &[("RUST_LOG", rust_log)],
        &["--queue-url", &aws.queue, "--concurrency", "2"],
    );
    let admin = db.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while count_rows(&admin).await < valid as i64 {
        poll.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "poll wrote its rows within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, output) = poll.stop();
    assert!(status.success(), "poll stopped cleanly: {status}");
    (aws, event, output)
}

/// `login-etl poll` whose masking key is not the one the database records
/// (a secret replaced instead of appended to), read as Lambda's filter
/// would (JSON, at WARN): it says so at start, at ERROR, with the class and
/// the fix and no key; `/readyz` is never 200 before that and answers 503
/// with the class, then 200 once the database no longer refuses the keys,
/// with no batch to clear it.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn poll_says_at_start_that_its_keys_are_refused_and_is_not_ready() {
    let db = TestDb::create().await;
    db.ingest_url().await;
    let aws = aws_for(
        &db,
        &db.role_name(login_etl::table::privileges::Role::Ingest),
    )
    .await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "UPDATE user_logins_key_state SET masking_check = '{}'",
            "0f".repeat(32)
        ))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let health = format!("127.0.0.1:{port}");
    let mut poll = Poll::start(
        &aws,
        "keys-at-start",
        &[
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        ],
        &["--queue-url", &aws.queue, "--health-addr", &health],
    );
    let readyz = || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        if let Some(a) = readyz() {
            // Never ready before the start's check said why not.
            assert!(!a.contains(" 200 "), "ready before the check: {a}");
            if a.contains("refused at start") {
                break a;
            }
        }
        poll.assert_running();
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal at start within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // Mended without a restart (here: the recorded value cleared, as a
    // database put back would): the probe asks again and the consumer is
    // ready, on a queue where no batch arrives to clear it.
    admin
        .batch_execute("UPDATE user_logins_key_state SET masking_check = NULL")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !readyz().is_some_and(|a| a.contains(" 200 ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "ready within 30 s of the mend: {:?}",
            readyz()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, output) = poll.stop();
    assert!(
        answer.starts_with("HTTP/1.0 503") || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    assert!(answer.contains("key_mismatch"), "{answer}");
    let said: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("every batch would be refused"))
        })
        .collect();
    assert_eq!(said.len(), 1, "one ERROR line at start: {output}");
    assert!(
        said[0]["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("masking key") && e.contains("leaked-key.md")),
        "{output}"
    );
    assert!(status.success(), "poll stopped cleanly: {status}");
    assert!(
        !holds_any(&output, &aws.secrets),
        "a key or the database password in the output (value redacted)"
    );
}

/// The function as Lambda runs it (the binary behind a Runtime API), at
/// TRACE, its secrets, DLQ copies and data key through the SDK with bodies
/// printed on request: nothing of it written.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn the_function_at_trace_with_the_sdk_printing_bodies_writes_no_pii_key_or_password() {
    use common::runtime_api::{Outcome, RuntimeApi};
    let db = TestDb::create().await;
    db.ingest_url().await;
    let aws = aws_for(
        &db,
        &db.role_name(login_etl::table::privileges::Role::Ingest),
    )
    .await;
    let events: Vec<SqsEvent> = (0..2)
        .map(|i| {
            synth::event(&Options {
                count: 50,
                invalid_every: 5,
                seed: 4_500 + i,
                ..Options::default()
            })
        })
        .collect();
    let api = RuntimeApi::start().await;
    for (i, e) in events.iter().enumerate() {
        api.push(&format!("req-{i}"), e);
    }
    let log = std::env::temp_dir().join(format!("login-etl-pii-fn-{}.log", std::process::id()));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .env_clear()
        .envs(aws.env())
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{}", api.port))
        .env("AWS_LAMBDA_FUNCTION_NAME", "login-etl")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", "TRACE")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the function binary runs");
    let outcomes = api
        .wait_for(
            events.len(),
            std::time::Duration::from_secs(60),
            || match child.try_wait() {
                Ok(Some(status)) => Err(format!(
                    "the function exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
                _ => Ok(()),
            },
        )
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let output = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    // Every reject copied to the DLQ but those SQS cannot take (an empty
    // body), left to its redrive.
    let empty: std::collections::BTreeSet<String> = events
        .iter()
        .flat_map(|e| &e.records)
        .filter(|m| m.body.as_deref().is_none_or(str::is_empty))
        .map(|m| m.message_id.clone().unwrap())
        .collect();
    for (id, outcome) in &outcomes {
        match outcome {
            Outcome::Response(r) => {
                for failed in r["batchItemFailures"].as_array().unwrap() {
                    let failed = failed["itemIdentifier"].as_str().unwrap();
                    assert!(empty.contains(failed), "{id}: {failed} failed: {r}");
                }
            }
            Outcome::Error(e) => panic!("{id} failed: {e}"),
        }
    }
    aws.assert_clean(&output, &events);
}
