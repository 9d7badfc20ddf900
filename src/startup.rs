//! Cold start: configuration to a ready [`BatchHandler`]. Runs once per
//! execution environment; everything here is reused by warm invocations.

use crate::privacy::dead_letter::rebuilt::RebuiltVerifier;
use tracing::info;

use crate::config::{Config, KeySource};
use crate::database::connector::{Connector, SetupError, needs_aws};
use crate::database::settings::DbConfig;
use crate::emf::emf_level;
use crate::error::{ConfigError, DbError, SecretError};
use crate::ingest::backoff::Visibility;
use crate::ingest::dlq::DeadLetterQueue;
use crate::ingest::handler::BatchHandler;
use crate::ingest::metrics::Metrics;
use crate::ingest::sink::PgSink;
use crate::ingest::trace::Tracer;
use crate::privacy::dead_letter::Sealer;
use crate::privacy::masking::{KeyVersions, Masker, UserKeys};
use crate::privacy::vault::{DataKey, VaultError};
use crate::secrets::Secrets;
use crate::table::schema::{self, MigrateOptions};

/// Why the cold start failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The schema could not be applied (`RUN_MIGRATIONS=true`).
    #[error(transparent)]
    Database(#[from] DbError),
    /// No data key for the PII vault (`VAULT_KMS_KEY_ID`).
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<SetupError> for InitError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Config(e) => InitError::Config(e),
            SetupError::Secret(e) => InitError::Secret(e),
        }
    }
}

/// Builds the handler: resolves the masking key, the database settings and
/// the vault's data key (from Secrets Manager and KMS when configured so, all
/// at once, with one AWS configuration), and applies the schema when
/// `RUN_MIGRATIONS=true`.
pub async fn build(config: &Config) -> Result<BatchHandler, InitError> {
    build_with(config, None).await
}

/// [`build`] for `login-etl poll`: the backoff first releases the messages
/// it holds from the consumer's heartbeat `leases`.
pub async fn build_with(
    config: &Config,
    leases: Option<std::sync::Arc<crate::ingest::backoff::Leases>>,
) -> Result<BatchHandler, InitError> {
    let needs_secrets = matches!(config.masking_key, KeySource::Secret(_))
        || matches!(config.erasure_key, Some(KeySource::Secret(_)));
    let aws = if needs_secrets
        || needs_aws(&config.db)
        || config.vault_kms_key_id.is_some()
        || config.dlq_kms_key_id.is_some()
        || config.dlq_url.is_some()
        || config.backoff.is_some()
    {
        Some(crate::secrets::sdk_config().await)
    } else {
        None
    };
    let secrets = aws.as_ref().filter(|_| needs_secrets).map(Secrets::new);
    let kms = aws.as_ref().map(aws_sdk_kms::Client::new);
    let (masker, sink, keys) = tokio::join!(
        masker(
            &config.masking_key,
            config.erasure_key.as_ref(),
            secrets.as_ref()
        ),
        sink(&config.db, aws.as_ref()),
        data_keys(config, kms.as_ref())
    );
    let (masker, mut sink, (data_key, sealer)) = (masker?, sink?, keys?);
    if config.vault_kms_key_id.is_some() {
        sink = sink.with_vault_tables();
    }
    if config.run_migrations {
        let options = MigrateOptions {
            cold_start: true,
            premake_days: crate::table::maintain::DEFAULT_PREMAKE_DAYS,
            profile: config.profile,
            ..MigrateOptions::default()
        };
        let (applied, client) = schema::migrate_connecting(sink.connector_mut(), &options).await?;
        sink.adopt(client);
        info!(target = %sink.target(), applied, "schema checked (applied only when not current)");
    }
    let metrics = Metrics::new(
        &config.metrics_namespace,
        &config.service_name,
        &config.function_name,
    )
    .with_level(emf_level(config.log_level.as_deref()));
    let mut handler = BatchHandler::new(masker, sink)
        .with_metrics(metrics)
        .with_tracer(crate::telemetry::tracer().map_or_else(Tracer::default, Tracer::new));
    if let Some(secrets) = &secrets {
        // A rotation that begins after this cold start moves the database
        // to a version this environment has never read: read the keys again.
        handler = handler.with_key_reload(key_reload(config, secrets));
    }
    if let Some(data_key) = data_key {
        info!(
            data_key = data_key.id(),
            "PII vault on: a data key from KMS, kept in memory only"
        );
        handler = handler.with_vault(data_key);
    }
    // Which release runs, in every environment's first lines (CHANGELOG.md).
    info!(version = env!("CARGO_PKG_VERSION"), "handler ready");
    let sqs = aws.as_ref().map(aws_sdk_sqs::Client::new);
    if let (Some(url), Some(sqs)) = (&config.dlq_url, &sqs) {
        handler = handler.with_dead_letter_queue(dead_letter_queue(sqs, url, sealer));
    }
    if let (Some(key), Some(kms)) = (&config.dlq_kms_key_id, &kms) {
        handler = handler.with_rebuilt_verifier(RebuiltVerifier::new(kms.clone(), key.clone()));
    }
    if let (Some(schedule), Some(sqs)) = (config.backoff, &sqs) {
        let mut visibility = Visibility::new(sqs.clone(), config.source_queue_url.clone());
        if let Some(leases) = leases {
            visibility = visibility.with_leases(leases);
        }
        handler = handler.with_backoff(schedule, visibility);
    }
    handler = handler
        .with_refused_max_receives(config.refused_max_receives)
        .with_contract(config.contract.clone())
        .with_dlq_operator(config.dlq_operator_role_id.clone());
    Ok(handler)
}

/// The cold start's data keys from KMS: the vault's (`VAULT_KMS_KEY_ID`),
/// and (with a DLQ) the one the dead-letter copies' originals are sealed
/// under, in a context of their own, for the DLQ operator alone
/// (`DLQ_KMS_KEY_ID`, or the vault's key where a deployment from before it
/// gives none).
async fn data_keys(
    config: &Config,
    kms: Option<&aws_sdk_kms::Client>,
) -> Result<(Option<DataKey>, Option<Sealer>), InitError> {
    let Some(kms) = kms else {
        return Ok((None, None));
    };
    let vault = async {
        match &config.vault_kms_key_id {
            Some(key) => DataKey::generate(kms, key).await.map(Some),
            None => Ok(None),
        }
    };
    let sealing_key = config
        .dlq_kms_key_id
        .as_ref()
        .or(config.vault_kms_key_id.as_ref());
    let sealer = async {
        match (&config.dlq_url, sealing_key) {
            (Some(_), Some(key)) => Sealer::generate(kms, key).await.map(Some),
            _ => Ok(None),
        }
    };
    let (data_key, sealer) = tokio::join!(vault, sealer);
    Ok((data_key?, sealer?))
}

/// The dead-letter queue at `url`, sealing each copy's original with
/// `sealer` (the vault's KMS key, the DLQ's context) when there is one.
fn dead_letter_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    sealer: Option<Sealer>,
) -> DeadLetterQueue {
    let dlq = DeadLetterQueue::new(sqs.clone(), url.to_owned());
    match sealer {
        Some(sealer) => dlq.with_sealer(sealer),
        None => {
            info!(
                "dead-letter copies keep a masked body only: without DLQ_KMS_KEY_ID the original of a rejected message is not kept, and login-etl dlq-redrive can only rebuild what the masked copy shows"
            );
            dlq
        }
    }
}

/// Reads the masking and erasure keys of `config` again from `secrets`.
fn key_reload(config: &Config, secrets: &Secrets) -> crate::privacy::keys::KeyReload {
    let (masking, erasure, secrets) = (
        config.masking_key.clone(),
        config.erasure_key.clone(),
        secrets.clone(),
    );
    Box::new(move || {
        let (masking, erasure, secrets) = (masking.clone(), erasure.clone(), secrets.clone());
        Box::pin(async move {
            crate::startup::masker(&masking, erasure.as_ref(), Some(&secrets))
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// Applies the schema of `profile` to the configured database (a full
/// one stays full) and returns its target; needs only the database
/// settings.
pub async fn migrate(db: &DbConfig, profile: crate::profile::Profile) -> Result<String, InitError> {
    migrate_with(
        db,
        &MigrateOptions {
            premake_days: crate::table::maintain::DEFAULT_PREMAKE_DAYS,
            profile: Some(profile),
            ..MigrateOptions::default()
        },
    )
    .await
}

/// [`migrate`] with the options `login-etl migrate` takes (the partition
/// interval of a new table, how many days to make ahead).
pub async fn migrate_with(db: &DbConfig, options: &MigrateOptions) -> Result<String, InitError> {
    let mut sink = sink(db, aws_for(db).await.as_ref()).await?;
    let (applied, _) = schema::migrate_connecting(sink.connector_mut(), options).await?;
    let target = sink.target().to_owned();
    Ok(if applied {
        format!("{target} (applied)")
    } else {
        format!("{target} (already current, nothing locked)")
    })
}

/// One `login-etl maintain` run against the configured database (the
/// maintain role's settings; no masking key needed).
pub async fn maintain(
    db: &DbConfig,
    options: &crate::table::maintain::MaintainOptions,
) -> Result<crate::table::maintain::MaintainReport, InitError> {
    let client = operator_connection(db).await?;
    Ok(crate::table::maintain::run(&client, options).await?)
}

/// The scheduled maintenance function's settings, from its environment:
/// the maintain role's database, `PREMAKE_DAYS` and `RETENTION_DAYS`.
pub fn maintenance_from_env()
-> Result<(DbConfig, crate::table::maintain::MaintainOptions), ConfigError> {
    Ok((
        DbConfig::from_env()?,
        crate::table::maintain::MaintainOptions::from_env()?,
    ))
}

/// A maintain run's EMF document, as the maintenance function prints it
/// (its level and names from the environment).
pub fn maintenance_document(report: &crate::table::maintain::MaintainReport) -> serde_json::Value {
    crate::table::maintain::emf_from_env(report)
}

/// A connection to the configured database for an operator command
/// (`login-etl reveal`, `forget`), opened as the function opens its own.
pub async fn operator_connection(db: &DbConfig) -> Result<tokio_postgres::Client, InitError> {
    let mut connector = Connector::from_config(db, aws_for(db).await.as_ref()).await?;
    let limit = connector.connect_timeout();
    Ok(connector.open(limit).await?)
}

/// The AWS configuration the database settings need, if any (a secret to
/// read, IAM tokens to sign).
async fn aws_for(db: &DbConfig) -> Option<aws_config::SdkConfig> {
    if needs_aws(db) {
        Some(crate::secrets::sdk_config().await)
    } else {
        None
    }
}

/// [`operator_connection`] for `command`, a command of the full profile
/// only (see `crate::table::schema::require_full`).
pub async fn full_profile_connection(
    db: &DbConfig,
    command: &'static str,
) -> Result<tokio_postgres::Client, InitError> {
    let client = operator_connection(db).await?;
    crate::table::schema::require_full(&client, command).await?;
    Ok(client)
}

/// Reads every version of a key from its source; `var` names the variable
/// (MASKING_KEY, ERASURE_KEY) in errors.
pub async fn key_versions(
    source: &KeySource,
    var: &str,
    secrets: Option<&Secrets>,
) -> Result<KeyVersions, InitError> {
    Ok(match source {
        KeySource::Hex(text) => KeyVersions::parse(text, var)?,
        KeySource::Secret(id) => {
            let secrets =
                secrets.expect("a Secrets Manager client exists when a secret is configured");
            KeyVersions::parse(
                &secrets.string(id).await?,
                &format!("secret {id} ({var}_SECRET_ID)"),
            )?
        }
    })
}

/// The masker of every masking-key version, with user keys under the
/// erasure key (or derived from the masking key without one).
pub async fn masker(
    masking: &KeySource,
    erasure: Option<&KeySource>,
    secrets: Option<&Secrets>,
) -> Result<Masker, InitError> {
    let masking = key_versions(masking, "MASKING_KEY", secrets);
    let erasure = async {
        match erasure {
            Some(source) => key_versions(source, "ERASURE_KEY", secrets).await.map(Some),
            None => Ok(None),
        }
    };
    let (masking, erasure) = tokio::join!(masking, erasure);
    Ok(Masker::versions(&masking?, erasure?.as_ref())?)
}

/// The user keys `login-etl forget` computes: under the erasure key
/// (ERASURE_KEY_SECRET_ID), which cannot compute an ip or device token; or,
/// on a deployment without one, derived from the masking key.
pub async fn user_keys(
    erasure: Option<&KeySource>,
    masking: Option<&KeySource>,
    secrets: Option<&Secrets>,
) -> Result<UserKeys, InitError> {
    match (erasure, masking) {
        (Some(source), _) => Ok(UserKeys::new(
            &key_versions(source, "ERASURE_KEY", secrets).await?,
        )),
        (None, Some(source)) => Ok(UserKeys::derived(
            &key_versions(source, "MASKING_KEY", secrets).await?,
        )),
        (None, None) => Err(ConfigError::Missing {
            var: "ERASURE_KEY_SECRET_ID",
            hint: "set it to the Secrets Manager id of the erasure key (the stack's ErasureKeySecretArn); a deployment without one sets MASKING_KEY_SECRET_ID instead",
        }
        .into()),
    }
}

/// A sink for the configured database (see [`Connector::from_config`]:
/// with `aws`, the secrets the settings name are read, and IAM tokens signed).
pub async fn sink(db: &DbConfig, aws: Option<&aws_config::SdkConfig>) -> Result<PgSink, InitError> {
    let connector = Connector::from_config(db, aws).await?;
    Ok(PgSink::new(connector, db.statement_timeout))
}
