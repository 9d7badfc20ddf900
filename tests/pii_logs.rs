//! No raw ip or device_id, and never the masking key, in anything the
//! function writes: every event file, generated batches, and the error paths
//! (invalid records, rows the database refuses, an unreachable database, a
//! malformed event), through the function's own subscriber at TRACE in JSON.

mod common;

use std::sync::{Arc, Mutex};

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, Outcome, SqsBatch};
use serde_json::Value;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
                    let escaped = serde_json::to_string(raw).unwrap();
                    forms.push(escaped.trim_matches('"').to_owned());
                    for f in forms {
                        if f.len() >= 3 && f != "127.0.0.1" && f != "::1" && seen.insert(f.clone())
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
    batches.push(synth::event(&Options {
        count: 2_000,
        invalid_every: 7,
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
            "ALTER TABLE user_logins ADD CONSTRAINT no_ios CHECK (device_type <> 'ios') NOT VALID",
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
        {
            refused_row_values.push(body["user_id"].as_str().unwrap().to_owned());
            refused_row_values.push(hmac_hex(TEST_KEY, &ip.to_string()));
            refused_row_values.push(hmac_hex(TEST_KEY, dev.trim()));
        }
    }
    assert!(refused_row_values.len() >= 3 * summary.refused);
    batches.push(refused);
    // Connection cut twice mid-statement, and a lock timeout: the transient
    // error paths log too.
    let proxy = common::proxy::Proxy::start(5432).await;
    proxy.plan(&[
        common::proxy::Cut::ClientToServerAfter(20_000),
        common::proxy::Cut::ClientToServerAfter(20_000),
    ]);
    let cut = handler_with(&[
        (
            "DATABASE_URL",
            &db.ingest_url()
                .await
                .replace(":5432/", &format!(":{}/", proxy.port)),
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
/// bodies in its TRACE dump of each signed request.
#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn with_the_dlq_the_backoff_and_log_signable_body_nothing_at_trace_contains_raw_pii() {
    let (_moto, port) = common::moto::start_moto();
    for (k, v) in [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("LOG_SIGNABLE_BODY", "true".into()),
    ] {
        // SAFETY: the other test of this binary reads none of these.
        unsafe { std::env::set_var(k, v) };
    }
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
    assert!(
        logs.contains("SendMessageBatch") || logs.contains("send_message_batch"),
        "the SDK logged its calls"
    );
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
