//! Traces out of the process (docs/tracing.md): OpenTelemetry spans
//! exported by OTLP over HTTP, configured by OpenTelemetry's own variables.
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! turns it on; without one nothing is set up and no span is made.
//!
//! The spans go to a collector over plain HTTP: the ADOT or OpenTelemetry
//! Lambda extension on localhost, or a collector beside `login-etl poll`.
//! X-Ray's own OTLP endpoint takes SigV4-signed HTTPS: the collector
//! signs and forwards. The exporter runs on the batch processor's thread;
//! [`flush`] blocks until the spans so far are sent (the Lambda function
//! calls it after each invocation, before asking for the next event, so
//! none is lost to the freeze).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::warn;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::ingest::trace::Tracer;

/// The process's tracer provider, once tracing is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The variables that name where spans go, the traces' own first.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Sets up the exporter from the environment. `Ok(false)`: tracing is off
/// (no endpoint, or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
/// An error says which variable is wrong and how to mend it; the caller
/// logs it and goes on without traces (ingest never stops for them).
pub fn init() -> Result<bool, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some((variable, endpoint)) = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| var(name).map(|v| (*name, v)))
    else {
        return Ok(false);
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(false);
    }
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "{variable} is not an http:// address: login-etl sends spans over plain HTTP to a \
             collector (the ADOT or OpenTelemetry Lambda extension at http://localhost:4318, or \
             one beside `login-etl poll`); point the collector, not the function, at X-Ray's \
             or another HTTPS endpoint"
        ));
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = var(name).filter(|p| p != "http/protobuf") {
            return Err(format!(
                "{name}={protocol}: login-etl exports OTLP over HTTP with protobuf bodies only; \
                 set {name}=http/protobuf (or unset it) and give the collector's HTTP port (4318)"
            ));
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("the OTLP exporter could not be built from {variable}: {e}"))?;
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        let name = var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "login-etl".into());
        resource = resource.with_service_name(name);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(PROVIDER.set(provider).is_ok())
}

/// The handler's tracer: spans when tracing is on, none otherwise.
pub fn tracer() -> Tracer {
    match PROVIDER.get() {
        Some(provider) => Tracer::new(provider.tracer("login-etl")),
        None => Tracer::default(),
    }
}

/// Whether spans are exported.
pub fn is_on() -> bool {
    PROVIDER.get().is_some()
}

/// The `tracing` layer that makes the Lambda runtime's invocation span
/// (`lambda_runtime::layers::OpenTelemetryLayer`) an OpenTelemetry span,
/// the batch span's parent. It sees that span alone: no log line becomes
/// a span event, no other crate's span is exported.
pub fn invocation_layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let provider = PROVIDER.get()?;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("lambda_runtime"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target() == "lambda_runtime::layers::otel"
        }));
    Some(Box::new(layer))
}

/// Sends the spans ended so far, waiting for the collector's answer. A
/// failure is logged once per process (the next flushes try again).
pub fn flush() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    if let Err(e) = provider.force_flush()
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        warn!(
            error = %e,
            "spans could not be sent to the collector (OTEL_EXPORTER_OTLP_ENDPOINT); \
             check that the OpenTelemetry or ADOT extension (the stack's OtelLayerArn) \
             or the collector is running; ingest goes on, those spans are lost"
        );
    }
}

/// Sends what is left and stops the exporter (`login-etl poll`'s exit).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        flush();
        let _ = provider.shutdown();
    }
}
