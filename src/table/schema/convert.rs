//! The first steps of the online upgrade of an unpartitioned `user_logins`
//! (the upstream DDL, with or without login-etl's columns, with any number
//! of rows), while its writer keeps writing: login-etl's columns added
//! where missing (catalog only), and the old key's unique index built
//! `CONCURRENTLY`, which the move to the narrow row reads the rows by
//! ([`super::narrow`] does the rest: the rows copied into
//! `user_logins_rows`, a partition from the first day on to the bound the
//! cutover sets, then the cutover).

use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use super::{failed, with_lock_retries};
use crate::error::DbError;

/// How long a step's lock (the cutover's ACCESS EXCLUSIVE too) is waited
/// for before ingest goes first and it tries again: the most a write
/// waits behind it.
pub const CUTOVER_LOCK_TIMEOUT_MS: u32 = 200;

/// The old table's columns login-etl adds (the upstream DDL lacks them):
/// the narrow row's conversion reads each.
const ADD_COLUMNS_SQL: &str = "ALTER TABLE user_logins \
    ADD COLUMN IF NOT EXISTS message_id varchar(128), \
    ADD COLUMN IF NOT EXISTS app_version_text varchar(32), \
    ADD COLUMN IF NOT EXISTS sent_at timestamptz, \
    ADD COLUMN IF NOT EXISTS key_version smallint NOT NULL DEFAULT 1, \
    ADD COLUMN IF NOT EXISTS extra jsonb, \
    ADD COLUMN IF NOT EXISTS defects text[], \
    ADD COLUMN IF NOT EXISTS user_tag bigint";

/// Login-etl's columns where the old table lacks one (an unpartitioned
/// table's, or a wide one of 0.2.0, before `user_tag`), a moment's lock
/// waited for at most [`CUTOVER_LOCK_TIMEOUT_MS`] and tried again: the
/// narrow row's conversion reads each.
pub async fn add_columns(client: &Client) -> Result<(), DbError> {
    let missing: i64 = client
        .query_typed_one(
            "SELECT 7 - count(*) FROM pg_attribute WHERE attrelid = 'user_logins'::regclass AND NOT attisdropped \
             AND attname IN ('message_id', 'app_version_text', 'sent_at', 'key_version', 'extra', 'defects', 'user_tag')",
            &[],
        )
        .await
        .map_err(failed("reading the columns of user_logins"))?
        .get(0);
    if missing > 0 {
        info!(
            missing,
            "adding message_id, app_version_text, sent_at, key_version, extra, defects, user_tag where missing"
        );
        with_lock_retries(client, "adding columns to user_logins", || {
            short_tx(client, ADD_COLUMNS_SQL.to_owned())
        })
        .await?;
    }
    Ok(())
}

/// The unpartitioned table's steps (see the module documentation), after
/// refusing a cold start when it has rows and once its columns are there.
pub async fn prepare_upstream(client: &Client, cold_start: bool) -> Result<(), DbError> {
    if cold_start {
        refuse_rows_at_cold_start(client).await?;
    }
    refuse_rows_the_narrow_row_cannot_hold(client).await?;
    info!(
        step = "upstream",
        index = "user_logins_legacy_key",
        "building a unique index CONCURRENTLY (ingest keeps writing)"
    );
    let t = Instant::now();
    build_index(client, "user_logins_legacy_key", "sent_at, message_id, create_date").await?;
    info!(
        step = "upstream",
        seconds = t.elapsed().as_secs_f64(),
        "index ready"
    );
    Ok(())
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

/// What the narrow row cannot hold, counted in one scan and named, with
/// nothing changed: a row with no day to be stored by (neither `sent_at`
/// nor `create_date`), and a masked value that is not a token (64 hex
/// digits: the narrow row keeps a token's 32 bytes).
async fn refuse_rows_the_narrow_row_cannot_hold(client: &Client) -> Result<(), DbError> {
    let row = client
        .query_typed_one(
            "SELECT count(*) FILTER (WHERE sent_at IS NULL AND create_date IS NULL), \
                    count(*) FILTER (WHERE NOT (coalesce(masked_ip ~ '^[0-9a-fA-F]{64}$', true) \
                                                AND coalesce(masked_device_id ~ '^[0-9a-fA-F]{64}$', true))) \
             FROM user_logins",
            &[],
        )
        .await
        .map_err(failed("looking for rows the narrow row cannot hold"))?;
    let (undated, untokened): (i64, i64) = (row.get(0), row.get(1));
    if undated > 0 {
        return Err(DbError::Fatal {
            op: "upgrading user_logins",
            cause: format!("{undated} rows have neither sent_at nor create_date; the narrow row stores each row by its day"),
            hint: "; give them a date (UPDATE user_logins SET create_date = ... WHERE create_date IS NULL) or delete them, then run `login-etl migrate` again".into(),
        });
    }
    if untokened > 0 {
        return Err(DbError::Fatal {
            op: "upgrading user_logins",
            cause: format!("{untokened} rows hold a masked_ip or masked_device_id that is no token (64 hex digits); the narrow row keeps a token's 32 bytes"),
            hint: "; find them with `SELECT count(*) FROM user_logins WHERE masked_ip !~ '^[0-9a-fA-F]{64}$' OR masked_device_id !~ '^[0-9a-fA-F]{64}$'`, set those values to NULL (or to 64-hex-digit tokens of your own), then run `login-etl migrate` again".into(),
        });
    }
    Ok(())
}

/// `sql` in a transaction of its own that waits for its locks at most
/// [`CUTOVER_LOCK_TIMEOUT_MS`]; rolled back when it fails.
pub(super) async fn short_tx(client: &Client, sql: String) -> Result<(), tokio_postgres::Error> {
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
