//! The `user_logins` schema, embedded in the binary: how it is applied, and
//! the guard that refuses to write into a table that could double rows.
//!
//! `user_logins` is the view over `user_logins_rows`, range-partitioned by
//! day of `sent_at` (migrations/0028, the narrow row); [`narrow`] moves the
//! rows of a table of an earlier layout into it online ([`convert`]'s
//! steps first for an unpartitioned one); `crate::table::maintain` keeps
//! the partitions made ahead and drops those past retention.

pub mod convert;
pub mod narrow;
pub mod functions;
mod indexes;
mod migrations;
pub mod state;
pub mod triggers;
mod view;

pub use migrations::migration_sql;

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};
use tracing::warn;

use crate::database::connector::Connector;
use crate::error::DbError;
use crate::error::describe;
use crate::profile::Profile;
use crate::table::partitions::{Granularity, premake, set_granularity};
use crate::table::privileges::{self, FunctionGrant, SCHEMA_WRITERS_SQL, schema_writers_fix};
use crate::table::retry::{failed, with_lock_retries};

/// The version the migrations leave, as a literal: `--version` prints
/// it beside the release's (`concat!` takes literals only).
macro_rules! schema_version {
    () => {
        23
    };
}
pub(crate) use schema_version;

/// The version the migrations leave (recorded in `user_logins_schema`,
/// see [`state`]): a database at an older one is migrated again.
pub const SCHEMA_VERSION: i32 = schema_version!();

/// The schema for `migrations` (all of [`migration_sql`], or part of it)
/// in `profile`: the owner's functions from their files
/// ([`functions::sync_sql`]), the migrations, the view `user_logins`
/// ([`view`]), the schema's version,
/// profile and functions recorded ([`state::record_sql`]), its triggers
/// enabled ([`triggers`]), then every function's
/// search path, revoke and grants and
/// every registered role's privileges ([`privileges::apply_sql`]), for one
/// transaction.
pub fn schema_sql(migrations: &str, profile: Profile) -> String {
    let grants = functions::grants(profile);
    let grants: Vec<FunctionGrant<'_>> = grants
        .iter()
        .map(|(tag, name, kinds)| FunctionGrant {
            name,
            tag,
            kinds: kinds.clone(),
        })
        .collect();
    // The triggers before the migrations too: a migration that makes two
    // when the first is missing would fail on the second, there.
    format!(
        "{}\n{}\n{migrations}\n;\n{}\n{}\n{}\n{}",
        functions::sync_sql(profile),
        triggers::ensure_sql(true),
        view::sql(),
        state::record_sql(SCHEMA_VERSION, profile),
        triggers::ensure_sql(false),
        privileges::apply_sql(&grants, profile)
    )
}

/// Advisory lock key ("LOGINETL" in ASCII) of a schema before
/// migrations/0022 (its functions take it; `MIGRATION_LOCK_SQL` takes it
/// while `user_logins_locks` is not there yet, and the table's conversion).
pub const MIGRATION_LOCK_KEY: i64 = 0x4C4F_4749_4E45_544C;

/// The arguments of `login_etl_store_vault`, the function's vault write.
pub const STORE_VAULT_ARGS: &str =
    "varchar,varchar,bytea,varchar[],varchar[],bytea[],bytea[],date[],smallint,smallint";

/// What the catalog says about `user_logins`, read without taking any lock
/// on the table: [`INSPECT_TABLES`], the xid floor (as text; the sink
/// parses it, see `sink::tx::XidFloor`), what says which profile it has
/// ([`PROFILE_FACTS_SQL`]), who may create in the schema
/// ([`SCHEMA_WRITERS_SQL`]), the schema, whether its triggers are intact,
/// and how many owner's functions carry their file's tag with the body it
/// was made with, for each profile's files (`$3`..`$6`: see
/// [`functions::expected`]).
static INSPECT_SQL: LazyLock<String> = LazyLock::new(|| {
    let intact = |names: u8, tags: u8| {
        format!(
            "(SELECT count(*)::int4 FROM pg_proc p \
               JOIN unnest(${names}::text[], ${tags}::text[]) AS f(name, tag) ON p.proname = f.name \
              WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
                AND obj_description(p.oid, 'pg_proc') = f.tag || ':' || md5(p.prosrc))"
        )
    };
    format!(
        "{INSPECT_TABLES}, {}, \
         (SELECT s.writers FROM ({SCHEMA_WRITERS_SQL}) AS s(name, writers)), current_schema()::text, \
         {}, {}, {}",
        *PROFILE_FACTS_SQL,
        triggers::intact_sql(),
        intact(3, 4),
        intact(5, 6)
    )
});

/// Three facts of the catalog the database's profile is read from beside
/// the recorded one ([`profile_of`]): whether any table of the full
/// profile is in the schema; and, for a database migrated before
/// `user_logins_schema` (0.2.0), whether the tables' owner made
/// `login_etl_profile()` there (every profile since profiles had it), and
/// whether `user_logins` is there with `login_etl_schema_version()`
/// (login-etl made it, before profiles or since). The two legacy facts go
/// after 0.3.0, with those functions.
static PROFILE_FACTS_SQL: LazyLock<String> = LazyLock::new(|| {
    let full_tables: Vec<String> = privileges::FULL_ONLY_TABLES
        .iter()
        .map(|t| format!("to_regclass(format('%I.%I', current_schema(), '{t}')) IS NOT NULL"))
        .collect();
    format!(
        "({}), \
         EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = '{}' \
             AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
             AND p.proowner = (SELECT relowner FROM pg_class WHERE oid = to_regclass(format('%I.%I', current_schema(), 'user_logins')))), \
         to_regclass(format('%I.%I', current_schema(), 'user_logins')) IS NOT NULL \
             AND EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = '{}' \
                 AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()))",
        full_tables.join(" OR "),
        functions::PROFILE_FUNCTION,
        functions::SCHEMA_VERSION_FUNCTION
    )
});

/// The database's profile: `full` where any table of the full profile is
/// in the schema (whatever else says otherwise: a profile is never
/// narrowed); else the one `migrate` recorded; else, for a database
/// migrated before the record, `masking` where the owner made
/// `login_etl_profile()` (a full one has the full tables) and `full` for
/// any other `user_logins` login-etl made (from before profiles); `None`
/// where login-etl made nothing (an upstream table is new to it).
fn profile_of(
    full_tables: bool,
    recorded: Option<&state::Recorded>,
    legacy_profile: bool,
    legacy_version: bool,
) -> Option<Profile> {
    if full_tables {
        return Some(Profile::Full);
    }
    if let Some(recorded) = recorded {
        return Some(recorded.profile.unwrap_or(Profile::Full));
    }
    match (legacy_profile, legacy_version) {
        (true, true) => Some(Profile::Masking),
        (false, true) => Some(Profile::Full),
        _ => None,
    }
}

/// [`INSPECT_SQL`]'s first eight columns (`$1`, `$2`: the signatures of the
/// vault's and the rows' write functions).
const INSPECT_TABLES: &str = "SELECT \
    to_regclass('user_logins') IS NOT NULL, \
    (SELECT count(*) = 4 FROM pg_attribute WHERE attrelid = to_regclass('user_logins') \
        AND attname IN ('message_id', 'app_version_text', 'sent_at', 'key_version') AND NOT attisdropped), \
    EXISTS (SELECT 1 FROM pg_index i \
        WHERE i.indrelid IN (to_regclass('user_logins'), to_regclass('user_logins_rows')) \
        AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
        AND (SELECT array_agg(a.attname::text ORDER BY k.n) \
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) \
            = CASE WHEN i.indrelid = to_regclass('user_logins_rows') THEN ARRAY['sent_at', 'message_id'] \
                   ELSE ARRAY['sent_at', 'message_id', 'create_date'] END), \
    pg_snapshot_xmax(pg_current_snapshot())::text, \
    to_regclass('user_logins_pii_vault') IS NOT NULL AND to_regclass('user_logins_vault_keys') IS NOT NULL \
        AND to_regprocedure('login_etl_store_vault(' || $1 || ')') IS NOT NULL, \
    to_regclass('user_logins_pii_audit') IS NOT NULL AND to_regclass('user_logins_erased') IS NOT NULL \
        AND to_regprocedure('login_etl_forget_begin(varchar,varchar,smallint,text)') IS NOT NULL \
        AND to_regclass('user_logins_pii_vault_held') IS NOT NULL \
        AND to_regclass('user_logins_erasure_tokens') IS NOT NULL, \
    coalesce((SELECT relkind = 'v' FROM pg_class WHERE oid = to_regclass('user_logins')), false) \
        AND coalesce((SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('user_logins_rows')), false), \
    to_regclass('user_logins_partitioning') IS NOT NULL AND to_regclass('user_logins_default') IS NOT NULL \
        AND to_regclass('user_logins_key_state') IS NOT NULL \
        AND to_regprocedure('login_etl_write(bigint,integer,integer,' || $2 || ')') IS NOT NULL \
        AND to_regprocedure('login_etl_write_tx(integer,bigint,integer,integer,' || $2 || ')') IS NOT NULL \
        AND to_regprocedure('login_etl_drop_detached()') IS NOT NULL \
        AND to_regprocedure('login_etl_purge_default(date)') IS NOT NULL";

/// The schema as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaState {
    /// `user_logins` exists.
    pub table: bool,
    /// It has `message_id`, `app_version_text` and `sent_at`.
    pub columns: bool,
    /// `user_logins_rows` has a valid unique index on `(sent_at,
    /// message_id)` (a wide table: on `(sent_at, message_id, create_date)`):
    /// the key that keeps a redelivered message from being written twice.
    pub unique_index: bool,
    /// The first transaction id not yet assigned (an `xid8` as text).
    pub floor: Option<String>,
    /// The PII vault's tables exist.
    pub vault: bool,
    /// The audit table, the erasure list, forget's first step
    /// (`login_etl_forget_begin`) and its state exist (the full profile's).
    pub erasure: bool,
    /// `user_logins` is the view over the partitioned `user_logins_rows`
    /// (false for a table of an earlier layout, which `login-etl migrate`
    /// upgrades: [`narrow`]).
    pub partitioned: bool,
    /// The partition machinery of migrations/0004, the key state and the
    /// write functions (`login_etl_write`, `login_etl_write_tx`) exist
    /// (every profile's).
    pub partitions: bool,
    /// The version of the migrations applied, as recorded (see [`state`];
    /// 0 where nothing is: a database migrated before 0.3.0).
    pub version: i32,
    /// The owner's functions are those of this binary's files: the record
    /// names their tag ([`functions::all_tag`]), and each carries its
    /// file's tag with the body it was made with.
    pub functions: bool,
    /// Who besides the owner may CREATE in the schema (`PUBLIC`, or role
    /// names): see [`SCHEMA_WRITERS_SQL`].
    pub schema_writers: Vec<String>,
    /// The schema the names resolve to (`current_schema()`).
    pub schema: Option<String>,
    /// The profile it has: [`SchemaState::profile_found`], or full where
    /// none was found (a reader whose `search_path` hides the schema must
    /// not skip the erasure list; `migrate` decides from `profile_found`).
    pub profile: Profile,
    /// The profile found, `None` where nothing is installed (see
    /// [`profile_of`]).
    pub profile_found: Option<Profile>,
    /// Every trigger of [`triggers::TRIGGERS`] on a table present fires
    /// (`migrate` enables one that does not).
    pub triggers: bool,
}

impl SchemaState {
    /// Nothing for a migration to do (in its own profile).
    pub fn is_current(&self) -> bool {
        let full = self.profile == Profile::Full;
        self.table
            && self.columns
            && self.unique_index
            && (self.vault || !full)
            && (self.erasure || !full)
            && self.partitioned
            && self.partitions
            && self.version >= SCHEMA_VERSION
            && self.functions
    }
}

/// The oldest PostgreSQL release login-etl runs on: the xid floor and the
/// lost-reply recount use `pg_current_snapshot()` and `xid8` (13 and later).
pub const MIN_SERVER_VERSION_NUM: i32 = 130_000;

/// A non-retryable error unless `version_num` (`server_version_num`) is at
/// least [`MIN_SERVER_VERSION_NUM`]; `version` is what the error shows.
pub fn require_version(version_num: i32, version: &str) -> Result<(), DbError> {
    if version_num >= MIN_SERVER_VERSION_NUM {
        return Ok(());
    }
    Err(DbError::Fatal {
        op: "working with this server",
        cause: format!("the server runs PostgreSQL {version}"),
        hint: "; login-etl needs PostgreSQL 13 or later (it uses pg_current_snapshot and xid8): upgrade the server".into(),
    })
}

/// Reads [`SchemaState`]: the catalog and the record, side by side (two
/// round trips, no table lock).
pub async fn inspect(client: &Client) -> Result<SchemaState, tokio_postgres::Error> {
    let (full, masking) = (
        functions::expected(Profile::Full),
        functions::expected(Profile::Masking),
    );
    let array_types = crate::contract::columns::array_types();
    let params: [(&(dyn ToSql + Sync), Type); 6] = [
        (&STORE_VAULT_ARGS, Type::TEXT),
        (&array_types, Type::TEXT),
        (&full.0, Type::TEXT_ARRAY),
        (&full.1, Type::TEXT_ARRAY),
        (&masking.0, Type::TEXT_ARRAY),
        (&masking.1, Type::TEXT_ARRAY),
    ];
    let (row, recorded) = tokio::try_join!(
        client.query_typed_one(&INSPECT_SQL, &params),
        state::read(client)
    )?;
    let profile_found = profile_of(row.get(8), recorded.as_ref(), row.get(9), row.get(10));
    let profile = profile_found.unwrap_or(Profile::Full);
    let (intact, expected) = match profile {
        Profile::Full => (row.get::<_, i32>(14), full.2),
        Profile::Masking => (row.get::<_, i32>(15), masking.2),
    };
    let functions = intact == expected
        && recorded.as_ref().is_some_and(|r| {
            r.profile == Some(profile) && r.functions == functions::all_tag(SCHEMA_VERSION, profile)
        });
    Ok(SchemaState {
        table: row.get(0),
        columns: row.get(1),
        unique_index: row.get(2),
        floor: row.get(3),
        vault: row.get(4),
        erasure: row.get(5),
        partitioned: row.get(6),
        partitions: row.get(7),
        version: recorded.as_ref().map_or(0, |r| r.version),
        functions,
        schema_writers: row.get::<_, Option<Vec<String>>>(11).unwrap_or_default(),
        schema: row.get(12),
        profile,
        profile_found,
        triggers: row.get(13),
    })
}

/// What the schema guard found: the xid floor and the database's profile.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The first transaction id not yet assigned (see [`SchemaState::floor`]).
    pub floor: Option<String>,
    /// The profile `migrate` gave the database.
    pub profile: Profile,
}

/// The database's profile (any role may read it; full where none is
/// found: see [`profile_of`]).
pub async fn profile(client: &Client) -> Result<Profile, tokio_postgres::Error> {
    let sql = format!("SELECT {}", *PROFILE_FACTS_SQL);
    let (row, recorded) = tokio::try_join!(client.query_typed_one(&sql, &[]), state::read(client))?;
    Ok(profile_of(row.get(0), recorded.as_ref(), row.get(1), row.get(2)).unwrap_or(Profile::Full))
}

/// Refuses `command` (reveal, forget, audit, rotate-key, vault-upgrade)
/// on a masking-only database, which has none of the tables it works on.
pub async fn require_full(client: &Client, command: &'static str) -> Result<(), DbError> {
    let found = profile(client)
        .await
        .map_err(failed("reading the database's profile"))?;
    if found == Profile::Full {
        return Ok(());
    }
    Err(DbError::Profile {
        op: command,
        cause: "the database has the masking-only profile: no PII vault, erasure list, audit trail or key rotation".into(),
        hint: "; nothing was changed. Give it the full profile, online: README's setup block again with LOGIN_ETL_PROFILE=full (or, as the tables' owner, `login-etl migrate --profile full`, then `login-etl grants --role <role> --to <name> --profile full | psql` for this command's role; docs/profiles.md)".into(),
    })
}

/// The server's version (refused below 13) and the schema's state, in one
/// round trip within `limit`.
async fn checked_state(client: &Client, limit: Duration) -> Result<SchemaState, DbError> {
    // On a server older than 13 the inspection fails (no
    // pg_current_snapshot), and the version says why.
    let answers = timeout(limit, async {
        tokio::join!(
            crate::database::server::server_version(client),
            inspect(client)
        )
    })
    .await;
    if let Ok((Ok((num, version)), _)) = &answers {
        require_version(*num, version)?;
    }
    const OP: &str = "checking the schema of user_logins";
    match answers.map(|(_, state)| state) {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => Err(DbError::Transient {
            op: OP,
            cause: describe(&e),
        }),
        Err(_) => Err(DbError::Transient {
            op: OP,
            cause: format!("no answer within {} ms", limit.as_millis()),
        }),
    }
}

/// The schema guard, run on the sink's first connection: an error that
/// names the fix unless `user_logins` is complete in the database's
/// profile (and has the vault when `vault`).
pub async fn check(client: &Client, limit: Duration, vault: bool) -> Result<Checked, DbError> {
    let state = checked_state(client, limit).await?;
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
    let fatal = |cause: &str, hint: &'static str| DbError::Misconfigured {
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
        return Err(fatal(
            "user_logins is a table of an earlier layout (unpartitioned, or wide: before schema 23's narrow row)",
            "; run `login-etl migrate` from a shell: it moves the rows online while the deployed function keeps ingesting (docs/upgrade.md)",
        ));
    }
    if !state.unique_index {
        return Err(fatal(
            "user_logins_rows has no valid unique index on (sent_at, message_id), so a redelivered message could be written twice; nothing was written",
            "; run `login-etl migrate` (make migrate), which builds it again",
        ));
    }
    let full = state.profile == Profile::Full;
    if (full && !state.erasure) || !state.partitions {
        return Err(fatal(
            "the erasure list (user_logins_erased, login_etl_forget_begin), the key state, the write functions (login_etl_write, login_etl_write_tx) or the partition functions (login_etl_*) are missing: the schema predates this version",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    if vault && !full {
        return Err(fatal(
            "this function keeps originals in the PII vault (VAULT_KEY_ID is set), and the database has the masking-only profile, which has no vault",
            "; nothing was written. Either give the database the full profile, online: `login-etl migrate --profile full` as the tables' owner (docs/profiles.md), or deploy without the vault (Profile=masking, which sets no VAULT_KEY_ID)",
        ));
    }
    if vault && !state.vault {
        return Err(fatal(
            "the PII vault's tables (user_logins_pii_vault, user_logins_vault_keys) or its write function (login_etl_store_vault) are missing",
            "; run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true",
        ));
    }
    Ok(Checked {
        floor: state.floor,
        profile: state.profile,
    })
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
    /// Stop an upgrade before its cutover: the rows are copied into
    /// `user_logins_rows` and the old table's triggers keep it up to date
    /// until `login-etl migrate` cuts over ([`narrow`]; docs/upgrade.md).
    pub prepare_only: bool,
    /// The profile to install; `None` keeps the database's (full for a
    /// new one). Masking-only on a full database is refused: a profile is
    /// widened, never narrowed.
    pub profile: Option<Profile>,
    /// The deployment's retention to record (`RETENTION_DAYS`, or `all`);
    /// `None` leaves what is recorded (everything, on a new database).
    pub retention: Option<crate::table::retention::Kept>,
}

/// The profile `migrate` installs on a database in `state`: the one asked
/// for, or the database's where it has more (a profile is widened, never
/// narrowed: the full profile's tables hold what recovery and erasure
/// need, so a request for less keeps full, with a warning).
pub fn target_profile(state: &SchemaState, asked: Option<Profile>) -> Profile {
    match (state.profile_found, asked) {
        (Some(Profile::Full), Some(Profile::Masking)) => {
            warn!(
                "the database has the full profile (the PII vault, the erasure list, the audit trail) and the masking-only profile was asked for: a profile is never narrowed, so it stays full (docs/profiles.md)"
            );
            Profile::Full
        }
        (found, asked) => asked.or(found).unwrap_or_default(),
    }
}

/// [`migrate`] on a connection `connector` opens, after checking the
/// server's version; the connection is handed back for what the caller
/// sends next (at a cold start with `RUN_MIGRATIONS`, the first batch).
pub async fn migrate_connecting(
    connector: &mut Connector,
    options: &MigrateOptions,
) -> Result<(bool, Client), DbError> {
    let mut client = connector.open(connector.connect_timeout()).await?;
    let (num, version) = crate::database::server::server_version(&client)
        .await
        .map_err(|e| DbError::Transient {
            op: "reading the server version",
            cause: describe(&e),
        })?;
    require_version(num, &version)?;
    let applied = migrate(&mut client, options).await?;
    Ok((applied, client))
}

/// Creates or upgrades the schema, then makes the partitions from
/// yesterday to `premake_days` ahead. An unpartitioned `user_logins` is
/// converted first ([`convert`]). The profile's migrations
/// ([`migration_sql`], see [`target_profile`]) are applied in one
/// transaction under the advisory lock, unless the catalog shows the
/// schema is current: then it takes no lock on the table at all (the
/// migration's `ALTER TABLE` would take an ACCESS EXCLUSIVE lock even when
/// it changes nothing). True when it changed anything.
pub async fn migrate(client: &mut Client, options: &MigrateOptions) -> Result<bool, DbError> {
    let state = inspect(client)
        .await
        .map_err(failed("reading the catalog"))?;
    let profile = target_profile(&state, options.profile);
    let current = state.is_current()
        && state.triggers
        && state.profile == profile
        && (options.cold_start || !lock_rows_missing(client, state.schema.as_deref()).await?);
    if options.cold_start && current {
        return Ok(false);
    }
    privileges::refuse_schema_writers(state.schema.as_deref(), &state.schema_writers)?;
    let old = if current {
        None
    } else {
        narrow::old_layout(client).await?
    };
    if !options.cold_start {
        narrow::drop_old(client).await?;
    }
    let mut applied = false;
    if let Some(old) = old {
        applied = narrow::upgrade(client, old, options, profile).await?;
        if options.prepare_only {
            return Ok(applied);
        }
    } else if !current {
        let sql = schema_sql(migration_sql(profile), profile);
        apply_sql(client, &sql, "applying the schema").await?;
        applied = true;
    }
    set_granularity(client, options.granularity).await?;
    let recorded = match options.retention {
        Some(kept) => crate::table::retention::record(client, kept).await?,
        None => false,
    };
    let made = premake(client, options.premake_days).await?;
    let built = profile == Profile::Full && indexes::vault_indexes(client, options).await?;
    Ok(applied || recorded || made > 0 || built)
}

/// Whether `user_logins_locks` (migrations/0022) in `schema` lacks one of
/// its rows: a lock without its row holds nothing, and the owner's
/// functions refuse to run (`login_etl_hold_lock`) until `migrate` puts it
/// back. Only the owner reads the table: the function's cold start does
/// not ask.
async fn lock_rows_missing(client: &Client, schema: Option<&str>) -> Result<bool, DbError> {
    let Some(schema) = schema else {
        return Ok(false);
    };
    let read = |sql: String| async move {
        client
            .query_one(&sql, &[])
            .await
            .map(|row| row.get::<_, bool>(0))
            .map_err(failed("reading login-etl's locks"))
    };
    // Two statements: one that names a table not there yet fails to plan.
    Ok(
        read("SELECT pg_catalog.to_regclass('user_logins_locks') IS NOT NULL".into()).await?
            && read(lock_rows_missing_sql(schema)).await?,
    )
}

/// Whether `schema`'s `user_logins_locks` lacks a row of login-etl's locks
/// (a query of one boolean, every name and operator qualified: doctor runs
/// it too).
pub fn lock_rows_missing_sql(schema: &str) -> String {
    format!(
        "SELECT (SELECT pg_catalog.count(*) FROM {}.user_logins_locks l \
         WHERE l.name OPERATOR(pg_catalog.=) ANY ('{{migration,key_version}}'::pg_catalog.text[])) \
         OPERATOR(pg_catalog.<) 2::pg_catalog.int8",
        postgres_protocol::escape::escape_identifier(schema)
    )
}

/// How long a migration statement waits for a table lock before the whole
/// migration lets ingest through and tries again ([`with_lock_retries`]):
/// the most a write queues behind it.
pub const MIGRATION_LOCK_TIMEOUT_MS: u32 = 100;

/// The migration's lock, for the transaction: the row `migration` of
/// `user_logins_locks` (migrations/0022), which only the owner may lock
/// (maintain's functions take it too); before that table exists (a first
/// install, or an upgrade from before it), the advisory lock the older
/// functions take. The locks' rows are put back first where someone with
/// the owner's rights deleted them (`login_etl_hold_lock` refuses to run
/// without its row: see [`lock_rows_missing`]).
const MIGRATION_LOCK_SQL: &str = "DO $login_etl_lock$\nBEGIN\n    \
     IF to_regclass('user_logins_locks') IS NULL THEN\n        \
     PERFORM pg_advisory_xact_lock(5498692050214016076);\n    \
     ELSE\n        \
     INSERT INTO user_logins_locks (name) VALUES ('migration'), ('key_version') ON CONFLICT DO NOTHING;\n        \
     PERFORM 1 FROM user_logins_locks WHERE name = 'migration' FOR UPDATE;\n    \
     END IF;\nEND\n$login_etl_lock$;";

/// Applies `sql` in one transaction under the migration's lock,
/// each of its table locks waited for at most [`MIGRATION_LOCK_TIMEOUT_MS`]
/// and the whole tried again after a pause when one runs out: a migration
/// beside a long reader never queues ingest behind it (a write reads the
/// erasure list and the key state, which the migration may alter).
pub(crate) async fn apply_sql(client: &Client, sql: &str, op: &'static str) -> Result<(), DbError> {
    with_lock_retries(client, op, || async {
        let done = client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; {MIGRATION_LOCK_SQL}\n\
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
