//! The binary: without a command, the Lambda function (the handler is built
//! once per cold start, then serves invocations); with one, an operator or
//! developer command (see `login_etl::cli` for the commands and exit codes).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use login_etl::cli::{
    AuditArgs, Cli, Command, EXIT_NOT_FOUND, EXIT_USAGE, ForgetArgs, GrantsArgs, RevealArgs,
};
use login_etl::config::{Config, DbConfig};
use login_etl::{SqsBatch, startup};
use tracing::{error, info};

/// Why a command stopped: a message for stderr, and the exit code.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse(); // --help, --version and usage errors exit here (0 or 2)
    let Some(command) = cli.command else {
        return serve_lambda().await;
    };
    if let Command::Poll(args) = &command {
        return poll(args).await;
    }
    // Operator commands: results on stdout, logs on stderr.
    login_etl::logging::init(login_etl::logging::Output::Stderr);
    let result = match command {
        Command::Migrate => migrate().await,
        Command::Grants(args) => grants(&args),
        Command::Reveal(args) => reveal(&args).await,
        Command::Forget(args) => forget(&args).await,
        Command::Audit(args) => audit(&args).await,
        Command::Poll(_) => unreachable!("handled above"),
        Command::GenEvents(args) => {
            let event = login_etl::synth::event(&(&args).into());
            println!(
                "{}",
                serde_json::to_string(&event).expect("an SQS event serializes")
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("login-etl: {message}");
            ExitCode::from(code)
        }
    }
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
    login_etl::logging::init(login_etl::logging::Output::Stdout);
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, in the log Lambda keeps (stdout, JSON at ERROR).
            error!(error = %e, "login-etl stopped");
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
            // report before Lambda kills the invocation. A deadline already
            // past on arrival is no real one (Lambda would have ended the
            // invocation): emulators such as `cargo lambda watch` set it
            // before their first, lazy compile.
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

/// The long-running consumer: logs and EMF documents on stdout, as in
/// Lambda (a container's log driver, the CloudWatch agent or Fluent Bit
/// read them there); exit 0 after a clean SIGTERM or SIGINT.
async fn poll(args: &login_etl::cli::PollArgs) -> ExitCode {
    use login_etl::poll::PollError;
    login_etl::logging::init(login_etl::logging::Output::Stdout);
    match login_etl::poll::run(args.into()).await {
        Ok(stats) => {
            use std::sync::atomic::Ordering::Relaxed;
            info!(
                batches = stats.batches.load(Relaxed),
                received = stats.received.load(Relaxed),
                deleted = stats.deleted.load(Relaxed),
                not_deleted = stats.not_deleted.load(Relaxed),
                left_in_queue = stats.left.load(Relaxed),
                "stopped"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "login-etl poll stopped");
            eprintln!("login-etl: {e}");
            ExitCode::from(if matches!(e, PollError::Usage(_)) {
                EXIT_USAGE
            } else {
                1
            })
        }
    }
}

/// Prints the audit trail as JSON lines (the audit role's database settings).
async fn audit(args: &AuditArgs) -> Result<(), Failure> {
    let client = startup::operator_connection(&DbConfig::from_env()?).await?;
    for record in login_etl::reveal::audit_records(&client, args.since).await? {
        println!("{record}");
    }
    Ok(())
}

async fn migrate() -> Result<(), Failure> {
    let target = startup::migrate(&DbConfig::from_env()?).await?;
    info!(%target, "schema applied");
    println!("schema applied: {target}");
    Ok(())
}

fn grants(args: &GrantsArgs) -> Result<(), Failure> {
    print!(
        "{}",
        login_etl::grants::sql(args.role.into(), &args.to, &args.schema)?
    );
    Ok(())
}

/// Prints `kind token value` per line, after the audit records (naming the
/// caller's ARN from STS) have committed; one audit line per value on
/// stderr too. Needs the database settings of the reveal role and AWS
/// credentials of `PiiRevealRole` (the only principal that may decrypt).
async fn reveal(args: &RevealArgs) -> Result<(), Failure> {
    let aws = login_etl::secrets::sdk_config().await;
    let caller = login_etl::reveal::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let mut client = startup::operator_connection(&DbConfig::from_env()?).await?;
    let kms = aws_sdk_kms::Client::new(&aws);
    let revealed =
        login_etl::reveal::reveal(&mut client, &kms, &args.target(), &caller, &mut |line| {
            eprintln!("{line}")
        })
        .await?;
    if revealed.is_empty() {
        return Err(Failure(
            "nothing to reveal: no such token or user in user_logins".into(),
            EXIT_NOT_FOUND,
        ));
    }
    let mut missing = 0;
    for r in &revealed {
        match &r.value {
            Some(value) => println!("{}\t{}\t{value}", r.kind.as_str(), r.token),
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(Failure(
            format!(
                "{missing} of {} tokens are not in the vault (written before the vault was on, or erased)",
                revealed.len()
            ),
            EXIT_NOT_FOUND,
        ));
    }
    Ok(())
}

/// Erases the user (see `login_etl::reveal::forget`) and prints the counts.
/// Needs the erase role's database settings, AWS credentials (STS names the
/// caller in the audit record) and the masking key (the user key is keyed).
async fn forget(args: &ForgetArgs) -> Result<(), Failure> {
    let config = Config::from_env()?;
    let aws = login_etl::secrets::sdk_config().await;
    let caller = login_etl::reveal::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let secrets = matches!(config.masking_key, login_etl::config::KeySource::Secret(_))
        .then(|| login_etl::secrets::Secrets::new(&aws));
    let key = startup::masking_key(&config.masking_key, secrets.as_ref()).await?;
    let user_key = login_etl::masking::Masker::new(&key).user_key(&args.user_id);
    let mut client = startup::operator_connection(&config.db).await?;
    let done =
        login_etl::reveal::forget(&mut client, &args.user_id, user_key.as_str(), &caller).await?;
    println!(
        "forgot the user: {} rows deleted from user_logins, {} vault entries no other user shares deleted",
        done.rows, done.vault_entries
    );
    Ok(())
}
