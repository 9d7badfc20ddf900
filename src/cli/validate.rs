//! `login-etl validate`: the function's own verdict on message bodies, for
//! producers and their CI before a message reaches the queue.
//!
//! JSON Lines of bodies (a file or `-`): one verdict per line,
//! `{"line":N,"valid":true}`, `{"line":N,"valid":true,"defects":["<code>",…]}`
//! for a login stored with defects (`CONTRACT=lenient`, the default), or
//! `{"line":N,"valid":false,"reason":"<code>"}`; a stored login with fields
//! the contract does not declare (counted, never stored) also has
//! `"undeclared":["<name>",…]` (a name that is not an identifier shows as
//! `<other>`, see `FieldName`). With `--event`, an SQS
//! batch event as Lambda sends it: one verdict per message,
//! `{"messageId":"…",…}`, judged as the function judges it (its body, and
//! its message id and `SentTimestamp`). A verdict never quotes a value;
//! the summary goes to stderr. Exit 0 when every message is stored (with
//! or without defects), 1 when any is rejected, 2 for a usage error.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::process::ExitCode;

use super::{EXIT_USAGE, ValidateArgs};
use crate::contract::{Contract, Defect, FieldName, Rejection, parse_body_with};

/// The verdicts of one run.
#[derive(Default)]
struct Tally {
    valid: u64,
    /// Valid messages with defects, and the defects by code.
    with_defects: u64,
    defects: BTreeMap<String, u64>,
    /// Stored messages with fields the contract does not declare.
    with_undeclared: u64,
    rejected: BTreeMap<String, u64>,
}

/// What a stored message was judged to carry: its defects' codes and the
/// names of its undeclared fields.
struct Stored {
    defects: Vec<String>,
    undeclared: Vec<FieldName>,
}

/// One message's verdict: what it carries (stored), or its reason (rejected).
type LineVerdict = Result<Stored, String>;

impl Tally {
    fn add(&mut self, verdict: Result<(&[Defect], &[FieldName]), Rejection>) -> LineVerdict {
        match verdict {
            Ok((defects, undeclared)) => {
                self.valid += 1;
                self.with_defects += u64::from(!defects.is_empty());
                self.with_undeclared += u64::from(!undeclared.is_empty());
                let codes: Vec<String> = defects.iter().map(|d| d.code().into_owned()).collect();
                for code in &codes {
                    *self.defects.entry(code.clone()).or_default() += 1;
                }
                Ok(Stored {
                    defects: codes,
                    undeclared: undeclared.to_vec(),
                })
            }
            Err(r) => {
                let code = r.code().into_owned();
                *self.rejected.entry(code.clone()).or_default() += 1;
                Err(code)
            }
        }
    }

    fn total(&self) -> u64 {
        self.valid + self.rejected.values().sum::<u64>()
    }
}

/// Runs `login-etl validate` (see the module documentation).
pub fn run(args: &ValidateArgs) -> ExitCode {
    let contract = match args.contract.contract() {
        Ok(c) => c,
        Err(e) => return usage(&format!("EXTRA_FIELDS: {e}")),
    };
    let out = std::io::stdout().lock();
    let done = match (&args.event, &args.file) {
        (Some(event), _) => event_file(event, &contract, out),
        (None, Some(file)) => lines(file, &contract, out),
        (None, None) => {
            return usage("give a FILE of JSON Lines (- for standard input) or --event FILE");
        }
    };
    let tally = match done {
        Ok(t) => t,
        Err(Stop::Usage(m)) => return usage(&m),
        Err(Stop::Io(m)) => {
            eprintln!("login-etl: {m}");
            return ExitCode::FAILURE;
        }
    };
    let listed = |counts: &BTreeMap<String, u64>| {
        let list: Vec<String> = counts
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        if list.is_empty() {
            String::new()
        } else {
            format!(" ({})", list.join(", "))
        }
    };
    let undeclared = match tally.with_undeclared {
        0 => String::new(),
        n => format!(", {n} with undeclared fields (counted, not stored)"),
    };
    eprintln!(
        "login-etl validate: {} messages, {} valid, {} with defects{}{undeclared}, {} rejected{}",
        tally.total(),
        tally.valid,
        tally.with_defects,
        listed(&tally.defects),
        tally.total() - tally.valid,
        listed(&tally.rejected)
    );
    if tally.valid == tally.total() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("login-etl: {message}");
    ExitCode::from(EXIT_USAGE)
}

enum Stop {
    Usage(String),
    Io(String),
}

/// Each line of `path` as a body.
fn lines(path: &std::path::Path, contract: &Contract, out: impl Write) -> Result<Tally, Stop> {
    let input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .map_err(|e| Stop::Usage(format!("cannot read {} ({e})", path.display())))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, file))
    };
    judge_lines(input, contract, out)
}

/// The verdict of each line of `input`.
fn judge_lines(
    mut input: impl BufRead,
    contract: &Contract,
    out: impl Write,
) -> Result<Tally, Stop> {
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut tally = Tally::default();
    let mut buf = Vec::new();
    let io = |e: std::io::Error| Stop::Io(format!("reading the input failed: {e}"));
    for n in 1u64.. {
        buf.clear();
        if input.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Not UTF-8: not something SQS would carry as a body.
        let verdict = match std::str::from_utf8(line) {
            Ok(body) => tally.add(
                parse_body_with(body, contract)
                    .as_ref()
                    .map(|e| (&e.defects[..], &e.unknown[..]))
                    .map_err(|r| *r),
            ),
            Err(_) => tally.add(Err(Rejection::InvalidJson)),
        };
        write_verdict(&mut out, "line", &n.to_string(), verdict)?;
    }
    out.flush()
        .map_err(|e| Stop::Io(format!("writing the verdicts failed: {e}")))?;
    Ok(tally)
}

/// One verdict line: `{"<key>":<value>,"valid":…}` with the defects and
/// undeclared fields of a stored login or the reason of a rejection
/// (`value` is JSON already; codes and shown names need no escaping).
fn write_verdict(
    out: &mut impl Write,
    key: &str,
    value: &str,
    verdict: LineVerdict,
) -> Result<(), Stop> {
    let list = |name: &str, items: &[String]| {
        if items.is_empty() {
            String::new()
        } else {
            format!(",\"{name}\":[\"{}\"]", items.join("\",\""))
        }
    };
    match verdict {
        Ok(stored) => {
            let undeclared: Vec<String> = stored
                .undeclared
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect();
            writeln!(
                out,
                "{{\"{key}\":{value},\"valid\":true{}{}}}",
                list("defects", &stored.defects),
                list("undeclared", &undeclared)
            )
        }
        Err(code) => writeln!(
            out,
            "{{\"{key}\":{value},\"valid\":false,\"reason\":\"{code}\"}}"
        ),
    }
    .map_err(|e| Stop::Io(format!("writing the verdicts failed: {e}")))
}

/// Each message of the SQS event in `path`, as the function judges it.
fn event_file(path: &std::path::Path, contract: &Contract, out: impl Write) -> Result<Tally, Stop> {
    use crate::ingest::event::SqsBatch;
    let text = std::fs::read(path)
        .map_err(|e| Stop::Usage(format!("cannot read {} ({e})", path.display())))?;
    let batch = SqsBatch::from_payload(bytes::Bytes::from(text))
        .map_err(|e| Stop::Usage(format!("{}: {e}", path.display())))?;
    // The tokens are not shown: any key gives the function's verdict.
    let masker = crate::privacy::masking::Masker::new(
        &crate::privacy::masking::MaskingKey::from_hex(&"00".repeat(32), "validate")
            .expect("a fixed 32-byte key"),
    );
    let mut out = BufWriter::new(out);
    let mut tally = Tally::default();
    for i in (0..).take_while(|&i| batch.has(i)) {
        let Some(m) = batch.get(i) else {
            return Err(Stop::Usage(format!(
                "{}: message {} is not an SQS message (the function fails such a batch as a whole)",
                path.display(),
                i + 1
            )));
        };
        let id = m.message_id.as_deref().unwrap_or_default();
        let verdict = if id.is_empty() {
            return Err(Stop::Usage(format!(
                "{}: message {} has no messageId (the function fails such a batch as a whole)",
                path.display(),
                i + 1
            )));
        } else {
            let row = crate::ingest::record::transform_with(id, m, &masker, contract);
            tally.add(
                row.as_ref()
                    .map(|r| (&r.defects[..], &r.unknown[..]))
                    .map_err(|r| *r),
            )
        };
        let id = serde_json::to_string(id).expect("a string serializes");
        write_verdict(&mut out, "messageId", &id, verdict)?;
    }
    out.flush()
        .map_err(|e| Stop::Io(format!("writing the verdicts failed: {e}")))?;
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_verdict_per_line_and_never_a_value() {
        let input = "{\"user_id\":\"u\",\"app_version\":\"1.0\",\"device_type\":\"ios\",\"ip\":\"10.0.0.1\",\"device_id\":\"d-1\"}\r\n\
                     {\"ip\":\"203.0.113.7\"}\n\
                     \n\
                     not json\n\
                     {\"user_id\":\"u\",\"app_version\":\"1.0-rc\",\"device_type\":\"ios\",\"ip\":\"203.0.113.7:443\",\"device_id\":null}\n\
                     {\"user_id\":\"u\",\"email\":\"a@b.example\",\"203.0.113.7\":1,\"device_id\":\"d\",\"ip\":\"::1\",\"app_version\":\"1\",\"device_type\":\"x\"}";
        let mut out = Vec::new();
        let Ok(tally) = judge_lines(input.as_bytes(), &Contract::default(), &mut out) else {
            panic!("reads")
        };
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                r#"{"line":1,"valid":true}"#,
                r#"{"line":2,"valid":false,"reason":"missing_field.user_id"}"#,
                r#"{"line":3,"valid":false,"reason":"empty_body"}"#,
                r#"{"line":4,"valid":false,"reason":"invalid_json"}"#,
                r#"{"line":5,"valid":true,"defects":["ip.port","device_id.missing","app_version.suffix"]}"#,
                r#"{"line":6,"valid":true,"undeclared":["email","<other>"]}"#,
            ]
        );
        assert!(!text.contains("203.0.113.7") && !text.contains("a@b"));
        assert_eq!((tally.valid, tally.with_defects, tally.total()), (3, 1, 6));
        assert_eq!(tally.with_undeclared, 1);
    }
}
