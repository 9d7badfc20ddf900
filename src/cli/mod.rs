//! The command line of the `login-etl` binary (clap, derive), and what each
//! command does ([`run`], in `commands.rs`).
//!
//! Without a command the binary is the Lambda function: it serves
//! invocations from the Lambda Runtime API. The commands are the operators'
//! and the developers' tools around it. Results go to stdout, logs and
//! errors to stderr, each error once.
//!
//! Exit codes: 0 success; 1 an error (the message says what to do); 2 a
//! usage error, or no command outside Lambda; 3 `reveal` found nothing
//! (no such token in the vault, or no such user).
//!
//! clap rather than lexopt or argh: derive gives `--help` for every command
//! from the doc comments below, with one definition shared by the binary
//! and `examples/gen_events.rs`. Its default features that only add size
//! (colours, suggestions) are off; its size in the arm64 artifact was not
//! measured apart from the rest (docs/performance.md).

mod commands;
mod password;
mod queue_check;
mod queue_policy;
pub mod setup;
mod validate;

use clap::{Args, Parser, Subcommand};

use crate::synth::Options;
use crate::table::privileges::Role;

pub use commands::run;

/// Exit code of a usage error, and of the bare binary outside Lambda.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a `reveal` that found nothing.
pub const EXIT_NOT_FOUND: u8 = 3;
/// The work is not done yet and a later run finishes it (`forget` during a
/// re-key or a drain of a swapped-out DEFAULT partition, `rotate-key`
/// during such a drain): 75, sysexits' EX_TEMPFAIL.
pub const EXIT_TEMPFAIL: u8 = 75;

/// What `--version` prints: the release, and the schema it writes
/// (`migrate` leaves it; 0.2.0 wrote 19).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (schema ",
    crate::table::schema::schema_version!(),
    ")"
);

/// The login-etl binary.
#[derive(Debug, Parser)]
#[command(
    name = "login-etl",
    version = VERSION,
    about = "SQS login events -> validated, PII-masked rows in PostgreSQL",
    long_about = "SQS login events -> validated, PII-masked rows in PostgreSQL.\n\n\
        Without a command, serves Lambda invocations (AWS_LAMBDA_RUNTIME_API must be set: \
        in Lambda, or under `cargo lambda watch`). The commands are operator tools; \
        they read the same environment variables as the function (docs/configuration.md).",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error (or no command outside Lambda), \
        3 reveal found nothing, 75 not finished yet: run it again later (forget during a re-key or a DEFAULT-partition drain, rotate-key during a drain)."
)]
pub struct Cli {
    /// What to do; none: serve Lambda invocations.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the schema, converting an unpartitioned user_logins online (DATABASE_URL or DB_SECRET_ID; run as the migrate role).
    Migrate(MigrateArgs),
    /// Make the coming days' partitions, empty the DEFAULT partition, drop partitions past RETENTION_DAYS (the maintain role).
    Maintain(MaintainArgs),
    /// Print the GRANT statements of a database role (pipe them to psql as the tables' owner), or run them (--apply).
    Grants(GrantsArgs),
    /// Set a login role's password to the one its RDS-style secret holds, making the secret (with a generated password) where it is missing; the password is never printed (the admin, with PostgreSQL's and AWS's usual settings).
    Password(PasswordArgs),
    /// Set up a database for login-etl, or bring it up to date (README's setup block; what the stack's setup resource runs): the schema, the login roles with their passwords in secrets (or rds_iam), the tables, each role's grants, one maintenance run. Idempotent; drops nothing (the admin, with PostgreSQL's and AWS's usual settings).
    Setup(SetupArgs),
    /// Print the original values behind tokens from the PII vault (needs kms:Decrypt).
    Reveal(RevealArgs),
    /// Erase one user: their rows and the vault entries only they used.
    Forget(ForgetArgs),
    /// Print the audit trail of reveals and erasures as JSON lines (the audit role).
    Audit(AuditArgs),
    /// Re-seal the vault entries from before key versions so that rotate-key can re-key them (the reveal role, with kms:Decrypt).
    VaultUpgrade,
    /// Re-key everything stored to the newest masking-key version, online and resumably (the rotate role; docs/runbooks/leaked-key.md "The masking key leaked").
    RotateKey(RotateKeyArgs),
    /// Write a synthetic SQS batch event (JSON) to stdout, for demos and benchmarks.
    GenEvents(GenEventsArgs),
    /// Consume the queue as a long-running service (ECS, Kubernetes, a VM) until SIGTERM.
    Poll(PollArgs),
    /// Send the dead-letter queue's messages back to the source queue as their producers sent them, unsealing the function's copies (DlqOperatorRole; DLQ_KMS_KEY_ID).
    DlqRedrive(DlqRedriveArgs),
    /// Print the message contract as a JSON Schema (2020-12), for producers.
    Schema(ContractArgs),
    /// Check message bodies (JSON Lines, or an SQS event with --event) with the function's own validator; one verdict per line, never a value.
    Validate(ValidateArgs),
    /// Check what an operator must keep true of the database (schema writers, version, search paths, roles, partitions, replication), each finding with its fix; exit 1 on any (the migrate role or an admin).
    Doctor(DoctorArgs),
}

/// `login-etl doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as one JSON document instead of lines for a person.
    #[arg(long)]
    pub json: bool,
    /// Also check this queue (its URL): a RedrivePolicy whose maxReceiveCount rides out a database outage of 30 minutes with the backoff settings (BACKOFF_BASE_SECONDS, BACKOFF_MAX_SECONDS), its dead-letter queue found, and both queues' policies closed to all but the stack's principals. Without a database configured (no DATABASE_URL, DB_SECRET_ID or PGHOST), the queue alone.
    #[arg(long, value_name = "URL", requires = "function_role_arn")]
    pub queue_url: Option<String>,
    /// With --queue-url: the role that consumes the queue (the stack's output FunctionRoleArn; for a queue only `login-etl poll` reads, poll's role): the one principal the queue's receive Deny may exempt.
    #[arg(long, value_name = "ARN", requires = "queue_url")]
    pub function_role_arn: Option<String>,
    /// With --queue-url: the role that reads the dead-letter queue (the stack's output DlqOperatorRoleArn): the one principal its receive Deny may exempt. Without it, the function's role.
    #[arg(long, value_name = "ARN", requires = "queue_url")]
    pub dlq_operator_arn: Option<String>,
    /// With --queue-url, once per principal: the stack's DeployPrincipalArns. Both queues must then refuse SetQueueAttributes and AddPermission to everyone else, as the template's statements do.
    #[arg(long, value_name = "ARN", requires = "queue_url")]
    pub deploy_principal_arn: Vec<String>,
    /// With --queue-url: the function's timeout (the stack's FunctionTimeout); the queue's visibility timeout must be at least 6 times it plus the batching window (30 s), as the event-source mapping needs. 0 skips it (`login-etl poll` renews each message's visibility itself).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub function_timeout: u32,
    /// With --queue-url: the maxReceiveCount the stack holds its queue to (its output QueueMinReceiveCount: what OutageToleranceMinutes asks with its backoff), in place of the 30 minutes' count.
    #[arg(long, value_name = "N", requires = "queue_url", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub min_receive_count: Option<u32>,
}

/// What a message is held to (the function's `CONTRACT`, `UNKNOWN_FIELDS`
/// and `EXTRA_FIELDS`).
#[derive(Debug, Clone, Args)]
pub struct ContractArgs {
    /// A login with a defect: lenient (stored, its defects recorded) or strict (rejected).
    #[arg(long, value_name = "MODE", env = "CONTRACT", default_value = "lenient")]
    pub contract: crate::contract::Mode,
    /// A field outside the contract: ignore (counted, not stored) or reject.
    #[arg(long, value_name = "POLICY", env = "UNKNOWN_FIELDS", default_value = "ignore", value_parser = ["ignore", "reject"])]
    pub unknown_fields: String,
    /// Declared fields kept in the extra column (comma-separated names).
    #[arg(long, value_name = "NAMES", env = "EXTRA_FIELDS", default_value = "")]
    pub extra_fields: String,
}

impl ContractArgs {
    /// The contract these settings give.
    pub fn contract(&self) -> Result<crate::contract::Contract, crate::contract::PolicyError> {
        use crate::contract::{Contract, UnknownFields};
        Ok(Contract::new(
            UnknownFields::parse(&self.unknown_fields)?,
            &self.extra_fields,
        )?
        .with_mode(self.contract))
    }
}

/// `login-etl validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// JSON Lines of message bodies, one per line ("-": standard input).
    #[arg(
        value_name = "FILE",
        conflicts_with = "event",
        required_unless_present = "event"
    )]
    pub file: Option<std::path::PathBuf>,
    /// An SQS batch event as Lambda sends it (events/*.json): each message's body and its SQS fields (messageId, SentTimestamp).
    #[arg(long, value_name = "FILE")]
    pub event: Option<std::path::PathBuf>,
    /// The contract's settings.
    #[command(flatten)]
    pub contract: ContractArgs,
}

/// `login-etl dlq-redrive`.
#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    /// The dead-letter queue's URL (the stack's DeadLetterQueueUrl output).
    #[arg(long, value_name = "URL")]
    pub dlq_url: String,
    /// The source queue's URL (the stack's QueueUrl output).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Only count what would be sent, by rejection code; nothing is sent or deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this many messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max: Option<u64>,
    /// Send back copies that kept no original as logins rebuilt from their masked bodies (their tokens and the fields they kept), sealed under DLQ_KMS_KEY_ID; stored with the defect message.rebuilt_from_copy.
    #[arg(long)]
    pub rebuild: bool,
}

/// `login-etl poll`: the same handler and environment variables as the
/// function; AWS credentials from the default chain.
#[derive(Debug, Args)]
pub struct PollArgs {
    /// The source queue's URL.
    #[arg(long, value_name = "URL")]
    pub queue_url: String,
    /// Batches in flight, each on a database connection of its own (1 to 64).
    #[arg(long, value_name = "N", default_value_t = crate::poll::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Messages per batch, at most (1 to 10000; above 10 needs --batch-window).
    #[arg(long, value_name = "N", default_value_t = crate::poll::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Seconds to keep gathering a batch after its first messages arrived.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub batch_window: u64,
    /// Visibility of received messages, renewed while their batch is in flight [default: the queue's].
    #[arg(long, value_name = "SECONDS")]
    pub visibility_timeout: Option<u32>,
    /// Time limit of one batch (written, or backed off, by then).
    #[arg(long, value_name = "SECONDS", default_value_t = crate::poll::DEFAULT_BATCH_TIMEOUT_SECONDS)]
    pub batch_timeout: u64,
    /// After SIGTERM or SIGINT, how long the batches in flight may take before exit.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::poll::DEFAULT_GRACE_PERIOD_SECONDS)]
    pub grace_period: u64,
    /// Serve GET /livez and /readyz here (e.g. 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,
    /// Threads that run the batches (1 to 256) [default: the CPUs this process may use].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

impl PollArgs {
    /// The runtime's worker threads: `--threads`, or else the CPUs the
    /// process may use (its affinity and cgroup quota, as
    /// `std::thread::available_parallelism` reads them: a container
    /// limited to 2 CPUs gets 2, not the host's count).
    pub fn worker_threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        )
    }
}

impl From<&PollArgs> for crate::poll::PollOptions {
    fn from(a: &PollArgs) -> Self {
        use std::time::Duration;
        crate::poll::PollOptions {
            queue_url: a.queue_url.clone(),
            concurrency: a.concurrency,
            batch_size: a.batch_size,
            batch_window: Duration::from_secs(a.batch_window),
            visibility_timeout: a.visibility_timeout,
            batch_timeout: Duration::from_secs(a.batch_timeout),
            grace_period: Duration::from_secs(a.grace_period),
            health_addr: a.health_addr,
        }
    }
}

/// `login-etl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); e.g. 2026-11-01T00:00:00Z"))
}

/// `login-etl migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Width of a partition of a new (or converted) table; fixed once chosen.
    #[arg(long, value_enum, value_name = "UNIT")]
    pub partition_interval: Option<crate::table::partitions::Granularity>,
    /// Days after today whose partitions are made.
    #[arg(long, value_name = "DAYS", default_value_t = crate::table::maintain::DEFAULT_PREMAKE_DAYS)]
    pub premake_days: u32,
    /// Upgrading a table of an earlier layout: everything but the cutover (its rows copied into the narrow row online, kept current by triggers); `migrate` again cuts over, then deploy this version (docs/deploy.md).
    #[arg(long)]
    pub prepare: bool,
    /// Which tables to have: `masking` (masked rows only: the migrate, ingest, maintain and reader roles) or `full` (also the PII vault, the erasure list, the audit trail, key rotation). Unset keeps the database's (masking for a new one); masking to full is done online, full is never narrowed (docs/profiles.md).
    #[arg(long, value_enum, value_name = "PROFILE", env = "LOGIN_ETL_PROFILE")]
    pub profile: Option<crate::profile::Profile>,
    /// Record the deployment's retention (days of logins kept, today included, or `all`): maintain's functions refuse to delete anything inside it, whoever runs them. Unset leaves what is recorded (everything, on a new database).
    #[arg(long, value_name = "DAYS|all", env = "RETENTION_DAYS")]
    pub retention_days: Option<crate::table::retention::Kept>,
}

/// `login-etl maintain`: idempotent, safe beside itself and beside ingest.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// Days after today whose partitions exist after the run.
    #[arg(long, value_name = "DAYS", env = "PREMAKE_DAYS", default_value_t = crate::table::maintain::DEFAULT_PREMAKE_DAYS)]
    pub premake_days: u32,
    /// Keep this many days of rows (today included) and drop older partitions [default: keep everything].
    #[arg(long, value_name = "DAYS", env = "RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retention_days: Option<u32>,
    /// The most rows the DEFAULT partition may hold for maintain to move them under its lock; above it the partition is swapped out and drained in chunks, so writes never wait for the move.
    #[arg(long, value_name = "ROWS", env = "DEFAULT_MOVE_LIMIT", default_value_t = crate::table::partitions::DEFAULT_MOVE_LIMIT as u64, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    pub default_move_limit: u64,
}

impl From<&MaintainArgs> for crate::table::maintain::MaintainOptions {
    fn from(a: &MaintainArgs) -> Self {
        Self {
            premake_days: a.premake_days,
            retention_days: a.retention_days,
            default_move_limit: a.default_move_limit as i64,
        }
    }
}

/// `login-etl grants`.
#[derive(Debug, Args)]
pub struct GrantsArgs {
    /// The role: ingest (the function), maintain, reader (an analyst), migrate, or in the full profile reveal, erase, audit, rotate, upgrade.
    #[arg(long, value_enum)]
    pub role: Role,
    /// The database role to grant to.
    #[arg(long, value_name = "NAME")]
    pub to: String,
    /// The schema of the login-etl tables.
    #[arg(long, default_value = "public")]
    pub schema: String,
    /// The database's profile (`login-etl migrate --profile`): masking grants only what the masking-only tables hold, and refuses the roles only the full profile has.
    #[arg(
        long,
        value_enum,
        value_name = "PROFILE",
        env = "LOGIN_ETL_PROFILE",
        default_value = "masking"
    )]
    pub profile: crate::profile::Profile,
    /// Run the statements as the connected role (the tables' owner: DB_SECRET_ID, DATABASE_URL or the PG* variables) instead of printing them.
    #[arg(long)]
    pub apply: bool,
}

/// `login-etl password`.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// The login role whose password to set (made beforehand: README's setup block).
    #[arg(long, value_name = "NAME")]
    pub role: String,
    /// The Secrets Manager id (name or ARN) of the role's RDS-style secret: read when it exists, made with a generated password when not.
    #[arg(long, value_name = "ID")]
    pub secret_id: String,
    /// The host the secret names (e.g. an RDS Proxy's endpoint); default: the host connected to.
    #[arg(long, value_name = "HOST")]
    pub secret_host: Option<String>,
    /// The port the secret names; default: the port connected to.
    #[arg(long, value_name = "PORT")]
    pub secret_port: Option<u16>,
    /// An IAM principal (its ARN; a role with a path: its full ARN) that may read the secret besides the admin running this, who is named by STS; repeatable. Everybody else is denied by the secret's resource policy.
    #[arg(long, value_name = "ARN")]
    pub reader_arn: Vec<String>,
    /// Adopt a secret that lacks login-etl's resource policy (one made before it, or by someone else): put the policy on it, then a newly generated password into it.
    #[arg(long)]
    pub new_password: bool,
}

/// `login-etl setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The login roles' names are PREFIX_migrate, PREFIX_ingest, ...
    #[arg(long, value_name = "PREFIX", default_value = "login_etl")]
    pub prefix: String,
    /// The tables' schema: public, or one of login-etl's own (made where missing; each role's search_path is set to it); auto: where the tables are, else public unless other roles may create in it (PostgreSQL 14's default, another application's), else one named as the prefix.
    #[arg(long, default_value = "public")]
    pub schema: String,
    /// The profile: masking (masked rows only; four roles) or full (also the vault, erasure and the audit trail; eight roles). A masking database is widened by running setup again with full.
    #[arg(
        long,
        value_enum,
        value_name = "PROFILE",
        env = "LOGIN_ETL_PROFILE",
        default_value = "masking"
    )]
    pub profile: crate::profile::Profile,
    /// Days of logins kept (or all), as the stack's RetentionDays: migrate records it, and no maintain deletes inside it.
    #[arg(long, value_name = "DAYS|all", env = "RETENTION_DAYS")]
    pub retention_days: crate::table::retention::Kept,
    /// password: each role's password in its own secret SECRETS/ROLE (made here, readable by this admin and --reader-arn alone, or read where it exists). iam: each role granted rds_iam, no password anywhere.
    #[arg(long, value_enum, default_value = "password")]
    pub auth: setup::Auth,
    /// The prefix of the roles' secret ids: SECRETS/migrate, SECRETS/ingest, ...
    #[arg(long, value_name = "SECRETS", default_value = "login-etl")]
    pub secrets: String,
    /// The host the secrets name, where the function connects elsewhere than this admin does (an RDS Proxy's endpoint, or the RDS endpoint when the admin connects through a tunnel).
    #[arg(long, value_name = "HOST")]
    pub secret_host: Option<String>,
    /// The port the secrets name; default: the port connected to.
    #[arg(long, value_name = "PORT")]
    pub secret_port: Option<u16>,
    /// ROLE=ARN: an IAM principal that may read that role's secret besides this admin (the function's role for ingest); repeatable.
    #[arg(long, value_name = "ROLE=ARN")]
    pub reader_arn: Vec<String>,
}

/// `login-etl rotate-key`.
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// Only print where the key stands (version, re-key under way, counts) as JSON.
    #[arg(long)]
    pub status: bool,
    /// As the tables' owner (the migrate role): arm the rotation to the keys' newest version, which the rotate role's run then starts (nothing is re-keyed now).
    #[arg(long, conflicts_with = "status")]
    pub arm: bool,
    /// Pages of a partition re-keyed per transaction.
    #[arg(long, default_value_t = crate::privacy::rekey::DEFAULT_CHUNK_PAGES, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_pages: u32,
    /// Chunks re-keyed side by side (1 to 64), each job on a database connection of its own.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// `login-etl reveal`: exactly one of the three.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevealArgs {
    /// A masked_ip token.
    #[arg(long, value_name = "TOKEN")]
    pub ip_token: Option<String>,
    /// A masked_device_id token.
    #[arg(long, value_name = "TOKEN")]
    pub device_token: Option<String>,
    /// Every ip and device id of this user's logins.
    #[arg(long, value_name = "USER_ID")]
    pub user_id: Option<String>,
}

impl RevealArgs {
    /// What to reveal.
    pub fn target(&self) -> crate::privacy::reveal::Target {
        use crate::privacy::reveal::Target;
        match (&self.ip_token, &self.device_token, &self.user_id) {
            (Some(t), _, _) => Target::IpToken(t.clone()),
            (_, Some(t), _) => Target::DeviceToken(t.clone()),
            (_, _, Some(u)) => Target::UserId(u.clone()),
            // clap's group requires exactly one.
            (None, None, None) => unreachable!("clap requires one of the three"),
        }
    }
}

/// `login-etl forget`.
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// The user to erase.
    #[arg(long, value_name = "USER_ID")]
    pub user_id: String,
}

/// `login-etl gen-events` (and `cargo run --example gen_events`).
#[derive(Debug, Clone, Args)]
pub struct GenEventsArgs {
    /// Records in the batch.
    #[arg(long, default_value_t = Options::default().count)]
    pub count: usize,
    /// Every N-th record gets a body that is not a login: rejected (0: none).
    #[arg(long, value_name = "N", default_value_t = Options::default().invalid_every)]
    pub invalid_every: usize,
    /// Every N-th other record is a login with a defect real apps send (a suffixed version, a port on the ip, a null device id...): stored with it (0: none).
    #[arg(long, value_name = "N", default_value_t = Options::default().defective_every)]
    pub defective_every: usize,
    /// Records from a FIFO queue, in message groups.
    #[arg(long)]
    pub fifo: bool,
    /// Seed of the generator (same seed, same batch).
    #[arg(long, default_value_t = Options::default().seed)]
    pub seed: u64,
}

impl From<&GenEventsArgs> for Options {
    fn from(a: &GenEventsArgs) -> Self {
        Options {
            count: a.count,
            invalid_every: a.invalid_every,
            defective_every: a.defective_every,
            fifo: a.fifo,
            seed: a.seed,
            ..Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse_and_mistakes_are_usage_errors() {
        let cli =
            Cli::try_parse_from(["login-etl", "grants", "--role", "erase", "--to", "x"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Grants(GrantsArgs {
                role: Role::Erase,
                ..
            }))
        ));
        assert!(
            Cli::try_parse_from(["login-etl"])
                .unwrap()
                .command
                .is_none()
        );
        for bad in [
            vec!["login-etl", "grants", "--role", "admin", "--to", "x"],
            vec!["login-etl", "reveal"],
            vec!["login-etl", "reveal", "--ip-token", "a", "--user-id", "b"],
            vec!["login-etl", "forget"],
            vec!["login-etl", "maintain", "--retention-days", "0"],
            vec!["login-etl", "migrate", "--partition-interval", "hour"],
            vec!["login-etl", "nonsense"],
            vec!["login-etl", "gen-events", "--count", "many"],
            vec!["login-etl", "poll"],
            vec![
                "login-etl",
                "poll",
                "--queue-url",
                "u",
                "--concurrency",
                "-1",
            ],
            vec![
                "login-etl",
                "poll",
                "--queue-url",
                "u",
                "--health-addr",
                "nowhere",
            ],
        ] {
            let e = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(e.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
        let help = Cli::try_parse_from(["login-etl", "--help"]).unwrap_err();
        assert_eq!(help.exit_code(), 0);
        let g = Cli::try_parse_from(["login-etl", "gen-events", "--count", "7", "--fifo"]).unwrap();
        let Some(Command::GenEvents(args)) = g.command else {
            panic!("gen-events")
        };
        let o = Options::from(&args);
        assert_eq!(
            (o.count, o.fifo, o.seed),
            (7, true, Options::default().seed)
        );
    }

    fn poll(args: &[&str]) -> PollArgs {
        let mut argv = vec!["login-etl", "poll", "--queue-url", "http://127.0.0.1:9/q"];
        argv.extend(args);
        match Cli::try_parse_from(argv).expect("valid arguments").command {
            Some(Command::Poll(args)) => args,
            other => panic!("not poll: {other:?}"),
        }
    }

    #[test]
    fn poll_runs_on_the_threads_given_or_on_every_cpu_it_may_use() {
        assert_eq!(poll(&["--threads", "3"]).worker_threads(), 3);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(poll(&[]).worker_threads(), cpus);
        for bad in ["0", "257", "x"] {
            let argv = ["login-etl", "poll", "--queue-url", "q", "--threads", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "--threads {bad}");
        }
    }
}
