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
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tracing::{info, warn};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The process's tracer provider, once tracing is on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The variable that named the collector, for the flush's warning.
static ENDPOINT_VARIABLE: OnceLock<&str> = OnceLock::new();

/// How long one export may take unless `OTEL_EXPORTER_OTLP_TIMEOUT` says:
/// the collector is an extension or a sidecar on localhost.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The spans the batch processor holds before it drops any: two of
/// SQS's largest batches (10,000 messages) with their other spans.
const SPANS_QUEUED: usize = 20_480;

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
    if !endpoint.trim().to_ascii_lowercase().starts_with("http://") {
        return Err(format!(
            "{variable} is not an http:// address: login-etl sends spans over plain HTTP to a \
             collector (the ADOT or OpenTelemetry Lambda extension at http://localhost:4318, or \
             one beside `login-etl poll`); point the collector, not the function, at X-Ray's \
             or another HTTPS endpoint"
        ));
    }
    // The traces' own variable wins, as the exporter reads them.
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| var(name).map(|v| (*name, v)));
    if let Some((name, protocol)) = protocol
        && !protocol.trim().eq_ignore_ascii_case("http/protobuf")
    {
        return Err(format!(
            "{name}={protocol}: login-etl exports OTLP over HTTP with protobuf bodies only; \
             set {name}=http/protobuf (or unset it) and give the collector's HTTP port (4318)"
        ));
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    // The flush waits for the export, and the next event waits for the
    // flush: a collector that hangs costs each invocation this long.
    if var("OTEL_EXPORTER_OTLP_TIMEOUT").is_none()
        && var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_none()
    {
        exporter = exporter.with_timeout(EXPORT_TIMEOUT);
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("the OTLP exporter could not be built from {variable}: {e}"))?;
    let mut resource = Resource::builder();
    if var("OTEL_SERVICE_NAME").is_none() {
        let name = var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "login-etl".into());
        resource = resource.with_service_name(name);
    }
    // A batch of 10,000 messages makes 10,000 spans and a few more; the
    // processor's default queue (2,048) would drop the rest. And one
    // request a flush: each request has its own export timeout, so 512
    // spans a request (the default) would let a hung collector hold a
    // large batch's invocation for several of them.
    let mut batching = BatchConfigBuilder::default();
    if var("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batching = batching.with_max_queue_size(SPANS_QUEUED);
    }
    if var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").is_none() {
        batching = batching.with_max_export_batch_size(SPANS_QUEUED);
    }
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batching.build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    let _ = ENDPOINT_VARIABLE.set(variable);
    Ok(PROVIDER.set(provider).is_ok())
}

/// The handler's tracer when tracing is on.
pub fn tracer() -> Option<SdkTracer> {
    PROVIDER.get().map(|provider| provider.tracer("login-etl"))
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
        // Its fields only: not the build's source paths, thread names or timings.
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        // Started when the batch asks for its parent, not when entered:
        // until then the kind the function records is still taken.
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && meta.target() == "lambda_runtime::layers::otel"
        }));
    Some(Box::new(layer))
}

/// Sends the spans ended so far, waiting for the collector's answer. The
/// first failure after a success is logged, and the first success after
/// failures: one line each way, however long the collector is away.
pub fn flush() {
    static FAILING: AtomicBool = AtomicBool::new(false);
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    let variable = ENDPOINT_VARIABLE
        .get()
        .copied()
        .unwrap_or("OTEL_EXPORTER_OTLP_ENDPOINT");
    match provider.force_flush() {
        Err(e) if !FAILING.swap(true, Ordering::Relaxed) => warn!(
            error = %e,
            "spans could not be sent to the collector ({variable}); check that the collector \
             extension (the stack's OtelLayerArn) or poll's collector is running and takes \
             OTLP over HTTP there (port 4318, not gRPC's 4317; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
             is the whole URL, /v1/traces included); ingest goes on, and spans are lost until \
             it answers"
        ),
        Ok(()) if FAILING.swap(false, Ordering::Relaxed) => {
            info!("spans are sent to the collector again ({variable})")
        }
        _ => {}
    }
}

/// Sends what is left and stops the exporter (`login-etl poll`'s exit),
/// within 2 s: a hung collector must not use up a container's grace
/// period after SIGTERM.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown_with_timeout(std::time::Duration::from_secs(2))
    {
        warn!(error = %e, "the last spans could not be sent to the collector");
    }
}
