//! What the soak's processes print: every line goes to a log file under
//! the seed's directory, is searched for PII (every ip and device id the
//! schedule can send, in every form a log could carry it), and, for the
//! function environments, filtered as Lambda filters JSON logs at the
//! configured level, its EMF documents counted.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The PII of a schedule, searched in one pass per line.
pub struct PiiSearch {
    finder: AhoCorasick,
}

impl PiiSearch {
    /// Every ip and device id value (raw, canonical, JSON-escaped), except
    /// the database's own address.
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut forms = std::collections::BTreeSet::new();
        for v in values {
            let v = v.trim().to_owned();
            if let Ok(ip) = v.parse::<std::net::IpAddr>() {
                forms.insert(ip.to_string());
            }
            forms.insert(
                serde_json::to_string(&v)
                    .unwrap()
                    .trim_matches('"')
                    .to_owned(),
            );
            forms.insert(v);
        }
        forms.retain(|f| f.len() >= 7 && f != "127.0.0.1");
        Self {
            finder: AhoCorasick::new(forms).expect("an automaton of the PII values"),
        }
    }

    /// A value found in `line`, if any (for the report: its length only).
    pub fn find(&self, line: &str) -> Option<usize> {
        self.finder.find(line).map(|m| m.len())
    }
}

/// What one process printed that the checks need.
#[derive(Debug, Default)]
pub struct Seen {
    /// Lines that carried a PII value: (file, line number, matched length).
    pub pii: Vec<(String, usize, usize)>,
    /// Lines Lambda's filter at the process's level keeps.
    pub kept: usize,
    /// EMF documents kept: per-invocation summaries, and failure classes.
    pub summaries: usize,
    /// Of those, batches written by the COPY path.
    pub copied: usize,
    pub failure_classes: std::collections::BTreeMap<String, usize>,
    /// Lines that are not JSON objects (Lambda counts them as INFO).
    pub not_json: usize,
}

/// Lambda's rank of a `"level"` (a missing or unknown one counts as INFO).
fn rank(level: Option<&str>) -> u8 {
    match level.map(str::to_ascii_uppercase).as_deref() {
        Some("TRACE") => 0,
        Some("DEBUG") => 1,
        Some("WARN") | Some("WARNING") => 3,
        Some("ERROR") => 4,
        Some("FATAL") => 5,
        _ => 2,
    }
}

/// Reads `stream` to its end: into `file`, searched by `pii`, filtered at
/// `level` into `seen`.
pub fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    file: PathBuf,
    pii: Arc<PiiSearch>,
    level: &'static str,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .expect("a log file in the seed's directory");
        let mut lines = BufReader::new(stream).lines();
        let mut n = 0usize;
        let floor = rank(Some(level));
        while let Ok(Some(line)) = lines.next_line().await {
            n += 1;
            let _ = writeln!(out, "{line}");
            let mut s = seen.lock().unwrap();
            if let Some(len) = pii.find(&line) {
                s.pii.push((file.display().to_string(), n, len));
            }
            let doc: Option<Value> = serde_json::from_str(&line).ok().filter(Value::is_object);
            let Some(doc) = doc else {
                s.not_json += 1;
                if floor <= 2 {
                    s.kept += 1;
                }
                continue;
            };
            if rank(doc["level"].as_str()) < floor {
                continue;
            }
            s.kept += 1;
            if doc.get("_aws").is_some() {
                match doc["message"].as_str() {
                    Some("batch processed") | Some("batch failed") => {
                        s.summaries += 1;
                        s.copied += usize::from(doc["copied"] == true);
                    }
                    _ => {}
                }
                if let Some(class) = doc["failure_class"].as_str() {
                    *s.failure_classes.entry(class.to_owned()).or_default() += 1;
                }
            }
        }
    })
}
