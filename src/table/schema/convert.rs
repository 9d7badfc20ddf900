//! The online upgrade of an unpartitioned `user_logins` (the upstream DDL,
//! with or without login-etl's columns, with any number of rows) into the
//! first partition of a partitioned one, while ingest keeps writing.
//!
//! Every long step runs beside ingest, under locks that writers do not wait
//! for: the indexes are built `CONCURRENTLY`, the bounds are proved by a
//! `CHECK` constraint added `NOT VALID` and validated under SHARE UPDATE
//! EXCLUSIVE. Only the cutover takes ACCESS EXCLUSIVE, and it does catalog
//! work alone: rename the table to `user_logins_legacy`, make the
//! partitioned `user_logins`, attach the old table for every day up to
//! tomorrow (the validated constraint spares the scan, the index built
//! beforehand is adopted), make the DEFAULT partition and copy the grants.
//! Its lock is waited for at most [`CUTOVER_LOCK_TIMEOUT_MS`], again and again
//! until it gets through between two write transactions.
//!
//! Exactly once across the cutover: the old table keeps its unique index on
//! `message_id` as a local index of its partition, and the sink's `ON
//! CONFLICT DO NOTHING` (no target) arbitrates on every unique index of the
//! partition a row is routed to. A message written before the cutover (no
//! `sent_at`) and delivered again after it lands on the old partition (its
//! day is before the cutover) and conflicts there on `message_id`.

use std::time::Instant;

use chrono::{NaiveDate, TimeDelta, Utc};
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use super::{
    MIGRATION_LOCK_KEY, MigrateOptions, Profile, failed, migration_sql, side_tables_sql,
    schema_sql, with_lock_retries,
};
use crate::error::DbError;

/// How long the cutover waits for its ACCESS EXCLUSIVE lock before it lets
/// ingest through and tries again: the most a write waits behind it.
pub const CUTOVER_LOCK_TIMEOUT_MS: u32 = 200;

/// The old table's columns login-etl adds (the upstream DDL lacks them).
const ADD_COLUMNS_SQL: &str = "ALTER TABLE user_logins \
    ADD COLUMN IF NOT EXISTS message_id varchar(128), \
    ADD COLUMN IF NOT EXISTS app_version_text varchar(32), \
    ADD COLUMN IF NOT EXISTS sent_at timestamptz, \
    ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1";

/// Converts the unpartitioned `user_logins` into a partitioned one of
/// `profile` (the upstream table of an adopter's database becomes
/// masking-only unless asked for more); true when it did (false when
/// another `migrate` did it first). See the module documentation.
pub async fn convert(
    client: &mut Client,
    options: &MigrateOptions,
    profile: Profile,
) -> Result<bool, DbError> {
    if options.cold_start {
        refuse_rows_at_cold_start(client).await?;
    }
    let started = Instant::now();
    // Rows are dated by their SentTimestamp, never later than now: the old
    // table keeps every day up to tomorrow (a day's margin for a cutover
    // that retries past midnight); partitions start the day after.
    let first_new_day = Utc::now().date_naive() + TimeDelta::days(2);

    add_columns_and_keys(client).await?;
    if options.prepare_only {
        // The erasure list and the vault must exist for this version to
        // write into the old table (its guard checks them): --prepare is
        // the upgrade of a table login-etl wrote before partitions, when
        // every deployment was full. The bounds are
        // proved by the cutover's run: a CHECK added now would refuse the
        // rows of a day after its bound, should the cutover come later.
        apply_side_tables(client).await?;
        info!(
            "prepared (--prepare): deploy this version, then run `login-etl migrate` for the cutover"
        );
        return Ok(true);
    }
    info!(step = "4/5", bound = %first_new_day, "proving every row's create_date is set and before the bound (CHECK ... NOT VALID, then VALIDATE)");
    let t = Instant::now();
    bound_rows(client, first_new_day).await?;
    info!(
        step = "4/5",
        seconds = t.elapsed().as_secs_f64(),
        "bounds proved"
    );

    info!(
        step = "5/5",
        "cutover: user_logins becomes user_logins_legacy, the first partition of a partitioned user_logins"
    );
    let held = cutover(client, first_new_day, profile).await?;
    let Some(held) = held else {
        info!("another migrate converted user_logins first");
        return Ok(false);
    };
    info!(
        step = "5/5",
        lock_held_ms = held.as_secs_f64() * 1e3,
        "cutover committed: writes waited at most this long, plus one lock wait"
    );
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "user_logins converted"
    );
    Ok(true)
}

/// A cold start converts only an empty table: one with rows takes
/// longer than a cold start may.
async fn refuse_rows_at_cold_start(client: &Client) -> Result<(), DbError> {
    let empty: bool = client
        .query_typed_one("SELECT NOT EXISTS (SELECT 1 FROM user_logins)", &[])
        .await
        .map_err(failed("looking at user_logins"))?
        .get(0);
    if !empty {
        return Err(DbError::Fatal {
            op: "upgrading user_logins",
            cause: "user_logins is an unpartitioned table with rows (from before this version); converting it takes minutes, longer than a cold start may".into(),
            hint: "; run `login-etl migrate` from a shell with the migrate role's settings: it converts the table online while ingest keeps running (docs/deploy.md, \"Upgrading an existing table\")".into(),
        });
    }
    Ok(())
}

/// Steps 1 to 3: the columns login-etl adds, where missing, and the two
/// unique indexes built CONCURRENTLY (ingest keeps writing).
async fn add_columns_and_keys(client: &Client) -> Result<(), DbError> {
    info!(
        step = "1/5",
        "adding message_id, app_version_text, sent_at, key_version where missing"
    );
    let missing: i64 = client
        .query_typed_one(
            "SELECT 4 - count(*) FROM pg_attribute WHERE attrelid = 'user_logins'::regclass \
             AND attname IN ('message_id', 'app_version_text', 'sent_at', 'key_version') AND NOT attisdropped",
            &[],
        )
        .await
        .map_err(failed("reading the columns of user_logins"))?
        .get(0);
    if missing > 0 {
        with_lock_retries(client, "adding columns to user_logins", || {
            short_tx(client, ADD_COLUMNS_SQL.to_owned())
        })
        .await?;
    }

    // The old message_id index makes redeliveries across the cutover
    // harmless; the new key lets the table be attached without a build.
    for (step, name, columns) in [
        ("2/5", "user_logins_message_id_key", "message_id"),
        (
            "3/5",
            "user_logins_legacy_key",
            "sent_at, message_id, create_date",
        ),
    ] {
        info!(
            step,
            index = name,
            "building a unique index CONCURRENTLY (ingest keeps writing)"
        );
        let t = Instant::now();
        build_index(client, name, columns).await?;
        info!(
            step,
            index = name,
            seconds = t.elapsed().as_secs_f64(),
            "index ready"
        );
    }
    Ok(())
}

/// The tables beside `user_logins` (vault, audit, erasure list) without
/// touching `user_logins` itself, so that this version can write into the
/// old table before the cutover.
async fn apply_side_tables(client: &Client) -> Result<(), DbError> {
    super::apply_sql(
        client,
        &schema_sql(side_tables_sql(), Profile::Full),
        "creating the vault, audit and erasure tables",
    )
    .await
}

/// `sql` in a transaction of its own that waits for its locks at most
/// [`CUTOVER_LOCK_TIMEOUT_MS`]; rolled back when it fails.
async fn short_tx(client: &Client, sql: String) -> Result<(), tokio_postgres::Error> {
    let done = client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {CUTOVER_LOCK_TIMEOUT_MS}; {sql}; COMMIT"
        ))
        .await;
    if done.is_err() {
        // The failed statement left the transaction open and aborted.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    done
}

/// `CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS`, after dropping an
/// INVALID index of that name left by an earlier failed build.
async fn build_index(client: &Client, name: &str, columns: &str) -> Result<(), DbError> {
    let invalid: bool = client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass($1) \
             AND NOT (indisvalid AND indisready))",
            &[(&name, Type::TEXT)],
        )
        .await
        .map_err(failed("looking for an invalid index"))?
        .get(0);
    if invalid {
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY {name}"))
            .await
            .map_err(failed("dropping an invalid index left by a failed build"))?;
    }
    client
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {name} ON user_logins ({columns})"
        ))
        .await
        .map_err(|e| match e.code() {
            Some(state) if state.code() == "23505" => DbError::Fatal {
                op: "building a unique index on user_logins",
                cause: format!("two rows of the old table share a value of ({columns})"),
                hint: format!("; find them with `SELECT {columns}, count(*) FROM user_logins GROUP BY {columns} HAVING count(*) > 1`, delete the copies, and run `login-etl migrate` again").into(),
            },
            _ => failed("building a unique index on user_logins")(e),
        })
}

/// The constraint that lets ATTACH skip the scan: added NOT VALID (a
/// moment's lock), then validated under SHARE UPDATE EXCLUSIVE, which
/// writers do not wait for. A constraint from an earlier run with another
/// bound is replaced.
async fn bound_rows(client: &Client, bound: NaiveDate) -> Result<(), DbError> {
    let want = format!("create_date IS NOT NULL AND create_date < '{bound}'::date");
    let existing: Option<String> = client
        .query_typed_opt(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'user_logins'::regclass AND conname = 'user_logins_legacy_bounds'",
            &[],
        )
        .await
        .map_err(failed("reading the constraints of user_logins"))?
        .map(|r| r.get(0));
    let same = existing
        .as_deref()
        .is_some_and(|def| def.contains(&bound.to_string()));
    if !same {
        let drop = if existing.is_some() {
            "ALTER TABLE user_logins DROP CONSTRAINT user_logins_legacy_bounds; "
        } else {
            ""
        };
        with_lock_retries(client, "adding the bounds constraint", || {
            short_tx(
                client,
                format!(
                    "{drop}ALTER TABLE user_logins ADD CONSTRAINT user_logins_legacy_bounds CHECK ({want}) NOT VALID"
                ),
            )
        })
        .await?;
    }
    let validated = client
        .batch_execute("ALTER TABLE user_logins VALIDATE CONSTRAINT user_logins_legacy_bounds")
        .await;
    if let Err(e) = validated {
        if e.code().map(|s| s.code()) != Some("23514") {
            return Err(failed("validating the bounds constraint")(e));
        }
        let row = client
            .query_typed_one(
                "SELECT count(*) FILTER (WHERE create_date IS NULL), \
                 count(*) FILTER (WHERE create_date >= $1) FROM user_logins",
                &[(&bound, Type::DATE)],
            )
            .await
            .map_err(failed("counting the rows out of bounds"))?;
        let (null, late): (i64, i64) = (row.get(0), row.get(1));
        return Err(DbError::Fatal {
            op: "upgrading user_logins",
            cause: format!(
                "{null} rows have no create_date and {late} rows have one on or after {bound}; a partition by create_date cannot hold them"
            ),
            hint: "; give them a date (UPDATE user_logins SET create_date = ... WHERE ...) or delete them, then run `login-etl migrate` again".into(),
        });
    }
    Ok(())
}

/// The cutover transaction (see the module documentation): how long it
/// held the lock, or `None` when the table was partitioned already.
async fn cutover(
    client: &mut Client,
    bound: NaiveDate,
    profile: Profile,
) -> Result<Option<std::time::Duration>, DbError> {
    let sql = format!(
        "ALTER TABLE user_logins RENAME TO user_logins_legacy; \
         CREATE TABLE user_logins (LIKE user_logins_legacy INCLUDING DEFAULTS) PARTITION BY RANGE (create_date); \
         CREATE UNIQUE INDEX user_logins_key ON ONLY user_logins (sent_at, message_id, create_date); \
         ALTER TABLE user_logins ATTACH PARTITION user_logins_legacy FOR VALUES FROM (MINVALUE) TO ('{bound}'); \
         {schema}\n; \
         SELECT login_etl_copy_grants('user_logins_legacy', 'user_logins');",
        schema = schema_sql(migration_sql(profile), profile)
    );
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(failed("starting the cutover"))?;
        let locked = tx
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = {CUTOVER_LOCK_TIMEOUT_MS}; \
                 SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY}); \
                 LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE"
            ))
            .await;
        let since = Instant::now();
        match locked {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                drop(tx);
                info!("cutover lock wait ran out (ingest goes first); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(failed("locking user_logins for the cutover")(e)),
        }
        let partitioned: bool = tx
            .query_typed_one(
                "SELECT relkind = 'p' FROM pg_class WHERE oid = 'user_logins'::regclass",
                &[],
            )
            .await
            .map_err(failed("reading the catalog"))?
            .get(0);
        if partitioned {
            return Ok(None);
        }
        tx.batch_execute(&sql)
            .await
            .map_err(failed("the cutover (nothing changed)"))?;
        tx.commit()
            .await
            .map_err(failed("committing the cutover (nothing changed)"))?;
        return Ok(Some(since.elapsed()));
    }
}
