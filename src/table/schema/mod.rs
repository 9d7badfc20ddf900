//! The `user_logins` schema, embedded in the binary: how it is applied, and
//! the guard that refuses to write into a table that could double rows.
//!
//! `user_logins` is range-partitioned by `create_date` (migrations/0001 and
//! 0004); [`convert`] turns an unpartitioned table from before this version
//! into a partition of the new one online; `crate::table::maintain` keeps the
//! partitions made ahead and drops those past retention.

pub mod convert;
pub mod functions;
mod indexes;

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::warn;

use crate::error::SinkError;
use crate::error::describe;
use crate::table::partitions::{Granularity, premake, set_granularity};
use crate::table::privileges::{self, FunctionGrant, SCHEMA_WRITERS_SQL, schema_writers_fix};
use crate::table::retry::{failed, with_lock_retries};

/// One migration's text, by its file name (without `.sql`).
macro_rules! migration {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/",
            $name,
            ".sql"
        ))
    };
}

/// The migrations: what changes tables and data, in order (0001 creates or
/// upgrades `user_logins`; later ones the PII vault, the audit trail and
/// erasure list, the partition machinery, key versions, the role registry).
/// Applied through [`schema_sql`], which makes the owner's functions first
/// and applies the privileges after.
pub const MIGRATION_SQL: &str = concat!(
    migration!("0001_user_logins"),
    "\n",
    migration!("0002_pii_vault"),
    "\n",
    migration!("0003_pii_audit_and_erasure"),
    "\n",
    migration!("0004_partitions"),
    "\n",
    migration!("0005_erasure_state"),
    "\n",
    migration!("0006_key_versions"),
    "\n",
    migration!("0007_online_operations"),
    "\n",
    migration!("0008_vault_retention"),
    "\n",
    migration!("0009_write_function"),
    "\n",
    migration!("0010_insiders"),
    "\n",
    migration!("0011_extra_fields"),
);

/// The migrations but 0001 and 0004, which rebuild `user_logins` (0011
/// only adds a nullable column, which an older version's writes do not
/// name): what `migrate --prepare` applies beside an older version's
/// writes into an unpartitioned table (see [`convert`]).
pub const SIDE_TABLES_SQL: &str = concat!(
    migration!("0002_pii_vault"),
    "\n",
    migration!("0003_pii_audit_and_erasure"),
    "\n",
    migration!("0005_erasure_state"),
    "\n",
    migration!("0006_key_versions"),
    "\n",
    migration!("0007_online_operations"),
    "\n",
    migration!("0008_vault_retention"),
    "\n",
    migration!("0009_write_function"),
    "\n",
    migration!("0010_insiders"),
    "\n",
    migration!("0011_extra_fields"),
);

/// The version [`MIGRATION_SQL`] leaves (`login_etl_schema_version()`):
/// a database at an older one is migrated again.
pub const SCHEMA_VERSION: i32 = 11;

/// The schema for `migrations` (all of [`MIGRATION_SQL`], or part of it):
/// the owner's functions from their files ([`functions::sync_sql`]), the
/// migrations, the schema version, then every function's search path,
/// revoke and grants and every registered role's privileges
/// ([`privileges::apply_sql`]), for one transaction.
pub fn schema_sql(migrations: &str) -> String {
    let grants = functions::grants(SCHEMA_VERSION);
    let grants: Vec<FunctionGrant<'_>> = grants
        .iter()
        .map(|(tag, name, kinds)| FunctionGrant {
            name,
            tag,
            kinds: kinds.clone(),
        })
        .collect();
    format!(
        "{}\n{migrations}\n;\n{}\n{}",
        functions::sync_sql(),
        functions::schema_version_sql(SCHEMA_VERSION),
        privileges::apply_sql(&grants)
    )
}

/// Advisory lock key ("LOGINETL" in ASCII): many cold starts at once apply
/// the schema one after the other instead of racing on `CREATE INDEX`; the
/// partition functions of migrations/0004 take it too, so `maintain` runs
/// one step at a time beside itself and `migrate`.
pub const MIGRATION_LOCK_KEY: i64 = 0x4C4F_4749_4E45_544C;

/// The arguments of `login_etl_store_vault`, the function's vault write.
pub const STORE_VAULT_ARGS: &str =
    "varchar,varchar,bytea,varchar[],varchar[],bytea[],bytea[],date[],smallint,smallint";

/// What the catalog says about `user_logins`, read without taking any lock
/// on the table, the xid floor (as text; the sink parses it, see
/// `sink::tx::XidFloor`), the tag of the functions installed and who may
/// create in the schema ([`SCHEMA_WRITERS_SQL`]).
static INSPECT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSPECT_TABLES}, \
         coalesce((SELECT obj_description(p.oid, 'pg_proc') = $2 || ':' || md5(p.prosrc) \
             FROM pg_proc p WHERE p.oid = to_regprocedure('{}()')), false), \
         (SELECT s.writers FROM ({SCHEMA_WRITERS_SQL}) AS s(name, writers)), current_schema()::text",
        functions::SCHEMA_VERSION_FUNCTION
    )
});

/// [`INSPECT_SQL`]'s first ten columns.
const INSPECT_TABLES: &str = "SELECT \
    to_regclass('user_logins') IS NOT NULL, \
    (SELECT count(*) = 4 FROM pg_attribute WHERE attrelid = to_regclass('user_logins') \
        AND attname IN ('message_id', 'app_version_text', 'sent_at', 'key_version') AND NOT attisdropped), \
    EXISTS (SELECT 1 FROM pg_index i \
        WHERE i.indrelid = to_regclass('user_logins') AND i.indisunique AND i.indisvalid \
        AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 3 \
        AND (SELECT array_agg(a.attname::text ORDER BY k.n) \
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
            = ARRAY['sent_at', 'message_id', 'create_date']), \
    pg_snapshot_xmax(pg_current_snapshot())::text, \
    to_regclass('user_logins_pii_vault') IS NOT NULL AND to_regclass('user_logins_vault_keys') IS NOT NULL \
        AND to_regprocedure('login_etl_store_vault(' || $1 || ')') IS NOT NULL, \
    to_regclass('user_logins_pii_audit') IS NOT NULL AND to_regclass('user_logins_erased') IS NOT NULL \
        AND to_regprocedure('login_etl_refuse_erased(bigint,integer)') IS NOT NULL \
        AND to_regclass('user_logins_key_state') IS NOT NULL \
        AND to_regprocedure('login_etl_write(bigint,integer,integer,' || $3 || ')') IS NOT NULL, \
    coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('user_logins')), false), \
    to_regclass('user_logins_partitioning') IS NOT NULL AND to_regclass('user_logins_default') IS NOT NULL \
        AND to_regclass('user_logins_pii_vault_held') IS NOT NULL \
        AND to_regclass('user_logins_erasure_tokens') IS NOT NULL \
        AND to_regprocedure('login_etl_drop_detached()') IS NOT NULL \
        AND to_regprocedure('login_etl_purge_default(date)') IS NOT NULL, \
    EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
        ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
        WHERE i.indrelid = to_regclass('user_logins') AND a.attname = 'message_id' \
        AND i.indisunique AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL \
        AND i.indisvalid AND i.indisready), \
    coalesce((SELECT substring(p.prosrc FROM '[0-9]+')::int4 FROM pg_proc p \
        WHERE p.proname = 'login_etl_schema_version' AND p.pronamespace = to_regnamespace(current_schema())::oid), 0)";

/// The schema as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// `user_logins` exists.
    pub table: bool,
    /// It has `message_id`, `app_version_text` and `sent_at`.
    pub columns: bool,
    /// It has a valid unique index on `(sent_at, message_id, create_date)`:
    /// the key that keeps a redelivered message from being written twice.
    pub unique_index: bool,
    /// The first transaction id not yet assigned (an `xid8` as text).
    pub floor: Option<String>,
    /// The PII vault's tables exist.
    pub vault: bool,
    /// The audit table, the erasure list, its check and the write function
    /// (`login_etl_write`, migrations/0009) exist.
    pub erasure: bool,
    /// `user_logins` is partitioned (false for a table from before this
    /// version, which `login-etl migrate` converts).
    pub partitioned: bool,
    /// The partition machinery of migrations/0004 exists.
    pub partitions: bool,
    /// A valid unique index on `message_id` alone: what keeps an
    /// unpartitioned table from before this version exactly once while
    /// `login-etl migrate --prepare` has run and the cutover has not.
    pub message_id_index: bool,
    /// The version of the migrations applied (`login_etl_schema_version()`;
    /// 0 before migrations/0007).
    pub version: i32,
    /// The owner's functions are those of this binary's files (the tag of
    /// `login_etl_schema_version()`, see [`functions::all_tag`]).
    pub functions: bool,
    /// Who besides the owner may CREATE in the schema (`PUBLIC`, or role
    /// names): see [`SCHEMA_WRITERS_SQL`].
    pub schema_writers: Vec<String>,
    /// The schema the names resolve to (`current_schema()`).
    pub schema: Option<String>,
}

impl SchemaState {
    /// Nothing for a migration to do.
    pub fn is_current(&self) -> bool {
        self.table
            && self.columns
            && self.unique_index
            && self.vault
            && self.erasure
            && self.partitioned
            && self.partitions
            && self.version >= SCHEMA_VERSION
            && self.functions
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
    let row = client
        .query_typed_one(
            &INSPECT_SQL,
            &[
                (&STORE_VAULT_ARGS, Type::TEXT),
                (&functions::all_tag(SCHEMA_VERSION), Type::TEXT),
                (&crate::contract::columns::array_types(), Type::TEXT),
            ],
        )
        .await?;
    Ok(SchemaState {
        table: row.get(0),
        columns: row.get(1),
        unique_index: row.get(2),
        floor: row.get(3),
        vault: row.get(4),
        erasure: row.get(5),
        partitioned: row.get(6),
        partitions: row.get(7),
        message_id_index: row.get(8),
        version: row.get(9),
        functions: row.get(10),
        schema_writers: row.get::<_, Option<Vec<String>>>(11).unwrap_or_default(),
        schema: row.get(12),
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
    if !state.schema_writers.is_empty() {
        // Not a reason to stop writing (the owner's functions are there
        // for anyone granted them, written or not): the operator's to mend.
        let schema = state.schema.as_deref().unwrap_or("?");
        warn!(
            schema,
            writers = %state.schema_writers.join(", "),
            fix = %schema_writers_fix(schema, &state.schema_writers),
            "roles besides the tables' owner may create objects in the schema the owner's functions run in, where a planted object could run with the owner's rights; run the fix as the schema's owner (`login-etl doctor` checks it)"
        );
    }
    let fatal = |cause: &str, hint: &'static str| SinkError::Misconfigured {
        what: crate::error::Misconfiguration::SchemaIncomplete,
        op: "writing into user_logins",
        cause: cause.to_owned(),
        hint: hint.into(),
    };
    if !state.table || !state.columns {
        return Err(fatal(
            "the table user_logins is missing or lacks a column of this version (message_id, app_version_text, sent_at, key_version)",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    if !state.partitioned {
        // Between `migrate --prepare` and the cutover: the old table has
        // every column and its unique message_id index arbitrates.
        if state.columns && state.message_id_index && state.erasure {
            return Ok(state.floor);
        }
        return Err(fatal(
            "user_logins is not partitioned (a table from before this version)",
            "; run `login-etl migrate` from a shell: it converts the table online, ingest keeps running (docs/deploy.md, \"Upgrading an existing table\")",
        ));
    }
    if !state.unique_index {
        return Err(fatal(
            "user_logins has no valid unique index on (sent_at, message_id, create_date), so a redelivered message could be written twice; nothing was written",
            "; run `login-etl migrate` (make migrate), which builds it again",
        ));
    }
    if !state.erasure || !state.partitions {
        return Err(fatal(
            "the erasure list (user_logins_erased, login_etl_refuse_erased), the write function (login_etl_write) or the partition functions (login_etl_*) are missing: the schema predates this version",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    if vault && !state.vault {
        return Err(fatal(
            "the PII vault's tables (user_logins_pii_vault, user_logins_vault_keys) or its write function (login_etl_store_vault) are missing",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    Ok(state.floor)
}

/// How `migrate` may proceed.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// The partition width for a table made now; `None` keeps what is
    /// stored (day for a new table). A different width than the stored one
    /// is refused: partitions of two widths would overlap.
    pub granularity: Option<Granularity>,
    /// A cold start with `RUN_MIGRATIONS=true`, as the function's role:
    /// an unpartitioned `user_logins` is converted only when it is empty
    /// (millions of rows take minutes, longer than Lambda's init phase;
    /// `login-etl migrate` from a shell does it online), and a current
    /// schema is left alone (partitions are `maintain`'s work).
    pub cold_start: bool,
    /// Days after today whose partitions are made (see `crate::table::maintain`).
    pub premake_days: u32,
    /// Stop an upgrade before its cutover: the old table gets its new
    /// columns, both unique indexes and the proven bounds, and stays
    /// unpartitioned, writable by the old version and by this one. See
    /// docs/deploy.md, "Upgrading an existing table".
    pub prepare_only: bool,
}

/// Creates or upgrades the schema, then makes the partitions from
/// yesterday to `premake_days` ahead. An unpartitioned `user_logins` is
/// converted first ([`convert`]). [`MIGRATION_SQL`] is applied in one
/// transaction under the advisory lock, unless the catalog shows the
/// schema is current: then it takes no lock on the table at all (the
/// migration's `ALTER TABLE` would take an ACCESS EXCLUSIVE lock even when
/// it changes nothing). True when it changed anything.
pub async fn migrate(client: &mut Client, options: &MigrateOptions) -> Result<bool, SinkError> {
    let state = inspect(client)
        .await
        .map_err(failed("reading the catalog"))?;
    if options.cold_start && state.is_current() {
        return Ok(false);
    }
    privileges::refuse_schema_writers(state.schema.as_deref(), &state.schema_writers)?;
    // Between `migrate --prepare` and the cutover the old table is
    // writable; the cutover is `login-etl migrate`'s, never a cold start's.
    if options.cold_start
        && state.table
        && !state.partitioned
        && state.columns
        && state.message_id_index
    {
        return Ok(false);
    }
    let mut applied = false;
    if state.table && !state.partitioned {
        applied = convert::convert(client, options).await?;
        if options.prepare_only {
            let built = indexes::vault_indexes(client, options).await?;
            return Ok(applied || built);
        }
    } else if !state.is_current() {
        apply_sql(client, &schema_sql(MIGRATION_SQL), "applying the schema").await?;
        applied = true;
    }
    set_granularity(client, options.granularity).await?;
    let made = premake(client, options.premake_days).await?;
    let built = indexes::vault_indexes(client, options).await?;
    Ok(applied || made > 0 || built)
}

/// How long a migration statement waits for a table lock before the whole
/// migration lets ingest through and tries again ([`with_lock_retries`]):
/// the most a write queues behind it.
pub const MIGRATION_LOCK_TIMEOUT_MS: u32 = 100;

/// Applies `sql` in one transaction under the migration's advisory lock,
/// each of its table locks waited for at most [`MIGRATION_LOCK_TIMEOUT_MS`]
/// and the whole tried again after a pause when one runs out: a migration
/// beside a long reader never queues ingest behind it (a write reads the
/// erasure list and the key state, which the migration may alter).
pub(crate) async fn apply_sql(
    client: &Client,
    sql: &str,
    op: &'static str,
) -> Result<(), SinkError> {
    with_lock_retries(op, || async {
        let done = client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); \
                 SET LOCAL lock_timeout = {MIGRATION_LOCK_TIMEOUT_MS};\n{sql}\n;COMMIT"
            ))
            .await;
        if done.is_err() {
            // The failed statement left the transaction open and aborted.
            let _ = client.batch_execute("ROLLBACK").await;
        }
        done
    })
    .await
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
