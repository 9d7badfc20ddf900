//! No raw ip or device_id, and never the masking key, in anything the
//! function writes: every event file, generated batches, and the error paths
//! (invalid records, rows the database refuses, an unreachable database, a
//! malformed event), through the function's own subscriber at TRACE in JSON.

mod common;

use std::sync::{Arc, Mutex};

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use login_etl::synth::{self, Options};
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

/// Raw ip and device_id values of a batch, except 127.0.0.1: the test
/// database's own address, which the function rightly logs as its target.
fn pii_of(event: &SqsEvent) -> Vec<String> {
    let mut out = Vec::new();
    for m in &event.records {
        if let Ok(body) = serde_json::from_str::<Value>(m.body.as_deref().unwrap_or("")) {
            for key in ["ip", "device_id"] {
                if let Some(v) = body.get(key).and_then(Value::as_str) {
                    let v = v.trim().trim_matches('\0');
                    if v.len() >= 3 && v != "127.0.0.1" {
                        out.push(v.to_owned());
                    }
                }
            }
        }
    }
    out
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
    let h = handler(&db.url).await;
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
    let mut errors = Vec::new();
    for b in &batches {
        h.handle(b).await.unwrap();
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
    let (_, summary) = h.handle_with_summary(&refused).await.unwrap();
    assert!(summary.refused > 0, "the refusal path ran");
    batches.push(refused);
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
    errors.push(down.handle(&err_batch).await.unwrap_err().to_string());
    batches.push(err_batch);
    // A malformed event: the runtime would report this deserialization error.
    let malformed = std::fs::read_to_string(fixture_path("sqs-malformed.json")).unwrap();
    errors.push(
        serde_json::from_str::<login_etl::SqsBatch>(&malformed)
            .unwrap_err()
            .to_string(),
    );
    errors.push(format!(
        "{:?}",
        serde_json::from_str::<login_etl::SqsBatch>(&malformed).unwrap_err()
    ));

    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
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
    let everything = format!("{logs}\n{}", errors.join("\n"));
    for v in &values {
        assert!(
            !everything.contains(v.as_str()),
            "raw PII found in the function's output or errors (value redacted)"
        );
    }
    assert!(!everything.contains(TEST_KEY), "the masking key leaked");
}
