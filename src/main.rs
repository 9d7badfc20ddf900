//! Lambda entry point: build the handler once per cold start, then serve
//! invocations. `login-etl migrate` applies the schema and exits;
//! `login-etl gen-events` writes a synthetic SQS batch (demos, benchmarks).

use std::process::ExitCode;
use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use login_etl::config::{Config, DbConfig};
use login_etl::{SqsBatch, startup};
use tracing::{error, info};

const USAGE: &str =
    "usage: login-etl [migrate | gen-events [--count N] [--invalid-every N] [--fifo] [--seed N]]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    login_etl::logging::init();
    let result = match std::env::args().nth(1).as_deref() {
        None => serve().await,
        Some("migrate") => migrate().await,
        Some("gen-events") => gen_events(),
        Some(_) => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "login-etl stopped");
            eprintln!("login-etl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> Result<(), lambda_runtime::Error> {
    let config = Config::from_env()?;
    let handler = Arc::new(startup::build(&config).await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsBatch>| {
        let handler = Arc::clone(&handler);
        async move {
            // The deadline as an Instant: the sink gives up early enough to
            // report a retryable error before Lambda kills the invocation.
            // A deadline already past on arrival is no real one (Lambda would
            // have ended the invocation): emulators such as `cargo lambda
            // watch` set it before their first, lazy compile.
            let deadline = match event
                .context
                .deadline()
                .duration_since(std::time::SystemTime::now())
            {
                Ok(left) => Some(std::time::Instant::now() + left),
                Err(_) => {
                    tracing::warn!(
                        "the invocation's deadline is already past on arrival; ignoring it"
                    );
                    None
                }
            };
            handler
                .handle_batch_until(&event.payload, deadline)
                .await
                .map(|(response, _)| response)
        }
    }))
    .await
}

async fn migrate() -> Result<(), lambda_runtime::Error> {
    let target = startup::migrate(&DbConfig::from_env()?).await?;
    info!(%target, "schema applied");
    Ok(())
}

/// Writes a synthetic SQS batch event to stdout (the demo's messages), from
/// the binary already built, so a demo needs no second compile.
fn gen_events() -> Result<(), lambda_runtime::Error> {
    let options = login_etl::synth::Options::from_args(std::env::args().skip(2))
        .map_err(|e| format!("{e}\n{USAGE}"))?;
    let event = login_etl::synth::event(&options);
    println!("{}", serde_json::to_string(&event)?);
    Ok(())
}
