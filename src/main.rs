//! The binary: without a command, the Lambda function (the handler is built
//! once per cold start, then serves invocations); with one, an operator or
//! developer command (`login_etl::cli`: the commands and their exit codes).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lambda_runtime::layers::{OpenTelemetryFaasTrigger, OpenTelemetryLayer, TracingLayer};
use lambda_runtime::{LambdaEvent, Runtime, service_fn};
use login_etl::cli::{Cli, Command, EXIT_USAGE};
use login_etl::raw_payload::RawPayloads;
use login_etl::{Config, Deadline, startup};
use tracing::error;

fn main() -> ExitCode {
    let cli = Cli::parse(); // --help, --version and usage errors exit here (0 or 2)
    // `poll` runs batches side by side on every CPU it may use, and
    // `rotate-key --jobs N` chunks; the function serves one invocation at a
    // time and the other commands run one statement at a time, so a single
    // thread is all they use.
    let runtime = match &cli.command {
        Some(Command::Poll(args)) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads())
            .enable_all()
            .build(),
        // The jobs' HMACs on as many threads as there are jobs, CPUs allowing.
        Some(Command::RotateKey(args)) if args.jobs > 1 => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cpus.min(usize::from(args.jobs)))
                .enable_all()
                .build()
        }
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!(
                "login-etl: could not start the async runtime ({e}): \
                 the process may be out of threads or memory (ulimit -u, the container's limits)"
            );
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Some(command) => login_etl::cli::run(command).await,
            None => serve_lambda().await,
        }
    })
}

/// The Lambda function: JSON logs on stdout, as Lambda reads them.
async fn serve_lambda() -> ExitCode {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        eprintln!(
            "login-etl: AWS_LAMBDA_RUNTIME_API is not set, so there is no Lambda to serve. \
             Run the function in Lambda or under `cargo lambda watch` (make watch), \
             or give a command: login-etl --help"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    login_etl::logging::init_traced(login_etl::logging::Output::Stdout);
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, in the log Lambda keeps (stdout, JSON at ERROR).
            error!(error = %e, "login-etl stopped");
            ExitCode::FAILURE
        }
    }
}

/// Builds the handler once, then serves invocations until Lambda stops us.
/// With `LOGIN_ETL_TASK=maintain` (the template's maintenance function,
/// invoked on a schedule), each invocation is one `login-etl maintain` run;
/// with `LOGIN_ETL_TASK=setup` (the stack's setup function), one answer
/// to its setup resource.
async fn serve() -> Result<(), lambda_runtime::Error> {
    match std::env::var("LOGIN_ETL_TASK").as_deref() {
        Ok("maintain") => return serve_maintenance().await,
        Ok("setup") => return serve_setup().await,
        _ => {}
    }
    let config = Config::from_env()?;
    let handler = Arc::new(startup::build(&config).await?);
    let payloads = RawPayloads::default();
    let taken = payloads.clone();
    let function = service_fn(move |event: LambdaEvent<()>| {
        let (handler, payloads) = (Arc::clone(&handler), taken.clone());
        // The invocation's span (lambda_runtime's, with traces on) is the
        // server side of Lambda's call; the runtime leaves its kind unset.
        tracing::Span::current().record("otel.kind", "server");
        async move {
            let batch = payloads.take(&event.context.request_id)?;
            // The sink gives up early enough to report before Lambda kills
            // the invocation.
            let deadline = Deadline::from_wall_clock(event.context.deadline());
            let outcome = handler.handle(&batch, deadline).await?;
            Ok::<_, login_etl::HandlerError>(outcome.response)
        }
    });
    // As lambda_runtime::run, with the payload's bytes taken first. With
    // tracing on, the invocation's span (the batch span's parent) is flushed
    // after the answer is posted and before the next event is asked for.
    let invocation_span = login_etl::telemetry::is_on().then(|| {
        OpenTelemetryLayer::new(login_etl::telemetry::flush)
            .with_trigger(OpenTelemetryFaasTrigger::PubSub)
    });
    Runtime::new(function)
        .layer(payloads)
        .layer(lambda_runtime::tower::util::option_layer(invocation_span))
        .layer(TracingLayer::new())
        .run()
        .await
}

/// The maintenance function: the maintain role's database settings,
/// `PREMAKE_DAYS` and `RETENTION_DAYS`; any event (the schedule's) runs
/// maintenance once. Its EMF document goes to stdout, as the function's.
async fn serve_maintenance() -> Result<(), lambda_runtime::Error> {
    let (db, options) = startup::maintenance_from_env()?;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let db = db.clone();
        async move {
            let report = startup::maintain(&db, &options).await.map_err(|e| {
                // One line at ERROR, which every log level keeps.
                error!(error = %e, "login-etl maintain failed");
                lambda_runtime::Error::from(e.to_string())
            })?;
            let doc = startup::maintenance_document(&report);
            println!("{doc}");
            Ok::<_, lambda_runtime::Error>(doc)
        }
    }))
    .await
}

/// The setup function: each invocation is CloudFormation's request to the
/// stack's setup resource, answered at its pre-signed URL
/// (`login_etl::cli::setup::resource`).
async fn serve_setup() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let remaining = event
                .context
                .deadline()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            login_etl::cli::setup::resource::handle(event.payload, remaining, &|name| {
                std::env::var(name).ok()
            })
            .await
            .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
