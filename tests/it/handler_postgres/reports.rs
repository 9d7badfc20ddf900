//! What a batch reports: its EMF documents, record by record, and the
//! fields outside the contract (declared, kept; undeclared, named, never stored).

use super::*;

/// The number of transactions the INSERT path tries for `n` rows of which
/// those at `refused` are refused: every range is tried once, and a range
/// holding a refused row is split in two (left half first) down to that
/// row. Derived here from that rule, not from the crate.
fn bisection_statements(n: usize, refused: &[usize]) -> u32 {
    let mut statements = 0;
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    todo.push(0..n);
    while let Some(r) = todo.pop() {
        if r.is_empty() {
            continue;
        }
        statements += 1;
        if r.len() > 1 && refused.iter().any(|i| r.contains(i)) {
            let mid = r.start + r.len() / 2;
            todo.push(mid..r.end);
            todo.push(r.start..mid);
        }
    }
    statements
}

/// The EMF documents the handler writes for one batch with duplicates
/// (redelivered and repeated in the batch), rows the database refuses,
/// rejected records sent to the DLQ, one whose copy the DLQ refuses and
/// empty bodies (never sent), checked field by field against counts this
/// test derives from how it built the batch; the ingest lag against the
/// oldest `SentTimestamp` it set (not the first record's), within the
/// invocation's time.
#[tokio::test]
async fn the_emf_documents_of_a_batch_count_what_happened_to_each_record() {
    use login_etl::ingest::dlq::DeadLetterQueue;
    let db = TestDb::create().await;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut event = synth::event(&Options {
        count: 120,
        invalid_every: 6,
        seed: 96,
        sent_timestamp_ms: now_ms - 600_000,
        ..Options::default()
    });
    let label = |m: &aws_lambda_events::event::sqs::SqsMessage| {
        m.message_attributes["expect"].string_value.clone().unwrap()
    };
    // An earlier delivery committed the first 12 records.
    let mut earlier = event.clone();
    earlier.records.truncate(12);
    handler(&db)
        .await
        .handle(&SqsBatch::from(&earlier), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    let redelivered = earlier
        .records
        .iter()
        .filter(|m| label(m).starts_with("insert"))
        .count();
    // One rejected record whose DLQ copy the queue refuses.
    let dlq_refused = 40;
    assert_eq!(label(&event.records[dlq_refused]), "insert");
    event.records[dlq_refused].body = Some(r#"{"device_type": "FAIL_ME"}"#.into());
    event.records[dlq_refused]
        .message_attributes
        .get_mut("expect")
        .unwrap()
        .string_value = Some("reject:missing_field.user_id".into());
    // One message delivered twice in the batch.
    let repeated = event.records[20].clone();
    assert_eq!(label(&repeated), "insert");
    event.records.push(repeated);
    // The oldest message sits in the middle; one has no SentTimestamp.
    let oldest_ms = now_ms - 3_600_000;
    event.records[70]
        .attributes
        .insert("SentTimestamp".into(), oldest_ms.to_string());
    without_sent_timestamp(&mut event.records[71]);
    // Two rows the database refuses.
    let refused_at = [50, 100];
    let user = |i: usize| -> String {
        let body: Value = serde_json::from_str(event.records[i].body.as_deref().unwrap()).unwrap();
        body["user_id"].as_str().unwrap().to_owned()
    };
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT refuse_two CHECK (coalesce(user_id_text, user_id::text) NOT IN ('{}', '{}'))",
            user(refused_at[0]),
            user(refused_at[1])
        ))
        .await
        .unwrap();

    // What the test expects, from how it built the batch.
    let labels: Vec<String> = event.records.iter().map(label).collect();
    let valid: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i].starts_with("insert"))
        .collect();
    let mut by_reason: std::collections::BTreeMap<String, u64> = Default::default();
    for l in &labels {
        if let Some(code) = l.strip_prefix("reject:") {
            *by_reason.entry(code.to_owned()).or_default() += 1;
        }
    }
    let rejected: u64 = by_reason.values().sum();
    let empty = event
        .records
        .iter()
        .filter(|m| m.body.as_deref() == Some(""))
        .count() as u64;
    assert!(empty > 0 && by_reason.len() > 2);
    let duplicates = redelivered as u64 + 1;
    let refused = refused_at.len() as u64;
    let inserted = valid.len() as u64 - duplicates - refused;
    // Empty bodies too reach the DLQ (a copy says what they were); only the
    // copy the queue refuses and the refused rows are failures.
    let failures_want = 1 + refused;
    let sent = rejected - 1;
    let rows_refused: Vec<usize> = refused_at
        .iter()
        .map(|r| valid.iter().position(|v| v == r).unwrap())
        .collect();
    let statements = bisection_statements(valid.len(), &rows_refused);

    let port = scripted_sqs(false).await;
    let (metrics, docs) = captured_metrics();
    let h = handler(&db)
        .await
        .with_dead_letter_queue(DeadLetterQueue::new(
            sqs_client(&format!("http://127.0.0.1:{port}")).await,
            format!("http://127.0.0.1:{port}/000000000000/login-dlq"),
        ))
        .with_metrics(metrics);
    let before_ms = chrono::Utc::now().timestamp_millis();
    let started = std::time::Instant::now();
    let resp = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    let took_ms = started.elapsed().as_millis() as u64;
    let after_ms = chrono::Utc::now().timestamp_millis();
    assert_eq!(resp.batch_item_failures.len() as u64, failures_want);

    let docs = docs.lock().unwrap().clone();
    assert_eq!(
        docs.len(),
        1 + by_reason.len(),
        "the summary and one document per rejection reason"
    );
    let d = &docs[0];
    assert_eq!(d["message"], "batch processed");
    for (name, want) in [
        ("RecordsReceived", event.records.len() as u64),
        ("RowsInserted", inserted),
        ("Duplicates", duplicates),
        ("Rejected", rejected),
        ("Refused", refused),
        ("BatchItemFailures", failures_want),
        ("SentToDlq", sent),
        ("InvocationFailed", 0),
        ("ColdStart", 1),
    ] {
        assert_eq!(d[name].as_u64(), Some(want), "{name}");
    }
    // The partitions made ahead, from the catalog: migrate made them
    // contiguous from today to its newest.
    let newest: chrono::NaiveDate = db
        .client()
        .await
        .query_one("SELECT max(hi) FROM login_etl_partitions()", &[])
        .await
        .unwrap()
        .get(0);
    let ahead = (newest - chrono::Utc::now().date_naive()).num_days() - 1;
    assert!(ahead >= 1, "migrate made partitions ahead");
    assert_eq!(d["PartitionDaysAhead"].as_i64(), Some(ahead));
    let lag = d["IngestLagMs"].as_u64().expect("IngestLagMs");
    let (low, high) = (
        (before_ms - oldest_ms) as u64,
        (after_ms - oldest_ms) as u64,
    );
    assert!(
        (low..=high).contains(&lag),
        "IngestLagMs {lag} is now minus the oldest SentTimestamp: within {low}..={high}"
    );
    let duration = d["BatchDurationMs"].as_u64().expect("BatchDurationMs");
    assert!(
        duration <= took_ms,
        "BatchDurationMs {duration} > {took_ms}"
    );
    assert_eq!(d["statements"].as_u64(), Some(u64::from(statements)));
    assert_eq!(d["copied"], false);
    assert_eq!(d["fifo"], false);
    assert_eq!(d["function_name"], "login-etl");
    assert_eq!(
        d["rejected_by_reason"],
        serde_json::to_value(&by_reason).unwrap()
    );
    // Every metric checked above is declared, so CloudWatch extracts it.
    let declared: Vec<&str> = d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    for name in [
        "RecordsReceived",
        "RowsInserted",
        "Duplicates",
        "Rejected",
        "Refused",
        "BatchItemFailures",
        "SentToDlq",
        "BatchDurationMs",
        "InvocationFailed",
        "IngestLagMs",
        "PartitionDaysAhead",
    ] {
        assert!(declared.contains(&name), "{name} declared");
    }
    let per_reason: std::collections::BTreeMap<String, u64> = docs[1..]
        .iter()
        .map(|r| {
            assert_eq!(r["message"], "records rejected");
            (
                r["reason"].as_str().unwrap().to_owned(),
                r["Rejected"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(per_reason, by_reason, "one document per reason, its count");
}

/// A producer adds fields: `app_build`, declared in `EXTRA_FIELDS`, is
/// kept in `extra` as the JSON it was (a nested document is not kept: a
/// defect of its row); `email` and `ip_199_172_111_135`, declared nowhere,
/// are counted, stored nowhere, and their names appear in no log line, EMF
/// document or DLQ copy (a name may be PII; `login-etl validate` names
/// them). With `UNKNOWN_FIELDS=reject` the message goes to the DLQ as
/// `unknown_field`, its value masked.
#[tokio::test]
async fn a_declared_field_is_kept_and_an_undeclared_one_counted_never_named_or_stored() {
    const EMAIL: &str = "someone.unique@example.com";
    const NAME: &str = "ip_199_172_111_135";
    let logs = Capture::default();
    let writer = logs.clone();
    let _guard = tracing::subscriber::set_default(login_etl::logging::subscriber(
        move || writer.clone(),
        true,
        "trace",
    ));
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let mut event = synth::event(&Options {
        count: 3,
        seed: 54,
        ..Options::default()
    });
    for m in &mut event.records[..2] {
        let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["app_build"] = serde_json::json!("7.1 (beta)");
        body["email"] = EMAIL.into();
        body[NAME] = true.into();
        m.body = Some(body.to_string());
    }
    let mut nested: Value =
        serde_json::from_str(event.records[2].body.as_deref().unwrap()).unwrap();
    nested["app_build"] = serde_json::json!({"ip": "10.1.2.3"});
    event.records[2].body = Some(nested.to_string());
    let (metrics, docs) = captured_metrics();
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", TEST_KEY),
        ("EXTRA_FIELDS", "app_build"),
    ])
    .await
    .with_metrics(metrics);
    let summary = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!((summary.inserted, summary.unknown_fields), (3, 2));
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT message_id, extra, row_to_json(u)::text, defects FROM user_logins u ORDER BY message_id",
            &[],
        )
        .await
        .unwrap();
    let mut kept = 0;
    for row in &rows {
        let whole: String = row.get(2);
        assert!(!whole.contains(EMAIL), "an undeclared field was stored");
        assert!(!whole.contains("10.1.2.3"), "a nested document was stored");
        let extra: Option<String> = client
            .query_one(
                "SELECT extra::text FROM user_logins WHERE message_id = $1",
                &[&row.get::<_, String>(0)],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(extra) = extra {
            let v: Value = serde_json::from_str(&extra).unwrap();
            assert_eq!(v, serde_json::json!({"app_build": "7.1 (beta)"}));
            assert_eq!(row.get::<_, Option<Vec<String>>>(3), None, "clean");
            kept += 1;
        } else {
            assert_eq!(
                row.get::<_, Option<Vec<String>>>(3),
                Some(vec!["app_build.not_scalar".to_owned()])
            );
        }
    }
    assert_eq!(kept, 2, "kept where sent, NULL elsewhere");
    let doc = docs.lock().unwrap()[0].clone();
    assert_eq!(doc["UnknownFields"], 2);
    assert!(!doc.to_string().contains(EMAIL));
    assert!(!doc.to_string().contains(NAME) && !doc.to_string().contains("email"));

    // Refused instead, to the DLQ with its reason and no value of it.
    let (port, sent) = common::sqs::capturing_sqs().await;
    let db = TestDb::create().await;
    let url = db.ingest_url().await;
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", TEST_KEY),
        ("EXTRA_FIELDS", "app_build"),
        ("UNKNOWN_FIELDS", "reject"),
    ])
    .await
    .with_dead_letter_queue(login_etl::ingest::dlq::DeadLetterQueue::new(
        sqs_client(&format!("http://127.0.0.1:{port}")).await,
        format!("http://127.0.0.1:{port}/000000000000/login-dlq"),
    ));
    let summary = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!(
        summary.inserted, 1,
        "the nested document is a defect, not a reason"
    );
    assert_eq!(summary.rejected.get("unknown_field"), Some(&2));
    let sent = sent.lock().unwrap().clone();
    let entries: Vec<&Value> = sent
        .iter()
        .flat_map(|b| b["Entries"].as_array().unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert_eq!(
            e["MessageAttributes"]["rejection_code"]["StringValue"],
            "unknown_field"
        );
        assert!(!e.to_string().contains(EMAIL));
        assert!(!e.to_string().contains(NAME), "{e}");
    }
    let logs = logs.text();
    assert!(logs.contains("fields outside the contract"), "{logs}");
    assert!(!logs.contains(NAME) && !logs.contains(EMAIL), "{logs}");
}
