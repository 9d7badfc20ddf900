//! The `user_logins` schema, embedded in the binary: how it is applied, and
//! the guard that refuses to write into a table that could double rows.

use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::Client;

use crate::error::SinkError;
use crate::error::describe;

/// The idempotent migration (creates or upgrades `user_logins`, creates the
/// PII vault's tables).
pub const MIGRATION_SQL: &str = concat!(
    include_str!("../migrations/0001_user_logins.sql"),
    "\n",
    include_str!("../migrations/0002_pii_vault.sql"),
    "\n",
    include_str!("../migrations/0003_pii_audit_and_erasure.sql")
);

/// Advisory lock key ("LOGINETL" in ASCII): many cold starts at once apply
/// the schema one after the other instead of racing on `CREATE INDEX`.
pub const MIGRATION_LOCK_KEY: i64 = 0x4C4F_4749_4E45_544C;

/// What the catalog says about `user_logins`, read without taking any lock
/// on the table, and the xid floor (as text; the sink parses it, see
/// `sink::tx::XidFloor`).
const INSPECT_SQL: &str = "SELECT \
    to_regclass('user_logins') IS NOT NULL, \
    (SELECT count(*) = 2 FROM pg_attribute WHERE attrelid = to_regclass('user_logins') \
        AND attname IN ('message_id', 'app_version_text') AND NOT attisdropped), \
    EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
        ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
        WHERE i.indrelid = to_regclass('user_logins') AND a.attname = 'message_id' \
        AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL \
        AND i.indisvalid AND i.indisready), \
    pg_snapshot_xmax(pg_current_snapshot())::text, \
    to_regclass('user_logins_pii_vault') IS NOT NULL AND to_regclass('user_logins_vault_keys') IS NOT NULL, \
    to_regclass('user_logins_pii_audit') IS NOT NULL AND to_regclass('user_logins_erased') IS NOT NULL \
        AND to_regprocedure('login_etl_refuse_erased(bigint)') IS NOT NULL";

/// The schema as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// `user_logins` exists.
    pub table: bool,
    /// It has `message_id` and `app_version_text`.
    pub columns: bool,
    /// It has a valid, ready, unique, non-partial index on `message_id`
    /// alone: what `ON CONFLICT (message_id)` needs to never double a row.
    pub unique_index: bool,
    /// The first transaction id not yet assigned (an `xid8` as text).
    pub floor: Option<String>,
    /// The PII vault's tables exist.
    pub vault: bool,
    /// The audit table, the erasure list and its check exist.
    pub erasure: bool,
}

impl SchemaState {
    /// Nothing for a migration to do.
    pub fn is_current(&self) -> bool {
        self.table && self.columns && self.unique_index && self.vault && self.erasure
    }
}

/// The oldest PostgreSQL release login-etl runs on: the xid floor and the
/// lost-reply recount use `pg_current_snapshot()` and `xid8` (13 and later).
pub const MIN_SERVER_VERSION_NUM: i32 = 130_000;

const VERSION_SQL: &str =
    "SELECT current_setting('server_version_num')::int4, current_setting('server_version')";

/// A non-retryable error unless `version_num` (`server_version_num`) is at
/// least [`MIN_SERVER_VERSION_NUM`]; `version` is what the error shows.
pub fn require_version(version_num: i32, version: &str) -> Result<(), SinkError> {
    if version_num >= MIN_SERVER_VERSION_NUM {
        return Ok(());
    }
    Err(SinkError::Fatal {
        op: "working with this server",
        cause: format!("the server runs PostgreSQL {version}"),
        hint: "; login-etl needs PostgreSQL 13 or later (it uses pg_current_snapshot and xid8): upgrade the server".into(),
    })
}

/// The server's `server_version_num` and `server_version`.
pub async fn server_version(client: &Client) -> Result<(i32, String), tokio_postgres::Error> {
    let row = client.query_typed_one(VERSION_SQL, &[]).await?;
    Ok((row.get(0), row.get(1)))
}

/// Reads [`SchemaState`] (one unnamed statement, no table lock).
pub async fn inspect(client: &Client) -> Result<SchemaState, tokio_postgres::Error> {
    let row = client.query_typed_one(INSPECT_SQL, &[]).await?;
    Ok(SchemaState {
        table: row.get(0),
        columns: row.get(1),
        unique_index: row.get(2),
        floor: row.get(3),
        vault: row.get(4),
        erasure: row.get(5),
    })
}

/// The schema guard, run on the sink's first connection: an error that
/// names the fix unless `user_logins` is complete. Returns the xid floor.
pub async fn check(
    client: &Client,
    limit: Duration,
    vault: bool,
) -> Result<Option<String>, SinkError> {
    // Both in one round trip; on a server older than 13 the inspection
    // fails (no pg_current_snapshot), and the version says why.
    let answers = timeout(limit, async {
        tokio::join!(server_version(client), inspect(client))
    })
    .await;
    if let Ok((Ok((num, version)), _)) = &answers {
        require_version(*num, version)?;
    }
    let state = match answers.map(|(_, state)| state) {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            return Err(SinkError::Transient {
                op: "checking the schema of user_logins",
                cause: describe(&e),
            });
        }
        Err(_) => {
            return Err(SinkError::Transient {
                op: "checking the schema of user_logins",
                cause: format!("no answer within {} ms", limit.as_millis()),
            });
        }
    };
    let fatal = |cause: &str, hint: &'static str| SinkError::Fatal {
        op: "writing into user_logins",
        cause: cause.to_owned(),
        hint: hint.into(),
    };
    if !state.table || !state.columns {
        return Err(fatal(
            "the table user_logins is missing or lacks message_id / app_version_text",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    if !state.unique_index {
        return Err(fatal(
            "user_logins has no valid unique index on message_id, so a redelivered message could be written twice; nothing was written",
            "; run `login-etl migrate` (make migrate), which drops an INVALID user_logins_message_id_key left by a failed CREATE UNIQUE INDEX CONCURRENTLY and builds it again",
        ));
    }
    if !state.erasure {
        return Err(fatal(
            "the erasure list (user_logins_erased, login_etl_refuse_erased) is missing: the schema predates this version",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    if vault && !state.vault {
        return Err(fatal(
            "the PII vault's tables (user_logins_pii_vault, user_logins_vault_keys) are missing",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    Ok(state.floor)
}

/// Applies [`MIGRATION_SQL`] in one transaction under the advisory lock,
/// unless the catalog shows the schema is current: then it takes no lock
/// at all (the migration's `ALTER TABLE` would take an ACCESS EXCLUSIVE
/// lock even when it changes nothing). True when it applied the migration.
pub async fn migrate(client: &mut Client) -> Result<bool, tokio_postgres::Error> {
    if inspect(client).await?.is_current() {
        return Ok(false);
    }
    let tx = client.transaction().await?;
    tx.query_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&MIGRATION_LOCK_KEY, tokio_postgres::types::Type::INT8)],
    )
    .await?;
    tx.batch_execute(MIGRATION_SQL).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_13_are_refused_for_good_with_both_versions_named() {
        assert!(require_version(130_000, "13.0").is_ok());
        assert!(require_version(150_020, "15.20").is_ok());
        let e = require_version(120_017, "12.17 (Debian 12.17-1)").unwrap_err();
        assert!(!e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains("12.17") && text.contains("PostgreSQL 13 or later"),
            "{text}"
        );
    }
}
