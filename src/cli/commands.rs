//! What each command does: `run` takes a parsed [`Command`] to its exit code.
//! Results go to stdout; logs and errors to stderr, each error once.

use std::process::ExitCode;

use tracing::{error, info};

use super::queue_check::{Receives, StackPrincipals, Wanted};
use super::{
    AuditArgs, Command, DlqRedriveArgs, DoctorArgs, EXIT_NOT_FOUND, EXIT_TEMPFAIL, EXIT_USAGE,
    ForgetArgs, GrantsArgs, MaintainArgs, MigrateArgs, PollArgs, RevealArgs, RotateKeyArgs,
};
use crate::config::KeySource;
use crate::database::settings::DbConfig;
use crate::poll::PollError;
use crate::privacy::{audit, forget, reveal, vault_upgrade};
use crate::secrets::Secrets;
use crate::startup;

/// Why a command stopped: a message for stderr, and the exit code.
struct CommandFailure(String, u8);

impl<E: std::fmt::Display> From<E> for CommandFailure {
    fn from(e: E) -> Self {
        CommandFailure(e.to_string(), 1)
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
        Command::Grants(args) => grants(&args).await,
        Command::Password(args) => super::password::run(&args)
            .await
            .map(|line| println!("{line}"))
            .map_err(|e| CommandFailure(e, 1)),
        Command::Setup(args) => setup(&args).await,
        Command::Reveal(args) => reveal(&args).await,
        Command::Forget(args) => forget(&args).await,
        Command::Audit(args) => audit(&args).await,
        Command::RotateKey(args) => rotate_key(&args).await,
        Command::VaultUpgrade => vault_upgrade().await,
        Command::DlqRedrive(args) => dlq_redrive(&args).await,
        Command::Schema(args) => schema(&args),
        Command::Validate(args) => return super::validate::run(&args),
        Command::Doctor(args) => doctor(&args).await,
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
        Err(CommandFailure(message, code)) => {
            eprintln!("login-etl: {message}");
            ExitCode::from(code)
        }
    }
}

/// The long-running consumer: logs and EMF documents on stdout, as in
/// Lambda (a container's log driver, the CloudWatch agent or Fluent Bit
/// read them there); exit 0 after a clean SIGTERM or SIGINT.
async fn poll(args: &PollArgs) -> ExitCode {
    crate::logging::init_traced(crate::logging::Output::Stdout);
    let result = crate::poll::run(args.into()).await;
    // The spans of the last batches, before the process ends.
    tokio::task::spawn_blocking(crate::telemetry::shutdown)
        .await
        .ok();
    match result {
        Ok(stats) => {
            use std::sync::atomic::Ordering::Relaxed;
            info!(
                batches = stats.batches.load(Relaxed),
                received = stats.received.load(Relaxed),
                deleted = stats.deleted.load(Relaxed),
                not_deleted = stats.not_deleted.load(Relaxed),
                left_in_queue = stats.left.load(Relaxed),
                late_renewals = stats.late_renewals.load(Relaxed),
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
async fn audit(args: &AuditArgs) -> Result<(), CommandFailure> {
    let client =
        startup::full_profile_connection(&DbConfig::from_env()?, "reading the audit trail").await?;
    for record in audit::audit_records(&client, args.since).await? {
        println!("{record}");
    }
    Ok(())
}

async fn migrate(args: &MigrateArgs) -> Result<(), CommandFailure> {
    let options = crate::table::schema::MigrateOptions {
        granularity: args.partition_interval,
        cold_start: false,
        premake_days: args.premake_days,
        prepare_only: args.prepare,
        profile: args.profile,
        retention: args.retention_days,
    };
    let target = startup::migrate_with(&DbConfig::from_env()?, &options).await?;
    info!(%target, "schema applied");
    println!("schema applied: {target}");
    Ok(())
}

/// One maintenance run as the maintain role: its EMF document on stdout
/// (the metrics), the partitions made and dropped in the log on stderr.
async fn maintain(args: &MaintainArgs) -> Result<(), CommandFailure> {
    let report = startup::maintain(&DbConfig::from_env()?, &args.into()).await?;
    println!("{}", crate::table::maintain::emf_from_env(&report));
    Ok(())
}

/// Re-keys everything to the newest masking-key version (see
/// `crate::privacy::rekey`), showing progress on stderr; prints the key's state as
/// JSON at the end. Needs the rotate role's database settings, AWS
/// credentials (STS names the caller in the audit trail) and both keys'
/// newest secrets (MASKING_KEY_SECRET_ID, ERASURE_KEY_SECRET_ID).
async fn rotate_key(args: &RotateKeyArgs) -> Result<(), CommandFailure> {
    let db = DbConfig::from_env()?;
    if args.status {
        let client = startup::full_profile_connection(&db, "rotating the masking key").await?;
        println!("{}", rekey_status(&client).await?);
        return Ok(());
    }
    let mut client = startup::full_profile_connection(&db, "rotating the masking key").await?;
    let env = |name: &str| std::env::var(name).ok();
    if args.arm {
        let masking = crate::config::key_source(&env, "MASKING_KEY", "MASKING_KEY_SECRET_ID")?
            .ok_or_else(|| {
                CommandFailure(
                    "MASKING_KEY_SECRET_ID is not set: arming records the check values of the new version's keys (docs/runbooks/leaked-key.md)".into(),
                    EXIT_USAGE,
                )
            })?;
        let erasure = crate::config::key_source(&env, "ERASURE_KEY", "ERASURE_KEY_SECRET_ID")?;
        let aws = crate::secrets::sdk_config().await;
        let secrets = [Some(&masking), erasure.as_ref()]
            .iter()
            .any(|s| matches!(s, Some(KeySource::Secret(_))))
            .then(|| Secrets::new(&aws));
        let masker = startup::masker(&masking, erasure.as_ref(), secrets.as_ref()).await?;
        let armed = crate::privacy::rekey::arm(&client, &masker).await?;
        println!("{}", serde_json::json!({ "armed": armed }));
        return Ok(());
    }
    let masking = crate::config::key_source(&env, "MASKING_KEY", "MASKING_KEY_SECRET_ID")?
        .ok_or_else(|| {
            CommandFailure(
                "MASKING_KEY_SECRET_ID is not set: rotate-key needs the masking secret with the new version appended (docs/runbooks/leaked-key.md, \"The masking key leaked\")".into(),
                EXIT_USAGE,
            )
        })?;
    let erasure = crate::config::key_source(&env, "ERASURE_KEY", "ERASURE_KEY_SECRET_ID")?;
    let aws = crate::secrets::sdk_config().await;
    let caller = audit::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let secrets = [Some(&masking), erasure.as_ref()]
        .iter()
        .any(|s| matches!(s, Some(KeySource::Secret(_))))
        .then(|| Secrets::new(&aws));
    let masker = startup::masker(&masking, erasure.as_ref(), secrets.as_ref()).await?;
    // One stream runs on `client`; N jobs on N connections of their own.
    let mut jobs = Vec::new();
    while args.jobs > 1 && jobs.len() < usize::from(args.jobs) {
        jobs.push(startup::operator_connection(&db).await?);
    }
    let options = crate::privacy::rekey::RekeyOptions {
        chunk_pages: args.chunk_pages,
        ..Default::default()
    };
    let progress = &mut |p: crate::privacy::rekey::Progress| {
        info!(
            jobs = args.jobs,
            rows_done = p.done,
            rows_estimated = p.estimate,
            rows_left = p.estimate.saturating_sub(p.done),
            rows_per_second = p.rate.round() as u64,
            seconds_left = p.eta_seconds.round() as u64,
            "re-keying rows"
        )
    };
    let report = crate::privacy::rekey::rotate_side_by_side(
        &mut client,
        jobs,
        &masker,
        &caller,
        options,
        progress,
    )
    .await
    .map_err(|e| match e {
        // Not done yet; a later run (after maintain's drain) does it.
        e @ crate::privacy::rekey::RekeyError::DrainUnderWay { .. } => {
            CommandFailure(e.to_string(), EXIT_TEMPFAIL)
        }
        e => CommandFailure::from(e),
    })?;
    info!(
        from = report.from,
        to = report.to,
        rows = report.rows,
        vault_entries = report.vault_entries,
        erasures = report.erasures,
        audit_records = report.audit_records,
        "rotate-key done"
    );
    println!("{}", rekey_status(&client).await?);
    Ok(())
}

/// The key's state and, while a re-key is under way, its exposure window
/// (what the retired key still opens, and for how long), as JSON.
async fn rekey_status(
    client: &tokio_postgres::Client,
) -> Result<serde_json::Value, CommandFailure> {
    let s = crate::privacy::rekey::state(client).await?;
    let e = crate::privacy::rekey::exposure(client).await?;
    Ok(serde_json::json!({
        "version": s.version,
        "rekey_from": s.rekey_from,
        "rows_rekeyed": s.rows_rekeyed,
        "vault_entries_rekeyed": s.vault_rekeyed,
        "rekey_started_at": e.started_at.map(|t| t.to_rfc3339()),
        "rows_left_estimate": e.rows_left,
        "vault_entries_left_estimate": e.vault_entries_left,
        "rekeyed_per_second": e.rate.round() as u64,
        "seconds_left_estimate": e.seconds_left.map(|s| s.round() as u64),
    }))
}

/// The vault's KMS key (`VAULT_KMS_KEY_ID`), which `reveal` and
/// `vault-upgrade` name in each `Decrypt`: a wrapped key under any other is
/// refused by KMS.
fn vault_key() -> Result<String, CommandFailure> {
    std::env::var("VAULT_KMS_KEY_ID")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            CommandFailure(
                "VAULT_KMS_KEY_ID is not set: give the vault's KMS key (the stack's VaultKeyArn output); every Decrypt names it, so a data key wrapped under another key is never used".into(),
                2,
            )
        })
}

/// Re-seals the vault entries of the old form (see
/// [`vault_upgrade::upgrade_vault`]) and prints how many. Needs the upgrade
/// role's database settings, `VAULT_KMS_KEY_ID` and AWS credentials of
/// `PiiRevealRole` (kms:Decrypt).
async fn vault_upgrade() -> Result<(), CommandFailure> {
    // The profile first: on a masking-only database nothing else applies.
    let mut client = startup::full_profile_connection(
        &DbConfig::from_env()?,
        "re-sealing the vault (vault-upgrade)",
    )
    .await?;
    let vault_key = vault_key()?;
    let aws = crate::secrets::sdk_config().await;
    let caller = audit::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let kms = aws_sdk_kms::Client::new(&aws);
    let n = vault_upgrade::upgrade_vault(&mut client, &kms, &vault_key, &caller).await?;
    println!("re-sealed {n} vault entries: the vault is ready for rotate-key");
    Ok(())
}

/// Prints the contract's JSON Schema for these settings.
fn schema(args: &super::ContractArgs) -> Result<(), CommandFailure> {
    let contract = args
        .contract()
        .map_err(|e| CommandFailure(format!("EXTRA_FIELDS: {e}"), EXIT_USAGE))?;
    print!("{}", crate::contract::schema::schema_text(&contract));
    Ok(())
}

/// Examines the database (see `crate::table::doctor`): each finding
/// with its fix on stdout (or the report as JSON), exit 1 on any.
async fn doctor(args: &DoctorArgs) -> Result<(), CommandFailure> {
    let stack = StackPrincipals {
        function_role: args.function_role_arn.clone().unwrap_or_default(),
        dlq_operator: args.dlq_operator_arn.clone(),
        deploy: args.deploy_principal_arn.clone(),
    };
    // The queue alone, from a laptop where no database is configured.
    let db = match (DbConfig::from_env(), &args.queue_url) {
        (Err(crate::error::ConfigError::Missing { .. }), Some(url)) => {
            let mut report = crate::table::doctor::Report::default();
            doctor_queue(url, args, &stack, &mut report).await?;
            return print_doctor(
                args,
                &report,
                "the queue alone (no database configured: the database not examined)",
            );
        }
        (db, _) => db?,
    };
    let client = startup::operator_connection(&db).await?;
    let examining = |e: tokio_postgres::Error| {
        CommandFailure(
            format!(
                "examining the database: {}; run doctor as the tables' owner (the migrate role) or an admin",
                crate::error::describe(&e)
            ),
            1,
        )
    };
    let maintenance = crate::table::maintain::MaintainOptions::from_env()?;
    let mut report = crate::table::doctor::examine(
        &client,
        chrono::Utc::now().date_naive(),
        maintenance.retention_days,
        maintenance.premake_days,
    )
    .await
    .map_err(examining)?;
    doctor_keys(&client, &mut report).await?;
    doctor_secret(&db, &mut report).await;
    if let Some(host) = doctor_host(&db).await {
        doctor_tls(&host, chrono::Utc::now().date_naive(), &mut report);
    }
    if let Some(url) = &args.queue_url {
        doctor_queue(url, args, &stack, &mut report).await?;
    }
    let on = format!("schema {}", report.schema);
    print_doctor(args, &report, &on)
}

/// Doctor's report: each finding with its fix (or the report as JSON),
/// then what was examined (`on`); exit 1 on any finding.
fn print_doctor(
    args: &DoctorArgs,
    report: &crate::table::doctor::Report,
    on: &str,
) -> Result<(), CommandFailure> {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("a report serializes")
        );
    } else {
        for f in &report.findings {
            println!(
                "FAIL {} {}: {}
     fix: {}",
                f.check, f.subject, f.problem, f.fix
            );
        }
        for note in &report.notes {
            println!("note {note}");
        }
        println!(
            "{} check(s) on {on}: {}",
            report.checks.len(),
            if report.findings.is_empty() {
                "nothing to mend".to_owned()
            } else {
                format!("{} finding(s)", report.findings.len())
            }
        );
    }
    if report.findings.is_empty() {
        Ok(())
    } else {
        Err(CommandFailure(
            format!(
                "{} finding(s), each with its fix above",
                report.findings.len()
            ),
            1,
        ))
    }
}

/// How long before a built-in CA expires doctor asks for a release that
/// carries its successor.
const CA_EXPIRY_WARNING_DAYS: i64 = 365;

/// Doctor's `tls` check: the built-in CA certificate the host's roots
/// expire with first, named with its date; a finding within a year of it.
fn doctor_tls(host: &str, today: chrono::NaiveDate, report: &mut crate::table::doctor::Report) {
    use crate::database::tls::Roots;
    let roots = Roots::of(host);
    let Some((name, date)) = roots.first_expiring() else {
        return; // the system's roots: the machine's to renew
    };
    report.checks.push("tls");
    let expires = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("a date of the table");
    let left = (expires - today).num_days();
    report.notes.push(format!(
        "tls: {host} is checked against {}; the first of them to expire is {name}, on {date} ({left} days)",
        roots.describe()
    ));
    if left < CA_EXPIRY_WARNING_DAYS {
        report.findings.push(crate::table::doctor::Finding {
            check: "tls",
            subject: name.to_owned(),
            problem: format!("the built-in CA certificate {name} expires on {date}, in {left} days"),
            fix: "deploy a login-etl release that carries its successor (docs/ca-certificates.md); until then give the new bundle as DB_CA_BUNDLE (the stack: DbCaBundleSecretArn)".into(),
        });
    }
}

/// The host doctor's connection names: the URL's or libpq's, else the
/// secret's (read once more; `None` when it cannot be).
async fn doctor_host(db: &DbConfig) -> Option<String> {
    use tokio_postgres::config::Host;
    if let Ok(Some(pg)) = db.pg_config() {
        return match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => Some(h.clone()),
            _ => None,
        };
    }
    let crate::database::settings::DbSource::Secret(id) = &db.source else {
        return None;
    };
    let secrets = Secrets::new(&crate::secrets::sdk_config().await);
    secrets.db(id, false).await.ok().map(|s| s.host)
}

/// Doctor's `keys` check, where the operator gave it a key (MASKING_KEY or
/// _SECRET_ID, ERASURE_KEY or _SECRET_ID): each against the database's
/// key state (see `crate::privacy::key_check`).
async fn doctor_keys(
    client: &tokio_postgres::Client,
    report: &mut crate::table::doctor::Report,
) -> Result<(), CommandFailure> {
    use crate::privacy::key_check::{self, KEY_STATE_SQL, RecordedKeys};
    let env = |name: &str| std::env::var(name).ok();
    let masking = crate::config::key_source(&env, "MASKING_KEY", "MASKING_KEY_SECRET_ID")?;
    let erasure = crate::config::key_source(&env, "ERASURE_KEY", "ERASURE_KEY_SECRET_ID")?;
    if (masking.is_none() && erasure.is_none()) || report.profile.is_empty() {
        return Ok(()); // no key given, or no login-etl schema to compare with
    }
    report.checks.push("keys");
    let secrets = if [&masking, &erasure]
        .iter()
        .any(|s| matches!(s, Some(KeySource::Secret(_))))
    {
        Some(Secrets::new(&crate::secrets::sdk_config().await))
    } else {
        None
    };
    let mut versions = Vec::new();
    for (source, var) in [(&masking, "MASKING_KEY"), (&erasure, "ERASURE_KEY")] {
        versions.push(match source {
            Some(s) => Some(startup::key_versions(s, var, secrets.as_ref()).await?),
            None => None,
        });
    }
    let row = client.query_one(KEY_STATE_SQL, &[]).await.map_err(|e| {
        CommandFailure(format!("reading the key state: {}; run doctor as the tables' owner (the migrate role) or an admin", crate::error::describe(&e)), 1)
    })?;
    let state = RecordedKeys {
        version: row.get::<_, i16>(0) as u16,
        masking_check: row.get(1),
        erasure_check: row.get(2),
        erasure_derived: row.get(3),
    };
    report.findings.extend(key_check::findings(
        &state,
        versions[0].as_ref(),
        versions[1].as_ref(),
    ));
    Ok(())
}

/// Doctor's `secret` check, where it connects with a secret
/// (`DB_SECRET_ID`): the secret's resource policy denies reading it to
/// everybody but the principals it names, as `login-etl password` and a
/// stack's `ProtectDbSecret` make it (`policy::protects`). Without one, any
/// principal of the account allowed `secretsmanager:GetSecretValue` on `*`
/// reads the role's password (the owner's, run as the migrate role).
async fn doctor_secret(db: &DbConfig, report: &mut crate::table::doctor::Report) {
    let crate::database::settings::DbSource::Secret(id) = &db.source else {
        return;
    };
    report.checks.push("secret");
    let secrets = Secrets::new(&crate::secrets::sdk_config().await);
    let problem = match secrets.resource_policy(id).await {
        Ok(None) => Some(
            "it has no resource policy: any principal of the account allowed secretsmanager:GetSecretValue on * reads this role's password".to_owned(),
        ),
        Ok(Some(policy)) => super::password::policy::protects(&policy).err(),
        Err(e) => Some(format!(
            "its resource policy could not be read ({e}): give doctor's credentials secretsmanager:GetResourcePolicy on it"
        )),
    };
    let Some(problem) = problem else { return };
    let role = match secrets.db(id, false).await {
        Ok(secret) => secret.username,
        Err(_) => "<its role>".to_owned(),
    };
    report.findings.push(crate::table::doctor::Finding {
        check: "secret",
        subject: id.clone(),
        problem,
        fix: format!(
            "as the admin: login-etl password --role {role} --secret-id {id} --new-password, with --reader-arn ARN for each principal that reads it besides you (the function's role, for the ingest and maintain roles' secrets): login-etl's policy on it, then a new password nobody else has seen; a secret its stack reads as DbSecretArn: deploy with ProtectDbSecret=true; one its setup made: update the stack"
        ),
    });
}

/// Doctor's `queue` check (`--queue-url`, see [`super::queue_check`]): its
/// visibility timeout against the function's (`function_timeout`, 0: not
/// checked), its RedrivePolicy against the backoff settings' outage
/// tolerance (see `crate::poll::outage_warning`), its dead-letter queue
/// found, and both queues' access policies against `stack`'s principals.
async fn doctor_queue(
    url: &str,
    args: &DoctorArgs,
    stack: &StackPrincipals,
    report: &mut crate::table::doctor::Report,
) -> Result<(), CommandFailure> {
    report.checks.push("queue");
    // The stack's count when given: the one its setup holds the queue to.
    let receives = match args.min_receive_count {
        Some(n) => Receives::AtLeast(n),
        None => Receives::Backoff(crate::config::backoff_from_env()?),
    };
    let wanted = Wanted {
        visibility: Wanted::visibility_for(args.function_timeout),
        receives,
        dead_letter_arn: None,
        visibility_note: " (or give doctor the stack's FunctionTimeout with --function-timeout; 0 for a queue only login-etl poll reads)",
    };
    let aws = crate::secrets::sdk_config().await;
    let found = super::queue_check::examine(&aws, url, &wanted, stack).await;
    report.findings.extend(found.drains);
    report.findings.extend(found.policies);
    Ok(())
}

/// Sends the dead-letter queue's messages back (see
/// `crate::ingest::redrive`), progress on stderr, the counts as JSON on
/// stdout. Needs AWS credentials of `DlqOperatorRole` and, for the
/// function's sealed copies, `DLQ_KMS_KEY_ID` (and `VAULT_KMS_KEY_ID` for
/// copies sealed under the vault's key before there was one).
async fn dlq_redrive(args: &DlqRedriveArgs) -> Result<(), CommandFailure> {
    use crate::ingest::redrive::{RedriveOptions, redrive};
    let aws = crate::secrets::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let keys: Vec<String> = ["DLQ_KMS_KEY_ID", "VAULT_KMS_KEY_ID"]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok().filter(|k| !k.trim().is_empty()))
        .collect();
    let mut unsealer = (!keys.is_empty())
        .then(|| crate::privacy::dead_letter::Unsealer::new(aws_sdk_kms::Client::new(&aws), keys));
    let rebuilder = if args.rebuild {
        let Some(key) = std::env::var("DLQ_KMS_KEY_ID")
            .ok()
            .filter(|k| !k.trim().is_empty())
        else {
            return Err(CommandFailure(
                "--rebuild seals each rebuilt login under the dead-letter key: set DLQ_KMS_KEY_ID to the stack's DlqKeyArn output and run as DlqOperatorRole".into(),
                EXIT_USAGE,
            ));
        };
        Some(crate::ingest::redrive::Rebuilder::new(
            aws_sdk_kms::Client::new(&aws),
            key,
        ))
    } else {
        None
    };
    let options = RedriveOptions {
        dlq_url: args.dlq_url.clone(),
        to_url: args.to.clone(),
        dry_run: args.dry_run,
        max: args.max,
    };
    let report = redrive(
        &sqs,
        unsealer.as_mut(),
        rebuilder.as_ref(),
        &options,
        &mut |r| {
            info!(
                received = r.received,
                redriven = r.redriven,
                left = r.left.values().sum::<u64>(),
                dry_run = args.dry_run,
                "dlq-redrive"
            )
        },
    )
    .await
    .map_err(|e| match e {
        e @ crate::ingest::redrive::RedriveError::NoKmsKey => {
            CommandFailure(e.to_string(), EXIT_USAGE)
        }
        e => CommandFailure::from(e),
    })?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("counts serialize")
    );
    Ok(())
}

/// Prints the role's grants, or runs them as the connected role (the
/// tables' owner) with `--apply`.
async fn grants(args: &GrantsArgs) -> Result<(), CommandFailure> {
    let sql = crate::grants::sql(args.role, &args.to, &args.schema, args.profile)?;
    if !args.apply {
        print!("{sql}");
        return Ok(());
    }
    let client = startup::operator_connection(&DbConfig::from_env()?).await?;
    let who = if args.role == crate::table::privileges::Role::Migrate {
        "as the admin that made the role and owns the schema (it gives the migrate role USAGE and CREATE there)"
    } else {
        "as the tables' owner (the migrate role) after login-etl migrate"
    };
    client.batch_execute(&sql).await.map_err(|e| {
        CommandFailure(
            format!(
                "applying the grants of {} to {} failed: {}; nothing was granted (one transaction): run it {who}",
                args.role.as_str(),
                args.to,
                crate::error::describe(&e)
            ),
            1,
        )
    })?;
    println!(
        "granted: {} to {} in schema {}",
        args.role.as_str(),
        args.to,
        args.schema
    );
    Ok(())
}

/// README's setup block in one command: each step's line on stdout.
async fn setup(args: &super::SetupArgs) -> Result<(), CommandFailure> {
    let readers = args
        .reader_arn
        .iter()
        .map(|r| {
            super::setup::reader(r).ok_or_else(|| {
                    CommandFailure(
                        format!("--reader-arn {r}: expected ROLE=ARN, e.g. ingest=arn:aws:iam::123456789012:role/fn"),
                        EXIT_USAGE,
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    let plan = super::setup::Plan {
        prefix: args.prefix.clone(),
        schema: args.schema.clone(),
        profile: args.profile,
        retention: args.retention_days,
        auth: args.auth,
        secrets: args.secrets.clone(),
        secret_host: args.secret_host.clone(),
        secret_port: args.secret_port,
        readers,
        admin_arn: None,
        rewriters: Vec::new(),
    };
    // The admin as psql connects (the PG* variables, ~/.pgpass), with a
    // password: DB_AUTH says how the roles connect, not the admin.
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let admin = DbConfig::from_lookup(&|name: &str| match name {
        "DB_AUTH" | "DB_SECRET_ID" => None,
        _ => env(name),
    })?;
    let report = super::setup::run(&plan, &admin, &env, &mut |line| println!("{line}")).await?;
    println!("set up: {}", report.schema);
    Ok(())
}

/// Prints `kind token value` per line, after the audit records (naming the
/// caller's ARN from STS) have committed; one audit line per value on
/// stderr too. Needs the database settings of the reveal role,
/// `VAULT_KMS_KEY_ID` and AWS credentials of `PiiRevealRole` (the only
/// principal that may decrypt).
async fn reveal(args: &RevealArgs) -> Result<(), CommandFailure> {
    // The profile first: on a masking-only database nothing else applies.
    let mut client = startup::full_profile_connection(
        &DbConfig::from_env()?,
        "revealing originals from the vault",
    )
    .await?;
    let vault_key = vault_key()?;
    let aws = crate::secrets::sdk_config().await;
    let caller = audit::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let kms = aws_sdk_kms::Client::new(&aws);
    let revealed = reveal::reveal(
        &mut client,
        &kms,
        &vault_key,
        &args.target(),
        &caller,
        &mut |line| eprintln!("{line}"),
    )
    .await?;
    if revealed.is_empty() {
        return Err(CommandFailure(
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
        return Err(CommandFailure(
            format!(
                "{missing} of {} tokens are not in the vault (written before the vault was on, or erased)",
                revealed.len()
            ),
            EXIT_NOT_FOUND,
        ));
    }
    Ok(())
}

/// Erases the user (see [`forget::forget`]) and prints the counts. Needs
/// the erase role's database settings, AWS credentials (STS names the
/// caller in the audit record) and the erasure key (ERASURE_KEY_SECRET_ID:
/// the user key is keyed; it cannot compute ip or device tokens). A
/// deployment without an erasure key gives the masking key instead.
async fn forget(args: &ForgetArgs) -> Result<(), CommandFailure> {
    let db = DbConfig::from_env()?;
    let mut client = startup::full_profile_connection(&db, "erasing a user (forget)").await?;
    let env = |name: &str| std::env::var(name).ok();
    let erasure = crate::config::key_source(&env, "ERASURE_KEY", "ERASURE_KEY_SECRET_ID")?;
    let masking = match erasure {
        Some(_) => None,
        None => crate::config::key_source(&env, "MASKING_KEY", "MASKING_KEY_SECRET_ID")?,
    };
    let aws = crate::secrets::sdk_config().await;
    let caller = audit::caller_arn(&aws_sdk_sts::Client::new(&aws)).await?;
    let secrets = [&erasure, &masking]
        .iter()
        .any(|s| matches!(s, Some(KeySource::Secret(_))))
        .then(|| Secrets::new(&aws));
    let keys = startup::user_keys(erasure.as_ref(), masking.as_ref(), secrets.as_ref()).await?;
    let done = match forget::forget(&mut client, &args.user_id, &keys, &caller).await {
        Err(e @ (reveal::RevealError::RekeyUnderWay | reveal::RevealError::DrainUnderWay)) => {
            return Err(CommandFailure(e.to_string(), EXIT_TEMPFAIL));
        }
        done => done?,
    };
    println!(
        "forgot the user: {} rows deleted from user_logins, {} vault entries no other user shares deleted",
        done.rows, done.vault_entries
    );
    if done.rows == 0 {
        // A mistyped id looks the same: say so, without the id.
        eprintln!(
            "login-etl: no row of this user id was stored (within retention); it is on the erasure list either way. If you expected rows, check the id you gave"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today(date: &str) -> chrono::NaiveDate {
        chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn doctor_names_the_built_in_ca_that_expires_first_and_asks_for_a_release_within_a_year() {
        let host = "db.abc.eu-west-1.rds.amazonaws.com";
        let mut report = crate::table::doctor::Report::default();
        doctor_tls(host, today("2026-11-29"), &mut report);
        assert_eq!(report.checks, ["tls"]);
        assert!(report.findings.is_empty(), "{:?}", report.findings);
        let (name, date) = crate::database::tls::RDS_CA_FIRST_EXPIRING;
        assert!(
            report.notes[0].contains(name) && report.notes[0].contains(date),
            "{:?}",
            report.notes
        );
        // Within a year of it: a finding naming it and what to do.
        let mut report = crate::table::doctor::Report::default();
        doctor_tls(host, today("2060-12-01"), &mut report);
        let found = &report.findings[0];
        assert_eq!((found.check, found.subject.as_str()), ("tls", name));
        assert!(found.fix.contains("DB_CA_BUNDLE"), "{}", found.fix);
        // A proxy's roots; no built-in roots for another host.
        let mut report = crate::table::doctor::Report::default();
        doctor_tls(
            "p.proxy-abc.eu-west-1.rds.amazonaws.com",
            today("2026-11-29"),
            &mut report,
        );
        assert!(report.notes[0].contains(crate::database::tls::AMAZON_TRUST_FIRST_EXPIRING.0));
        let mut report = crate::table::doctor::Report::default();
        doctor_tls("db.internal", today("2026-11-29"), &mut report);
        assert!(report.checks.is_empty() && report.notes.is_empty());
    }
}
