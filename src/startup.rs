//! Cold start: configuration to a ready [`BatchHandler`]. Runs once per
//! execution environment; everything here is reused by warm invocations.

use std::str::FromStr;

use tracing::info;

use crate::config::{Config, DbConfig, DbSource, KeySource, SslMode};
use crate::error::{ConfigError, SinkError};
use crate::handler::BatchHandler;
use crate::masking::{Masker, MaskingKey};
use crate::sink::PgSink;

/// Why the cold start failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The schema could not be applied (`RUN_MIGRATIONS=true`).
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Builds the handler: resolves the masking key and the database settings,
/// and applies the schema when `RUN_MIGRATIONS=true`.
pub async fn build(config: &Config) -> Result<BatchHandler, InitError> {
    let key = masking_key(&config.masking_key)?;
    let mut sink = sink(&config.db)?;
    if config.run_migrations {
        sink.migrate().await?;
        info!(target = %sink.target(), "schema applied");
    }
    Ok(BatchHandler::new(Masker::new(&key), sink))
}

/// Resolves the masking key from its source.
pub fn masking_key(source: &KeySource) -> Result<MaskingKey, ConfigError> {
    match source {
        KeySource::Hex(hex) => MaskingKey::from_hex(hex, "MASKING_KEY"),
        KeySource::Secret(_) => Err(ConfigError::Unsupported {
            var: "MASKING_KEY_SECRET_ID",
            what: "reading the key from Secrets Manager",
            hint: "set MASKING_KEY instead",
        }),
    }
}

/// A sink for the configured database.
pub fn sink(db: &DbConfig) -> Result<PgSink, ConfigError> {
    if db.ssl_mode != SslMode::Disable {
        return Err(ConfigError::Unsupported {
            var: "DB_SSLMODE",
            what: "TLS to PostgreSQL",
            hint: "set DB_SSLMODE=disable",
        });
    }
    let pg = match &db.source {
        DbSource::Url(url) => tokio_postgres::Config::from_str(url).map_err(|_| ConfigError::Invalid {
            var: "DATABASE_URL",
            reason: "not a PostgreSQL connection string; expected postgres://user[:password]@host[:port]/dbname".into(),
        })?,
        DbSource::Secret(_) => {
            return Err(ConfigError::Unsupported {
                var: "DB_SECRET_ID",
                what: "reading the database secret from Secrets Manager",
                hint: "set DATABASE_URL instead",
            });
        }
    };
    Ok(PgSink::new(pg, db))
}
