//! The function's log subscriber: Lambda's advanced logging controls
//! (`AWS_LAMBDA_LOG_FORMAT=JSON`, `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`,
//! default INFO), plus a guard no level setting can lift: no dependency's
//! DEBUG or TRACE events reach the output, where raw payloads, bodies and
//! secrets would.

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The most verbose level a dependency's events reach the output at,
/// whatever the filter says (`RUST_LOG=trace`, `AWS_LAMBDA_LOG_LEVEL=TRACE`,
/// a debug build): below it they carry raw data. lambda_runtime logs the
/// whole event at TRACE; tokio-postgres, statement parameters at DEBUG;
/// aws-sigv4 each request it signs at TRACE (with its body under
/// `LOG_SIGNABLE_BODY=true`); the AWS SDK's orchestrator each response
/// body it reads and a debug print of each output (an SQS
/// `ReceiveMessage`'s messages, a secret's value, KMS's plaintext data key)
/// at TRACE, and the bodies themselves under `LOG_SENSITIVE_BODIES=true`.
/// Capping every crate but ours holds for the next one too: an allowlist,
/// not a list of the leaks found so far. The release build's
/// `release_max_level_debug` is a second guard, not the first.
const DEPENDENCY_MAX: Level = Level::INFO;

/// The target prefix of this crate's own events, which the filter alone
/// governs (none carries a value: tests/it/pii_logs.rs).
const OWN: &str = "login_etl";

/// True when an event or span may be written.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with(OWN) || *meta.level() <= DEPENDENCY_MAX
}

/// A subscriber writing to `writer`, JSON when `json`, filtered by `filter`
/// (a level such as `info` or `TRACE`, or `RUST_LOG`-style `target=level`
/// directives; INFO where it names no default) and by [`allowed`].
///
/// `Targets` rather than `EnvFilter`: the same directives without span and
/// field matching, which would pull a regex engine (about 1 MB) into the binary.
pub fn subscriber<W>(writer: W, json: bool, filter: &str) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    subscriber_with(writer, json, filter, None)
}

/// [`subscriber`], with the layer that exports the invocation's span.
fn subscriber_with<W>(
    writer: W,
    json: bool,
    filter: &str,
    invocation: Option<InvocationLayer>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let targets = filter.parse::<Targets>().unwrap_or_default();
    let env = match targets.default_level() {
        Some(_) => targets,
        None => targets.with_default(LevelFilter::INFO),
    };
    // JSON lines (Lambda's, poll's) carry their module path ("target"),
    // which a RUST_LOG filter names (login_etl::ingest::sink=debug); the
    // commands' lines for a person do not.
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(json)
        .without_time() // CloudWatch stamps every line
        .with_ansi(false)
        .with_writer(writer);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    Box::new(
        tracing_subscriber::registry()
            .with(invocation)
            .with(fmt.with_filter(env).with_filter(filter_fn(allowed))),
    )
}

/// Where the process logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// stdout: the Lambda function (Lambda reads both, and EMF needs stdout).
    Stdout,
    /// stderr: the operator commands, whose stdout carries their results.
    Stderr,
}

/// Installs the subscriber for the process, configured from the environment.
pub fn init(output: Output) {
    install(output, None);
}

/// [`init`], for the Lambda function and `login-etl poll`: with traces
/// when OpenTelemetry's variables ask for them (`crate::telemetry`; a
/// wrong one is logged, and the process goes on without).
pub fn init_traced(output: Output) {
    let traces = crate::telemetry::init();
    install(output, crate::telemetry::invocation_layer());
    if let Err(e) = traces {
        tracing::error!(error = %e, "tracing is off");
    }
}

type InvocationLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

fn install(output: Output, invocation: Option<InvocationLayer>) {
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    // `log` records (tokio-postgres) go through the same guard.
    let _ = tracing_log::LogTracer::init();
    let subscriber = match output {
        Output::Stdout => subscriber_with(std::io::stdout, json, &filter, invocation),
        Output::Stderr => subscriber_with(std::io::stderr, json, &filter, invocation),
    };
    let _ = tracing::subscriber::set_global_default(subscriber);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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

    #[test]
    fn dependencies_stay_at_info_even_at_trace() {
        let out = Capture::default();
        let w = out.clone();
        let sub = subscriber(move || w.clone(), true, "trace");
        tracing::subscriber::with_default(sub, || {
            tracing::trace!(target: "lambda_runtime::layers::api_response", body = "10.1.2.3", "raw JSON event");
            tracing::debug!(target: "tokio_postgres::query", "executing statement with parameters: 10.1.2.4");
            tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", "read HTTP response body 10.1.2.5");
            tracing::debug!(target: "aws_smithy_runtime_api::client::orchestrator", "output 10.1.2.6");
            tracing::trace!(target: "hyper_util::client", "10.1.2.7");
            tracing::info!(target: "lambda_runtime::layers::api_response", "kept");
            tracing::trace!(target: "login_etl::ingest::handler", "kept too");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("10.1.2."), "{text}");
        assert_eq!(text.matches("kept").count(), 2, "{text}");
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "{text}"
        );
    }

    #[test]
    fn levels_and_directives_as_lambda_and_rust_log_give_them() {
        let emitted = |filter: &str| {
            let out = Capture::default();
            let w = out.clone();
            tracing::subscriber::with_default(subscriber(move || w.clone(), false, filter), || {
                tracing::debug!(target: "login_etl::ingest::sink", "sink-debug");
                tracing::info!(target: "login_etl::ingest::handler", "handler-info");
                tracing::warn!(target: "aws_config", "aws-warn");
                tracing::info!(target: "aws_config", "aws-info");
            });
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            ["sink-debug", "handler-info", "aws-warn", "aws-info"]
                .into_iter()
                .filter(|m| text.contains(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(emitted("WARN"), ["aws-warn"]);
        assert_eq!(
            emitted("Debug"),
            ["sink-debug", "handler-info", "aws-warn", "aws-info"]
        );
        // Directives without a default level keep INFO for everything else.
        assert_eq!(
            emitted("login_etl::ingest::sink=debug"),
            ["sink-debug", "handler-info", "aws-warn", "aws-info"]
        );
        assert_eq!(
            emitted("info,aws_config=warn"),
            ["handler-info", "aws-warn"]
        );
        assert_eq!(
            emitted("not a level!"),
            ["handler-info", "aws-warn", "aws-info"]
        );
    }
}
