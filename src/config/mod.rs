//! Typed configuration read from the environment once per cold start.
//!
//! Every variable is documented in the configuration table of docs/configuration.md. A missing
//! or malformed setting is a [`ConfigError`] naming the variable; values are
//! never echoed, since several are secrets.

pub mod backoff;

use crate::database::settings::DbConfig;
use crate::error::ConfigError;

/// Where a key comes from (the masking key, the erasure key). Either holds
/// one hex key or a document of versions (see `crate::privacy::masking::KeyVersions`).
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `MASKING_KEY` / `ERASURE_KEY`: the key itself (local use only).
    Hex(String),
    /// `MASKING_KEY_SECRET_ID` / `ERASURE_KEY_SECRET_ID`: a Secrets Manager
    /// id whose SecretString is the key.
    Secret(String),
}

/// The source named by the pair of variables `direct` (the key itself) and
/// `secret` (a Secrets Manager id), if either is set.
pub fn key_source(
    get: &dyn Fn(&str) -> Option<String>,
    direct: &'static str,
    secret: &'static str,
) -> Result<Option<KeySource>, ConfigError> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    match (get(direct), get(secret)) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            first: direct,
            second: secret,
        }),
        (Some(hex), None) => Ok(Some(KeySource::Hex(hex))),
        (None, Some(id)) => Ok(Some(KeySource::Secret(id))),
        (None, None) => Ok(None),
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Hex(_) => f.write_str("Hex(<redacted>)"),
            KeySource::Secret(id) => write!(f, "Secret({id})"),
        }
    }
}

/// Everything the function needs at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// PostgreSQL settings.
    pub db: DbConfig,
    /// The masking key's source.
    pub masking_key: KeySource,
    /// The erasure key's source (`ERASURE_KEY_SECRET_ID`); unset: user keys
    /// are derived from the masking key (deployments from before it).
    pub erasure_key: Option<KeySource>,
    /// `RUN_MIGRATIONS=true`: create/upgrade the schema at cold start.
    pub run_migrations: bool,
    /// `LOGIN_ETL_PROFILE` (`masking` or `full`): the profile a cold start's
    /// migration installs; unset keeps the database's (full for a new
    /// one). See `crate::profile::Profile`.
    pub profile: Option<crate::profile::Profile>,
    /// `DLQ_URL`: the source queue's dead-letter queue; rejected records are
    /// sent there directly. Unset: they are reported and SQS redrives them.
    pub dlq_url: Option<String>,
    /// `POWERTOOLS_METRICS_NAMESPACE`, default `LoginEtl`.
    pub metrics_namespace: String,
    /// `POWERTOOLS_SERVICE_NAME` (the `service` dimension), default `login-etl`.
    pub service_name: String,
    /// `AWS_LAMBDA_FUNCTION_NAME` (the `function_name` dimension of `ColdStart`).
    pub function_name: String,
    /// `AWS_LAMBDA_LOG_LEVEL` (Lambda sets it from `ApplicationLogLevel`),
    /// else `RUST_LOG`: the log filter, which the EMF documents must pass.
    pub log_level: Option<String>,
    /// `VAULT_KMS_KEY_ID`: the KMS key for the PII vault's data keys; unset:
    /// no vault.
    pub vault_kms_key_id: Option<String>,
    /// `DLQ_KMS_KEY_ID`: the KMS key the originals of dead-letter copies are
    /// sealed under, for the DLQ operator alone (every profile: the
    /// template's `DlqKey`); unset, the vault's key when there is one, else
    /// a copy keeps no original.
    pub dlq_kms_key_id: Option<String>,
    /// The per-message backoff after an infrastructure failure
    /// (`BACKOFF_BASE_SECONDS`, `BACKOFF_MAX_SECONDS`; see
    /// `crate::config::backoff`). On by default under Lambda
    /// (`AWS_LAMBDA_RUNTIME_API` is set) or when either variable is set;
    /// `BACKOFF_BASE_SECONDS=0` turns it off. Off, a failed write fails the
    /// invocation and SQS redelivers the batch after its visibility timeout.
    pub backoff: Option<backoff::Schedule>,
    /// `SOURCE_QUEUE_URL`: the login queue (the template sets it); unset, it
    /// is found from the records' `eventSourceARN` with `GetQueueUrl`.
    pub source_queue_url: Option<String>,
    /// `REFUSED_MAX_RECEIVES` (default 3; 0: never): receives after which a
    /// row the database keeps refusing is sent to the DLQ (`DLQ_URL`) with
    /// `rejection_code` `refused.<SQLSTATE>`.
    pub refused_max_receives: u32,
    /// The contract: `CONTRACT` (`lenient`, the default: a login with a
    /// defect is stored with it; `strict`: rejected), `UNKNOWN_FIELDS`
    /// (`ignore`, the default, or `reject`) and `EXTRA_FIELDS` (declared
    /// non-PII fields kept in `extra`), see [`crate::contract::policy`].
    pub contract: crate::contract::Contract,
    /// `DLQ_OPERATOR_ROLE_ID`: the DLQ operator role's id (`AROA…`; the
    /// template's `DlqOperatorRole.RoleId`): what it sends to the queue is
    /// refused unless `dlq-redrive` signed or sealed it. Unset: no check.
    pub dlq_operator_role_id: Option<String>,
}

/// Default `REFUSED_MAX_RECEIVES`: a constraint or trigger that refuses a row
/// three times running is not a passing lock or a deploy in progress.
pub const DEFAULT_REFUSED_MAX_RECEIVES: u32 = 3;

/// The variables that carry a secret in plain text, and the variable that
/// names a Secrets Manager secret instead: refused in a deployed function.
pub const PLAIN_SECRETS: [(&str, &str); 4] = [
    ("MASKING_KEY", "MASKING_KEY_SECRET_ID"),
    ("ERASURE_KEY", "ERASURE_KEY_SECRET_ID"),
    ("DATABASE_URL", "DB_SECRET_ID"),
    ("PGPASSWORD", "DB_SECRET_ID"),
];

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The configuration of `login-etl poll`: as [`from_env`](Self::from_env),
    /// with the per-message backoff on by default (as in Lambda; off with
    /// `BACKOFF_BASE_SECONDS=0`).
    pub fn for_consumer_from_env() -> Result<Self, ConfigError> {
        Self::read(|name| std::env::var(name).ok(), true)
    }

    /// Reads the configuration through `get` (the environment, or a map in tests).
    /// Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let set = |name: &str| get(name).is_some_and(|v| !v.trim().is_empty());
        // Lambda's runtimes set LAMBDA_TASK_ROOT (cargo lambda watch does not):
        // there, a function's environment is one API call away from anyone
        // allowed lambda:GetFunctionConfiguration.
        if set("LAMBDA_TASK_ROOT") {
            for (var, instead) in PLAIN_SECRETS {
                if set(var) {
                    return Err(ConfigError::SecretInLambdaEnvironment { var, instead });
                }
            }
        }
        Self::read(&get, set("AWS_LAMBDA_RUNTIME_API"))
    }

    /// `backoff_by_default`: the backoff is on unless `BACKOFF_BASE_SECONDS=0`
    /// (Lambda, the consumer); otherwise only when a backoff setting is given.
    fn read(
        get: impl Fn(&str) -> Option<String>,
        backoff_by_default: bool,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        Ok(Self {
            db: DbConfig::from_lookup(&get)?,
            masking_key: key_source(&get, "MASKING_KEY", "MASKING_KEY_SECRET_ID")?.ok_or(
                ConfigError::Missing {
                    var: "MASKING_KEY_SECRET_ID",
                    hint: "set it to the Secrets Manager id of the hex masking key (or MASKING_KEY to a hex key, for local use); the function never writes unmasked data",
                },
            )?,
            erasure_key: key_source(&get, "ERASURE_KEY", "ERASURE_KEY_SECRET_ID")?,
            run_migrations: parse_bool(&get, "RUN_MIGRATIONS")?.unwrap_or(false),
            profile: match get("LOGIN_ETL_PROFILE").filter(|v| !v.trim().is_empty()) {
                None => None,
                Some(v) => Some(crate::profile::Profile::parse(&v).ok_or(ConfigError::Invalid {
                    var: "LOGIN_ETL_PROFILE",
                    reason: "expected masking or full".into(),
                })?),
            },
            dlq_url: match get("DLQ_URL") {
                Some(url) if !url.starts_with("http://") && !url.starts_with("https://") => {
                    return Err(ConfigError::Invalid {
                        var: "DLQ_URL",
                        reason: "expected the queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), not its name or ARN".into(),
                    });
                }
                url => url,
            },
            metrics_namespace: get("POWERTOOLS_METRICS_NAMESPACE")
                .unwrap_or_else(|| crate::emf::DEFAULT_NAMESPACE.into()),
            service_name: get("POWERTOOLS_SERVICE_NAME")
                .unwrap_or_else(|| crate::emf::DEFAULT_SERVICE.into()),
            function_name: get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "login-etl".into()),
            log_level: get("AWS_LAMBDA_LOG_LEVEL").or_else(|| get("RUST_LOG")),
            vault_kms_key_id: get("VAULT_KMS_KEY_ID"),
            dlq_kms_key_id: get("DLQ_KMS_KEY_ID"),
            backoff: backoff(&get, backoff_by_default)?,
            source_queue_url: get("SOURCE_QUEUE_URL"),
            refused_max_receives: parse_count(&get, "REFUSED_MAX_RECEIVES", 1_000)?
                .unwrap_or(DEFAULT_REFUSED_MAX_RECEIVES),
            contract: contract(&get)?,
            dlq_operator_role_id: match get("DLQ_OPERATOR_ROLE_ID") {
                None => None,
                Some(id) if id.len() <= 128 && id.starts_with("AROA") && id.bytes().all(|b| b.is_ascii_alphanumeric()) => Some(id),
                Some(_) => {
                    return Err(ConfigError::Invalid {
                        var: "DLQ_OPERATOR_ROLE_ID",
                        reason: "expected the DLQ operator role's id (AROA followed by letters and digits: aws iam get-role --query Role.RoleId), not its name or ARN".into(),
                    });
                }
            },
        })
    }
}

/// The backoff schedule the function and `poll` would run with, from this
/// process's environment (on unless `BACKOFF_BASE_SECONDS=0`): what
/// `login-etl doctor --queue-url` holds the queue's redrive against.
pub fn backoff_from_env() -> Result<Option<backoff::Schedule>, ConfigError> {
    backoff(&|k| std::env::var(k).ok(), true)
}

/// The backoff schedule from `BACKOFF_BASE_SECONDS` and `BACKOFF_MAX_SECONDS`.
fn backoff(
    get: &impl Fn(&str) -> Option<String>,
    by_default: bool,
) -> Result<Option<backoff::Schedule>, ConfigError> {
    use backoff::{DEFAULT_BASE_SECONDS, DEFAULT_MAX_SECONDS, SQS_MAX_VISIBILITY_SECONDS};
    let base = parse_count(get, "BACKOFF_BASE_SECONDS", SQS_MAX_VISIBILITY_SECONDS)?;
    let max = parse_count(get, "BACKOFF_MAX_SECONDS", SQS_MAX_VISIBILITY_SECONDS)?;
    if base == Some(0) || (!by_default && base.is_none() && max.is_none()) {
        return Ok(None);
    }
    let base = base.unwrap_or(DEFAULT_BASE_SECONDS);
    // A cap below the first step is raised to it rather than refused: a
    // setting that stops every cold start would send the queue to the DLQ.
    let max = max.unwrap_or(DEFAULT_MAX_SECONDS).max(base);
    Ok(Some(backoff::Schedule { base, max }))
}

/// The contract: what a login with a defect gets (`CONTRACT`) and what
/// becomes of fields outside it (`UNKNOWN_FIELDS`, `EXTRA_FIELDS`).
fn contract(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<crate::contract::Contract, ConfigError> {
    use crate::contract::{Contract, Mode, UnknownFields};
    let invalid = |var: &'static str| {
        move |e: crate::contract::PolicyError| ConfigError::Invalid {
            var,
            reason: e.to_string(),
        }
    };
    let unknown = match get("UNKNOWN_FIELDS") {
        Some(text) => UnknownFields::parse(&text).map_err(invalid("UNKNOWN_FIELDS"))?,
        None => UnknownFields::Ignore,
    };
    let mode = match get("CONTRACT") {
        Some(text) => Mode::parse(&text).map_err(invalid("CONTRACT"))?,
        None => Mode::Lenient,
    };
    Ok(
        Contract::new(unknown, &get("EXTRA_FIELDS").unwrap_or_default())
            .map_err(invalid("EXTRA_FIELDS"))?
            .with_mode(mode),
    )
}

/// A whole number in `0..=limit`, or unset.
fn parse_count(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    limit: u32,
) -> Result<Option<u32>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n <= limit => Ok(Some(n)),
            _ => Err(ConfigError::Invalid {
                var,
                reason: format!("expected a whole number from 0 to {limit}"),
            }),
        },
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(_) => Err(ConfigError::Invalid {
            var,
            reason: "expected true or false".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
