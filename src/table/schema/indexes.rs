//! The vault's indexes a large vault gets online, outside the migration's
//! transaction (`CREATE INDEX CONCURRENTLY` cannot run inside one).

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use super::{MigrateOptions, failed};
use crate::error::DbError;

/// The vault's indexes a large vault gets online: of old-form entries
/// (`user_logins_pii_vault_form1`, which rotate-key's switch probes
/// instead of scanning the vault) and by `last_seen`
/// (`user_logins_pii_vault_last_seen`, through which maintain's purge
/// finds what retention removes).
const VAULT_INDEXES: [(&str, &str, &str); 2] = [
    (
        "user_logins_pii_vault_form1",
        "(kind) WHERE aad_version = 1",
        "of old-form entries",
    ),
    (
        "user_logins_pii_vault_last_seen",
        "(last_seen)",
        "by last_seen",
    ),
];

/// Builds [`VAULT_INDEXES`] where one is missing or a build was left
/// invalid: `CREATE INDEX CONCURRENTLY`, which no transaction may hold and
/// no write waits for. An empty vault gets them from the migrations
/// already. Not at a cold start (a vault of millions of entries takes
/// longer than an init phase). True when it built one.
pub(super) async fn vault_indexes(
    client: &Client,
    options: &MigrateOptions,
) -> Result<bool, DbError> {
    if options.cold_start {
        return Ok(false);
    }
    let mut built = false;
    for (name, definition, what) in VAULT_INDEXES {
        let valid: Option<bool> = client
            .query_typed_one(
                "SELECT (SELECT indisvalid AND indisready FROM pg_index \
                 WHERE indexrelid = to_regclass($1))",
                &[(&name, Type::TEXT)],
            )
            .await
            .map_err(failed("looking for the vault's indexes"))?
            .get(0);
        if valid == Some(true) {
            continue;
        }
        info!(
            index = name,
            "building the vault's index {what} CONCURRENTLY (ingest keeps writing)"
        );
        if valid == Some(false) {
            client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
                .await
                .map_err(failed("dropping an invalid index of the vault"))?;
        }
        client
            .batch_execute(&format!(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON user_logins_pii_vault {definition}"
            ))
            .await
            .map_err(failed("building an index of the vault"))?;
        built = true;
    }
    Ok(built)
}
