//! What each command does: `run` takes a parsed [`Command`] to its exit code.
//! Results go to stdout; logs and errors to stderr, each error once.

use std::process::ExitCode;

use tracing::{error, info};

use super::{
    AuditArgs, Command, EXIT_NOT_FOUND, EXIT_USAGE, ForgetArgs, GrantsArgs, MaintainArgs,
    MigrateArgs, PollArgs, RevealArgs,
};
use crate::config::{Config, DbConfig, KeySource};
use crate::masking::Masker;
use crate::poll::PollError;
use crate::secrets::Secrets;
use crate::{reveal, startup};

/// Why a command stopped: a message for stderr, and the exit code.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

/// Runs one command (see the module documentation of [`crate::cli`] for
/// the exit codes).
pub async fn run(command: Command) -> ExitCode {
    if let Command::Poll(args) = &command {
        return poll(args).await;
    }
    // Operator commands: results on stdout, logs on stderr.
    crate::logging::init(crate::logging::Output::Stderr);
    let result = match command {
        Command::Migrate(args) => migrate(&args).await,
        Command::Maintain(args) => maintain(&args).await,
        Command::Grants(args) => grants(&args),
        Command::Reveal(args) => reveal(&args).await,
        Command::Forget(args) => forget(&args).await,
        Command::Audit(args) => audit(&args).await,
        Command::Poll(_) => unreachable!("handled above"),
        Command::GenEvents(args) => {
            let event = crate::synth::event(&(&args).into());
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

/// The long-running consumer: logs and EMF documents on stdout, as in
/// Lambda (a container's log driver, the CloudWatch agent or Fluent Bit
/// read them there); exit 0 after a clean SIGTERM or SIGINT.
async fn poll(args: &PollArgs) -> ExitCode {
    crate::logging::init(crate::logging::Output::Stdout);
    match crate::poll::run(args.into()).await {
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
    for record in reveal::audit_records(&client, args.since).await? {
        println!("{record}");
    }
    Ok(())
}

async fn migrate(args: &MigrateArgs) -> Result<(), Failure> {
    let options = crate::schema::MigrateOptions {
        granularity: args.partition_interval.map(Into::into),
        cold_start: false,
        premake_days: args.premake_days,
        prepare_only: args.prepare,
    };
    let target = startup::migrate_with(&DbConfig::from_env()?, &options).await?;
    info!(%target, "schema applied");
    println!("schema applied: {target}");
    Ok(())
}

/// One maintenance run as the maintain role: its EMF document on stdout
/// (the metrics), the partitions made and dropped in the log on stderr.
async fn maintain(args: &MaintainArgs) -> Result<(), Failure> {
    let report = startup::maintain(&DbConfig::from_env()?, &args.into()).await?;
    println!("{}", crate::maintain::emf_from_env(&report));
    Ok(())
}

fn grants(args: &GrantsArgs) -> Result<(), Failure> {
    print!(
        "{}",
        crate::grants::sql(args.role.into(), &args.to, &args.schema)?
    );
    Ok(())
}

/// Prints `kind token value` per line, after the audit records (naming the
/// caller's ARN from STS) have committed; one audit line per value on
/// stderr too. Needs the database settings of the reveal role and AWS
/// credentials of `PiiRevealRole` (the only principal that may decrypt).
async fn reveal(args: &RevealArgs) -> Result<(), Failure> {
    let aws = crate::secrets::sdk_config().await;
    let caller = reveal::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let mut client = startup::operator_connection(&DbConfig::from_env()?).await?;
    let kms = aws_sdk_kms::Client::new(&aws);
    let revealed = reveal::reveal(&mut client, &kms, &args.target(), &caller, &mut |line| {
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

/// Erases the user (see [`reveal::forget`]) and prints the counts. Needs
/// the erase role's database settings, AWS credentials (STS names the
/// caller in the audit record) and the masking key (the user key is keyed).
async fn forget(args: &ForgetArgs) -> Result<(), Failure> {
    let config = Config::from_env()?;
    let aws = crate::secrets::sdk_config().await;
    let caller = reveal::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let secrets = matches!(config.masking_key, KeySource::Secret(_)).then(|| Secrets::new(&aws));
    let key = startup::masking_key(&config.masking_key, secrets.as_ref()).await?;
    let user_key = Masker::new(&key).user_key(&args.user_id);
    let mut client = startup::operator_connection(&config.db).await?;
    let done = reveal::forget(&mut client, &args.user_id, user_key.as_str(), &caller).await?;
    println!(
        "forgot the user: {} rows deleted from user_logins, {} vault entries no other user shares deleted",
        done.rows, done.vault_entries
    );
    Ok(())
}
