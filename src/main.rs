//! Lambda entry point: build the handler once per cold start, then serve
//! invocations. `login-etl migrate` applies the schema and exits;
//! `login-etl gen-events` writes a synthetic SQS batch (demos, benchmarks);
//! `login-etl reveal` and `login-etl forget` are the operators' PII-vault
//! commands (see `login_etl::reveal`); `login-etl grants` prints the GRANT
//! statements of a database role (see `login_etl::grants`).

use std::process::ExitCode;
use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use login_etl::config::{Config, DbConfig};
use login_etl::{SqsBatch, startup};
use tracing::{error, info};

const USAGE: &str = "usage: login-etl [migrate | gen-events [--count N] [--invalid-every N] [--fifo] [--seed N] | reveal (--ip-token T | --device-token T | --user-id U) | forget --user-id U | grants --role ingest|reveal|erase|migrate --to NAME [--schema S]]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    login_etl::logging::init();
    let result = match std::env::args().nth(1).as_deref() {
        None => serve().await,
        Some("migrate") => migrate().await,
        Some("gen-events") => gen_events(),
        Some("reveal") => reveal().await,
        Some("forget") => forget().await,
        Some("grants") => grants(),
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

/// `login-etl reveal`: prints `kind token value` per line; one audit line per
/// value on stderr. Needs the database settings and operator credentials
/// that may call `kms:Decrypt` on the vault key.
async fn reveal() -> Result<(), lambda_runtime::Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let target =
        login_etl::reveal::Target::from_args(&args).map_err(|e| format!("{e}\n{USAGE}"))?;
    let client = startup::operator_connection(&DbConfig::from_env()?).await?;
    let kms = aws_sdk_kms::Client::new(&login_etl::secrets::sdk_config().await);
    let revealed =
        login_etl::reveal::reveal(&client, &kms, &target, &mut |line| eprintln!("{line}")).await?;
    if revealed.is_empty() {
        return Err("nothing to reveal: no such token or user in user_logins".into());
    }
    for r in revealed {
        let value = r.value.as_deref().unwrap_or("(not in the vault)");
        println!("{}\t{}\t{value}", r.kind.as_str(), r.token);
    }
    Ok(())
}

/// `login-etl grants --role R --to NAME [--schema S]`: the GRANT statements
/// of role R for the database role NAME, on stdout (pipe them to psql as
/// the tables' owner).
fn grants() -> Result<(), lambda_runtime::Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (mut role, mut to, mut schema) = (None, None, "public".to_owned());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--role" => {
                role = Some(login_etl::grants::Role::parse(value).ok_or_else(|| {
                    format!("--role must be ingest, reveal, erase or migrate\n{USAGE}")
                })?)
            }
            "--to" => to = Some(value.clone()),
            "--schema" => schema = value.clone(),
            _ => return Err(format!("unknown option {flag}\n{USAGE}").into()),
        }
    }
    let (Some(role), Some(to)) = (role, to) else {
        return Err(format!("grants needs --role and --to\n{USAGE}").into());
    };
    print!("{}", login_etl::grants::sql(role, &to, &schema)?);
    Ok(())
}

/// `login-etl forget --user-id U`: erases the user's rows and the vault
/// entries only they used, in one transaction, and prints the counts.
async fn forget() -> Result<(), lambda_runtime::Error> {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [flag, user] = args.as_slice() else {
        return Err(USAGE.into());
    };
    if flag != "--user-id" {
        return Err(USAGE.into());
    }
    let mut client = startup::operator_connection(&DbConfig::from_env()?).await?;
    let done = login_etl::reveal::forget(&mut client, user).await?;
    println!(
        "forgot the user: {} rows deleted from user_logins, {} vault entries no other user shares deleted",
        done.rows, done.vault_entries
    );
    Ok(())
}
