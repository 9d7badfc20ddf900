//! CloudWatch metrics as Embedded Metric Format (EMF) documents: the
//! invocation's summary line *is* its metrics document, one JSON line on
//! stdout that reads as a log line and that CloudWatch turns into metrics.
//!
//! Written by hand with serde_json (already a dependency) rather than a
//! metrics crate: the format is a few fixed keys, and the binary pays for
//! every crate. Names follow AWS Lambda Powertools: namespace from
//! `POWERTOOLS_METRICS_NAMESPACE`, a `service` dimension from
//! `POWERTOOLS_SERVICE_NAME`, and a `ColdStart` count with a
//! `function_name` dimension once per execution environment.
//!
//! Only counts, durations and bounded codes go in: never a body, an ip, a
//! device id or a user id.
//!
//! **Log-level filtering.** With JSON logs, Lambda keeps a line only when
//! its `"level"` is at or above the function's `ApplicationLogLevel` (a line
//! without one counts as INFO), and an EMF document dropped there takes its
//! metrics with it. So each document carries the lowest level the filter
//! keeps: INFO, or the configured level when that is higher
//! ([`crate::emf::emf_level`]). A summary at `"level":"ERROR"` under `LogLevel=ERROR` is
//! still a summary: its `message` says what it is.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value, json};

use crate::ingest::summary::BatchSummary;

/// What one invocation did, as metrics: the batch's summary, and what only
/// the invocation knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvocationMetrics {
    /// The batch's counts (all zero but `received` when the invocation
    /// failed before it had any).
    pub summary: BatchSummary,
    /// Wall time of the invocation's work.
    pub duration_ms: u64,
    /// Now minus the oldest `SentTimestamp` of the batch.
    pub ingest_lag_ms: Option<u64>,
    /// Whether the batch came from a FIFO queue.
    pub fifo: bool,
    /// The invocation returned an error (the whole batch is redelivered);
    /// false when the failed records were reported and backed off.
    pub invocation_failed: bool,
    /// Whole days after today with a partition ready, as last read (at most
    /// [`crate::ingest::handler::PARTITIONS_READ_EVERY`] ago); `None` before
    /// the first read or for a table without range partitions.
    pub partition_days_ahead: Option<i64>,
}


type EmfWriter = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes the EMF documents of each invocation.
pub struct Metrics {
    namespace: String,
    service: String,
    function_name: String,
    cold_start: AtomicBool,
    level: &'static str,
    output: EmfWriter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics under `namespace` with the `service` dimension, for the
    /// function `function_name`, written as lines to stdout.
    pub fn new(namespace: &str, service: &str, function_name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            function_name: function_name.to_owned(),
            cold_start: AtomicBool::new(true),
            level: "INFO",
            output: Arc::new(|line: &str| {
                // One write per line, so lines of concurrent writers never interleave.
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(format!("{line}\n").as_bytes());
                let _ = out.flush();
            }),
        }
    }

    /// Writes every document at `level` (see [`emf_level`]), so Lambda's
    /// log-level filter keeps it.
    pub fn with_level(mut self, level: &'static str) -> Self {
        self.level = level;
        self
    }

    /// Sends the lines elsewhere (tests).
    pub fn with_output(mut self, output: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.output = Arc::new(output);
        self
    }

    /// Writes the invocation's documents: the summary (with `ColdStart` on
    /// the first invocation of this environment), then one per rejection
    /// reason and one per defect code, each on its own line.
    pub fn emit(&self, m: &InvocationMetrics, timestamp_ms: i64) {
        let cold = self.cold_start.swap(false, Ordering::Relaxed);
        for doc in self.documents(m, timestamp_ms, cold) {
            (self.output)(&doc.to_string());
        }
    }

    /// The EMF documents for `m` (see [`emit`](Self::emit)).
    pub fn documents(
        &self,
        m: &InvocationMetrics,
        timestamp_ms: i64,
        cold_start: bool,
    ) -> Vec<Value> {
        let metrics = counts(m);
        let signed = signed(m);
        let s = &m.summary;
        let names = metrics
            .iter()
            .map(|(name, _, unit)| (*name, *unit))
            .chain(signed.iter().map(|(name, _, unit)| (*name, *unit)));
        let mut directives = vec![json!({
            "Namespace": self.namespace,
            "Dimensions": [["service"]],
            "Metrics": names.map(|(name, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
        })];
        let mut root = Map::new();
        if cold_start {
            directives.push(json!({
                "Namespace": self.namespace,
                "Dimensions": [["service", "function_name"]],
                "Metrics": [{"Name": "ColdStart", "Unit": "Count"}],
            }));
            root.insert("ColdStart".into(), json!(1));
            root.insert("function_name".into(), json!(self.function_name));
        }
        root.insert(
            "_aws".into(),
            json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}),
        );
        root.insert("level".into(), json!(self.level));
        root.insert(
            "message".into(),
            json!(if s.failure.is_some() {
                "batch failed"
            } else {
                "batch processed"
            }),
        );
        root.insert("service".into(), json!(self.service));
        for (name, value, _) in &metrics {
            root.insert((*name).into(), json!(value));
        }
        for (name, value, _) in &signed {
            root.insert((*name).into(), json!(value));
        }
        // Context for a reader of the log line (not metrics).
        root.insert("rejected_by_reason".into(), json!(s.rejected));
        if !s.defects.is_empty() {
            root.insert("defects_by_code".into(), json!(s.defects));
        }
        root.insert("fifo".into(), json!(m.fifo));
        root.insert("statements".into(), json!(s.statements));
        root.insert("copied".into(), json!(s.copied));
        let mut docs = vec![Value::Object(root)];
        if let Some(class) = s.failure {
            let failed = json!({"failure_class": class, "BatchFailed": 1});
            docs.push(self.by(
                timestamp_ms,
                "failure_class",
                "BatchFailed",
                "batch write failed",
                failed,
            ));
        }
        for (reason, n) in &s.rejected {
            let rejected = json!({"reason": reason, "Rejected": n});
            docs.push(self.by(
                timestamp_ms,
                "reason",
                "Rejected",
                "records rejected",
                rejected,
            ));
        }
        for (code, n) in &s.defects {
            let defects = json!({"defect": code, "Defects": n});
            docs.push(self.by(timestamp_ms, "defect", "Defects", "row defects", defects));
        }
        docs
    }

    /// A document of one count, `metric`, under the dimension `dimension`
    /// beside `service`; `fields` holds the dimension's value and the count.
    fn by(
        &self,
        timestamp_ms: i64,
        dimension: &str,
        metric: &str,
        message: &str,
        fields: Value,
    ) -> Value {
        let mut doc = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["service", dimension]],
                    "Metrics": [{"Name": metric, "Unit": "Count"}],
                }],
            },
            "level": self.level,
            "message": message,
            "service": self.service,
        });
        if let (Some(doc), Value::Object(fields)) = (doc.as_object_mut(), fields) {
            doc.extend(fields);
        }
        doc
    }
}

/// The summary document's metrics: name, value, unit.
fn counts(m: &InvocationMetrics) -> Vec<(&'static str, u64, &'static str)> {
    let s = &m.summary;
    let rejected: usize = s.rejected.values().sum();
    let mut metrics = vec![
        ("RecordsReceived", s.received as u64, "Count"),
        ("RowsInserted", s.inserted, "Count"),
        ("Duplicates", s.duplicates, "Count"),
        ("Rejected", rejected as u64, "Count"),
        ("RowsWithDefects", s.with_defects as u64, "Count"),
        ("Refused", s.refused as u64, "Count"),
        ("BatchItemFailures", s.failed as u64, "Count"),
        ("SentToDlq", s.sent_to_dlq as u64, "Count"),
        ("BatchDurationMs", m.duration_ms, "Milliseconds"),
        ("BatchFailed", u64::from(s.failure.is_some()), "Count"),
        ("InvocationFailed", u64::from(m.invocation_failed), "Count"),
        ("RecordsBackedOff", s.backed_off as u64, "Count"),
        (
            "VisibilityChangesFailed",
            s.visibility_change_failed as u64,
            "Count",
        ),
        ("RefusedToDlq", s.refused_to_dlq as u64, "Count"),
        ("ErasedSkipped", s.erased as u64, "Count"),
        ("UnknownFields", s.unknown_fields as u64, "Count"),
    ];
    if let Some(lag) = m.ingest_lag_ms {
        metrics.push(("IngestLagMs", lag, "Milliseconds"));
    }
    metrics
}

/// The summary document's signed metrics (a value EMF takes as a number).
fn signed(m: &InvocationMetrics) -> Vec<(&'static str, i64, &'static str)> {
    m.partition_days_ahead
        .map(|days| ("PartitionDaysAhead", days, "Count"))
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emf::emf_level;

    /// The structure the EMF specification requires: `_aws.Timestamp` (ms),
    /// `_aws.CloudWatchMetrics` a list of directives, each with a
    /// `Namespace`, `Dimensions` (lists of at most 30 root-level string
    /// members) and `Metrics` (each `Name` a numeric root-level member).
    fn assert_valid_emf(doc: &Value) {
        let aws = doc["_aws"].as_object().expect("_aws object");
        assert!(
            aws["Timestamp"]
                .as_i64()
                .is_some_and(|t| t > 1_600_000_000_000)
        );
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .expect("CloudWatchMetrics list");
        assert!(!directives.is_empty());
        for d in directives {
            let ns = d["Namespace"].as_str().expect("Namespace");
            assert!(!ns.is_empty() && ns.len() <= 255 && !ns.starts_with(':'));
            for set in d["Dimensions"].as_array().expect("Dimensions list") {
                let set = set.as_array().expect("a dimension set is a list");
                assert!(set.len() <= 30);
                for key in set {
                    let key = key.as_str().expect("dimension key");
                    assert!(doc[key].is_string(), "dimension {key} is a string member");
                }
            }
            let metrics = d["Metrics"].as_array().expect("Metrics list");
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for metric in metrics {
                let name = metric["Name"].as_str().expect("Name");
                assert!(doc[name].is_number(), "metric {name} is a numeric member");
                if let Some(unit) = metric.get("Unit") {
                    assert!(["Count", "Milliseconds"].contains(&unit.as_str().unwrap()));
                }
            }
        }
    }

    fn sample() -> InvocationMetrics {
        InvocationMetrics {
            summary: BatchSummary {
                received: 120,
                inserted: 100,
                duplicates: 4,
                rejected: [
                    ("invalid_json".to_owned(), 9),
                    ("not_a_login_event".to_owned(), 5),
                ]
                .into(),
                with_defects: 6,
                defects: [
                    ("app_version.suffix".to_owned(), 4),
                    ("ip.port".to_owned(), 3),
                ]
                .into(),
                refused: 2,
                failed: 3,
                sent_to_dlq: 13,
                statements: 3,
                copied: false,
                failure: None,
                ..BatchSummary::default()
            },
            duration_ms: 42,
            ingest_lag_ms: Some(1_500),
            fifo: false,
            ..InvocationMetrics::default()
        }
    }

    #[test]
    fn documents_follow_the_emf_specification_and_carry_the_summary() {
        let m = Metrics::new("LoginEtl", "login-etl", "fn-1");
        let docs = m.documents(&sample(), 1_795_262_400_000, true);
        assert_eq!(
            docs.len(),
            5,
            "the summary, one per rejection reason, one per defect"
        );
        docs.iter().for_each(assert_valid_emf);
        let d = &docs[0];
        for (name, want) in [
            ("RecordsReceived", 120),
            ("RowsInserted", 100),
            ("Duplicates", 4),
            ("Rejected", 14),
            ("RowsWithDefects", 6),
            ("Refused", 2),
            ("BatchItemFailures", 3),
            ("SentToDlq", 13),
            ("BatchDurationMs", 42),
            ("IngestLagMs", 1_500),
            ("ColdStart", 1),
        ] {
            assert_eq!(d[name], want, "{name}");
        }
        assert_eq!(d["service"], "login-etl");
        assert_eq!(d["function_name"], "fn-1");
        assert_eq!(d["message"], "batch processed");
        assert_eq!(d["_aws"]["CloudWatchMetrics"][0]["Namespace"], "LoginEtl");
        assert_eq!(
            d["_aws"]["CloudWatchMetrics"][1]["Dimensions"],
            json!([["service", "function_name"]])
        );
        assert_eq!(
            (docs[1]["reason"].clone(), docs[1]["Rejected"].clone()),
            (json!("invalid_json"), json!(9))
        );
        assert_eq!(
            (docs[3]["defect"].clone(), docs[3]["Defects"].clone()),
            (json!("app_version.suffix"), json!(4))
        );
        assert_eq!(
            docs[4]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "defect"]])
        );
        assert_eq!(d["defects_by_code"]["ip.port"], 3);
        assert_eq!(docs[2]["reason"], "not_a_login_event");
        assert_eq!(
            docs[2]["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["service", "reason"]])
        );
        // One line each: readable as a log line.
        assert!(docs.iter().all(|d| !d.to_string().contains('\n')));
    }

    #[test]
    fn a_failed_invocation_writes_its_document_with_the_failure_class() {
        let m = Metrics::new("LoginEtl", "login-etl", "fn").with_level("WARN");
        let failed = InvocationMetrics {
            summary: BatchSummary {
                received: 10,
                failure: Some("database_unavailable"),
                ..BatchSummary::default()
            },
            duration_ms: 7,
            ingest_lag_ms: Some(90_000),
            invocation_failed: true,
            ..InvocationMetrics::default()
        };
        let docs = m.documents(&failed, 1_795_262_400_000, false);
        docs.iter().for_each(assert_valid_emf);
        assert_eq!(docs.len(), 2, "the summary and the failure document");
        assert_eq!(docs[0]["message"], "batch failed");
        assert_eq!(docs[0]["RecordsReceived"], 10);
        assert_eq!(docs[0]["IngestLagMs"], 90_000);
        assert_eq!(docs[0]["InvocationFailed"], 1);
        assert_eq!(docs[0]["BatchFailed"], 1);
        assert_eq!(docs[1]["failure_class"], "database_unavailable");
        assert_eq!(docs[1]["BatchFailed"], 1);
        assert!(docs.iter().all(|d| d["level"] == "WARN"));
        let ok = m.documents(&sample(), 1_795_262_400_000, false);
        assert_eq!(ok[0]["InvocationFailed"], 0);
        assert_eq!(ok[0]["BatchFailed"], 0);
        assert!(ok.iter().all(|d| d["message"] != "batch write failed"));
    }

    #[test]
    fn documents_carry_the_lowest_level_the_lambda_filter_keeps() {
        assert_eq!(emf_level(None), "INFO");
        assert_eq!(emf_level(Some("TRACE")), "INFO");
        assert_eq!(emf_level(Some("debug")), "INFO");
        assert_eq!(emf_level(Some("INFO")), "INFO");
        assert_eq!(emf_level(Some("WARN")), "WARN");
        assert_eq!(emf_level(Some("ERROR")), "ERROR");
        assert_eq!(emf_level(Some("FATAL")), "FATAL");
        assert_eq!(emf_level(Some("aws_config=debug,warn")), "WARN");
        assert_eq!(emf_level(Some("login_etl=trace")), "INFO");
    }

    #[test]
    fn cold_start_is_counted_once_per_environment_and_lag_only_when_known() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let m = Metrics::new("Ns", "svc", "f")
            .with_output(move |l| sink.lock().unwrap().push(l.to_owned()));
        let mut quiet = InvocationMetrics {
            summary: BatchSummary {
                received: 1,
                inserted: 1,
                ..BatchSummary::default()
            },
            ..InvocationMetrics::default()
        };
        m.emit(&quiet, 1_795_262_400_000);
        quiet.ingest_lag_ms = Some(5);
        m.emit(&quiet, 1_795_262_400_001);
        let docs: Vec<Value> = lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(docs.len(), 2, "no rejections, no reason documents");
        docs.iter().for_each(assert_valid_emf);
        assert_eq!(docs[0]["ColdStart"], 1);
        assert!(docs[1].get("ColdStart").is_none() && docs[1].get("function_name").is_none());
        assert!(docs[0].get("IngestLagMs").is_none());
        assert_eq!(docs[1]["IngestLagMs"], 5);
    }

    #[test]
    fn no_value_beyond_counts_and_bounded_codes() {
        let m = Metrics::new("LoginEtl", "login-etl", "fn");
        for doc in m.documents(&sample(), 1_795_262_400_000, true) {
            let text = doc.to_string();
            // Every string in a document is a fixed name, a configured name
            // or a rejection code (lowercase with dots and underscores).
            let mut strings = Vec::new();
            collect_strings(&doc, &mut strings);
            for s in strings {
                assert!(
                    s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.- ".contains(c)),
                    "{s} in {text}"
                );
            }
        }
    }

    fn collect_strings(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
            Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push(k.clone());
                collect_strings(x, out)
            }),
            _ => {}
        }
    }
}
