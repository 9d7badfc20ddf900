//! The online upgrade of a `user_logins` with rows in the wide layout
//! (schema 22 and before: partitioned by `create_date`, tokens in hex, ids
//! as text), or of an unpartitioned one (the upstream DDL's, after
//! [`super::convert`]'s steps), to the narrow row (migrations/0028:
//! `user_logins_rows` under the view `user_logins`), while the deployed
//! function (or the upstream table's writer) keeps writing.
//!
//! One parent at a time for every tool, the way [`super::convert`] works
//! (a drain of the DEFAULT partition under way stops it first: its rows
//! are out of the old parent):
//! 1. login-etl's columns where the old table lacks one (0.2.0's lacks
//!    `user_tag`); rows without a message id (from before login-etl) get
//!    one of their own, `upstream-<uuid>`: those there in chunks, those
//!    still coming by a row trigger. The new key needs one, and the
//!    mirror and a copy must find each row again;
//! 2. the new parent, with a partition for each old one, and statement
//!    triggers on the old parent that mirror every insert (COPY too),
//!    update (a re-key) and delete (an erasure) into it (transition tables:
//!    one statement a batch), made in one short transaction;
//! 3. the old rows copied in key order, in chunks of [`CHUNK_ROWS`], each
//!    its own transaction, with progress. Each chunk reads its rows `FOR
//!    SHARE`: an erasure or re-key of a row being copied waits for the copy
//!    to commit, then its mirror finds the row (without it, a copy of the
//!    row's old version committed after the erasure's mirror would bring
//!    the row back). `NOWAIT`: a chunk that meets a row an erasure or
//!    re-key holds is tried again, never waited for, so the copy is never
//!    one side of a deadlock (ingest only inserts new rows: it never waits
//!    for a chunk). A second copy of a row is a no-op (`ON CONFLICT`), so a
//!    run stopped anywhere is run again from the start; a finished copy is
//!    recorded (`user_logins_rows_copied`), and `--prepare` stops there;
//! 4. the cutover, catalog work and the schema's migration under ACCESS
//!    EXCLUSIVE, waited for at most [`CUTOVER_LOCK_TIMEOUT_MS`] and tried
//!    again until it gets through between two writes: the triggers
//!    dropped, the old parent and its partitions renamed aside
//!    (`user_logins_wide*`), the new partitions given the old names, the
//!    view made, the grants to read or insert of roles not login-etl's
//!    moved to it;
//! 5. the old parent dropped ([`drop_old`], which every later `migrate`
//!    runs too).
//!
//! Measured beforehand in SQL alone: benches/narrow_row.sh and
//! docs/narrow-row.md.

use std::time::Instant;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use super::convert::{CUTOVER_LOCK_TIMEOUT_MS, short_tx};
use super::{MIGRATION_LOCK_KEY, MigrateOptions, Profile, failed, migration_sql, schema_sql, with_lock_retries};
use crate::database::sqlstate::{Class, Conflict};
use crate::error::DbError;

/// Rows a copy chunk (one transaction) takes.
pub const CHUNK_ROWS: i64 = 20_000;

/// The tables that hold the old rows, as `t(relid)`: the partitions, or
/// the unpartitioned table itself (`pg_partition_tree` lists none for it).
const LEAVES: &str = "(SELECT relid FROM pg_partition_tree('user_logins') WHERE isleaf \
    UNION ALL SELECT oid FROM pg_class WHERE oid = 'user_logins'::regclass AND relkind = 'r') AS t(relid)";

/// Rows from before login-etl a keying step takes.
const KEY_ROWS: i64 = 10_000;

/// What `user_logins` is when it is a table of an earlier layout: `'p'`
/// for the wide partitioned one with rows, `'r'` for an unpartitioned one
/// (the upstream DDL's); `None` otherwise (the view, nothing, or a wide
/// table without rows, which the migration replaces at once:
/// migrations/0028).
pub async fn old_layout(client: &Client) -> Result<Option<i8>, DbError> {
    let kind: Option<i8> = client
        .query_typed_one(
            "SELECT (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins') \
                     AND relkind IN ('p', 'r'))::\"char\"",
            &[],
        )
        .await
        .map_err(failed("reading the catalog"))?
        .get(0);
    match kind {
        Some(k) if k == b'p' as i8 && !has_rows(client).await? => Ok(None),
        k => Ok(k),
    }
}

async fn has_rows(client: &Client) -> Result<bool, DbError> {
    ask(client, "SELECT EXISTS (SELECT 1 FROM user_logins)", "looking at user_logins").await
}

/// The answer of a query of one boolean.
async fn ask(client: &Client, sql: &str, op: &'static str) -> Result<bool, DbError> {
    Ok(client.query_typed_one(sql, &[]).await.map_err(failed(op))?.get(0))
}

/// Upgrades `user_logins` of the `old` layout ([`old_layout`]) in
/// `profile`'s schema to the narrow row (see the module documentation);
/// true when it did (false when another `migrate` did the cutover first).
/// `--prepare` stops before the cutover, with the mirror running; a run
/// after it goes straight to the cutover.
pub async fn upgrade(
    client: &mut Client,
    old: i8,
    options: &MigrateOptions,
    profile: Profile,
) -> Result<bool, DbError> {
    // Before the columns: the previous release's drain names every column
    // of the parent, and its detached table would lack a new one.
    refuse_a_drain(client).await?;
    super::convert::add_columns(client).await?;
    if old == b'r' as i8 {
        super::convert::prepare_upstream(client, options.cold_start).await?;
    }
    if options.cold_start && has_rows(client).await? {
        return Err(DbError::Fatal {
            op: "upgrading user_logins",
            cause: "user_logins has rows in the layout of before schema 23 (hex tokens, text ids); moving them to the narrow row takes longer than a cold start may".into(),
            hint: "; run `login-etl migrate` from a shell with the migrate role's settings while the deployed function keeps ingesting, then deploy this version (docs/upgrade.md, \"The narrow row\")".into(),
        });
    }
    let started = Instant::now();
    let state = "reading the upgrade's state";
    let copied = ask(client, "SELECT to_regclass('user_logins_rows_copied') IS NOT NULL", state).await?
        && ask(client, "SELECT EXISTS (SELECT 1 FROM user_logins_rows_copied)", state).await?;
    if copied {
        info!("the rows were copied by an earlier run (--prepare): the triggers kept them current");
    } else {
        info!(
            step = "1/5",
            "giving rows without a message id one of their own (their key), now and as they come"
        );
        with_lock_retries(client, "making the trigger that keys new rows", || {
            short_tx(client, KEY_TRIGGER_SQL.to_owned())
        })
        .await?;
        let keyed = key_rows(client, old == b'r' as i8).await?;
        info!(step = "1/5", rows = keyed, "rows keyed");
    }

    info!(
        step = "2/5",
        "making user_logins_rows and the triggers that mirror writes into it"
    );
    let schema: String = client
        .query_typed_one(
            "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'user_logins'::regclass",
            &[],
        )
        .await
        .map_err(failed("reading the catalog"))?
        .get(0);
    // An unpartitioned table's rows go to one partition up to the day
    // after tomorrow (rows are dated by their SentTimestamp, never later
    // than now; a day's margin for a cutover past midnight), as
    // `maintain`'s partitions start there.
    let bound = chrono::Utc::now().date_naive() + chrono::TimeDelta::days(2);
    let prepare = prepare_sql(&schema, bound);
    with_lock_retries(client, "making the new parent and its triggers", || {
        short_tx(client, prepare.clone())
    })
    .await?;

    if !copied {
        info!(step = "3/5", "copying the rows (ingest keeps writing)");
        let t = Instant::now();
        let rows = copy_rows(client).await?;
        client
            .batch_execute("INSERT INTO user_logins_rows_copied VALUES (now())")
            .await
            .map_err(failed("recording the copy"))?;
        info!(
            step = "3/5",
            rows,
            seconds = t.elapsed().as_secs_f64(),
            "rows copied"
        );
    }
    if options.prepare_only {
        info!(
            "prepared (--prepare): the triggers keep user_logins_rows up to date; run `login-etl migrate` for the cutover, then deploy this version"
        );
        return Ok(true);
    }
    info!(
        step = "4/5",
        "cutover: user_logins becomes the view over user_logins_rows"
    );
    let Some(held) = cutover(client, profile).await? else {
        info!("another migrate did the cutover first");
        return Ok(false);
    };
    info!(
        step = "4/5",
        lock_held_ms = held.as_secs_f64() * 1e3,
        "cutover committed: writes waited at most this long, plus one lock wait"
    );
    info!(step = "5/5", "dropping the old table (user_logins_wide)");
    drop_old(client).await?;
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "user_logins upgraded to the narrow row"
    );
    Ok(true)
}

/// Step 5, and what every `migrate` after a cutover makes sure of: the old
/// table renamed aside is gone (found by the comment the cutover gave it,
/// not by its name alone: a table of the user's may bear it). Kept, it would hold every row it had,
/// readable by whoever was granted it and out of reach of `forget`.
pub async fn drop_old(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(
            "DO $$ BEGIN \
               IF (SELECT relkind FROM pg_class WHERE oid = to_regclass('user_logins')) = 'v' \
                  AND obj_description(to_regclass('user_logins_wide'), 'pg_class') \
                      = 'login-etl: the table of before the narrow row, dropped by migrate' THEN \
                 DROP TABLE user_logins_wide; \
               END IF; \
             END $$",
        )
        .await
        .map_err(|e| match e.code() {
            Some(state) if *state == tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST => DbError::Fatal {
                op: "dropping user_logins_wide, the table of before the narrow row",
                cause: "views or other objects of yours still read it; it is no longer written, and `forget` no longer erases from it".into(),
                hint: "; `DROP TABLE user_logins_wide;` in psql as the tables' owner names them (its DETAIL); drop them, or make them again on the view user_logins, then run `login-etl migrate` again".into(),
            },
            _ => failed("dropping user_logins_wide, the table of before the narrow row")(e),
        })
}

/// No copy while a drain of the DEFAULT partition is under way: its rows
/// are in `user_logins_drain`, out of the old parent the copy reads.
async fn refuse_a_drain(client: &Client) -> Result<(), DbError> {
    if ask(client, DRAINING_SQL, "reading the catalog").await? {
        return Err(DrainUnderWay.into());
    }
    Ok(())
}

/// Whether a drain of the DEFAULT partition is under way.
const DRAINING_SQL: &str = "SELECT to_regclass('user_logins_drain') IS NOT NULL";

/// A drain of the DEFAULT partition under way (see [`refuse_a_drain`]).
struct DrainUnderWay;

impl From<DrainUnderWay> for DbError {
    fn from(_: DrainUnderWay) -> Self {
        DbError::Fatal {
            op: "upgrading user_logins",
            cause: "a drain of the DEFAULT partition is under way (user_logins_drain): its rows are out of the table the upgrade copies".into(),
            hint: "; let the deployed release's `login-etl maintain` finish it (user_logins_drain is gone once it has), then run `login-etl migrate` again".into(),
        }
    }
}

/// A row inserted into the old table without a message id gets one, as
/// step 1 gives the rows already there: the mirror and the copy find every
/// row by its key. A row trigger (the parent's clones onto each partition,
/// so COPY and a partition's own inserts are keyed too).
const KEY_TRIGGER_SQL: &str = "CREATE OR REPLACE FUNCTION login_etl_narrow_key() RETURNS trigger \
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $f$ BEGIN \
      IF NEW.message_id IS NULL THEN NEW.message_id := 'upstream-' || gen_random_uuid(); END IF; \
      RETURN NEW; END $f$; \
    REVOKE ALL ON FUNCTION login_etl_narrow_key() FROM PUBLIC; \
    DROP TRIGGER IF EXISTS user_logins_narrow_key ON user_logins; \
    CREATE TRIGGER user_logins_narrow_key BEFORE INSERT ON user_logins \
      FOR EACH ROW EXECUTE FUNCTION login_etl_narrow_key()";

/// Step 1: `upstream-<uuid>` as the message id of each row that has none,
/// a partition at a time, [`KEY_ROWS`] a transaction: those without
/// `sent_at` too (the upstream table's) through the key's index; on an
/// unpartitioned table also any other (a scan each step: only a hand's
/// insert has a `sent_at` and no message id). The rows keep every other
/// value.
async fn key_rows(client: &Client, unpartitioned: bool) -> Result<u64, DbError> {
    let partitions: Vec<String> = client
        .query_typed(
            &format!("SELECT c.oid::regclass::text FROM {LEAVES} JOIN pg_class c ON c.oid = t.relid"),
            &[],
        )
        .await
        .map_err(failed("listing the partitions of user_logins"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut keyed = 0;
    let conditions: &[&str] = if unpartitioned {
        &["sent_at IS NULL AND message_id IS NULL", "message_id IS NULL"]
    } else {
        &["sent_at IS NULL AND message_id IS NULL"]
    };
    for partition in partitions {
        for condition in conditions {
            let sql = format!(
                "UPDATE {partition} SET message_id = 'upstream-' || gen_random_uuid() \
                 WHERE ctid = ANY(ARRAY(SELECT ctid FROM {partition} WHERE {condition} LIMIT {KEY_ROWS}))"
            );
            loop {
                let n = client
                    .execute(&sql, &[])
                    .await
                    .map_err(failed("keying rows without a message id"))?;
                if n == 0 {
                    break;
                }
                keyed += n;
                info!(step = "1/5", rows = keyed, "rows keyed so far");
            }
        }
    }
    Ok(keyed)
}

/// Step 2's transaction: the new parent (migrations/0028's definition), a
/// partition for each old one under an interim name (`user_logins_rows_`
/// and the old name's suffix: the cutover gives them the old names), and
/// the mirror. The mirror's functions run as the owner (the roles that
/// write the old parent have no privilege on the new one yet), with the
/// schema's search path; an update or delete finds its rows by the new key
/// (a nested loop over the key's index, not a scan of the new parent).
fn prepare_sql(schema: &str, bound: chrono::NaiveDate) -> String {
    let narrow_row = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/migrations/functions/login_etl_narrow_row.sql"
    ));
    let parent = super::migrations::MIGRATION_FILES
        .iter()
        .find(|f| f.name == "0028_narrow_row")
        .map(|f| f.sql)
        .unwrap_or_default();
    let path = format!("{}, pg_temp", escape_identifier(schema));
    let converted = |rows: &str| {
        format!(
            "{rows} w CROSS JOIN LATERAL login_etl_narrow_row(w.message_id, w.user_id, w.device_type, \
             w.masked_ip, w.masked_device_id, w.locale, w.app_version, w.app_version_text, w.create_date, \
             w.sent_at, w.key_version, w.user_tag, w.defects, w.extra) c"
        )
    };
    format!(
        r#"{parent}
;
{narrow_row}
;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'user_logins'::regclass
               AND to_regclass(quote_ident('user_logins_rows_' || substr(c.relname, 13))) IS NULL LOOP
        -- A day the old maintain made after an earlier run of this step
        -- has its rows in the new DEFAULT partition already: it stays
        -- without a partition of its own until `maintain` moves them.
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF user_logins_rows %s WITH (fillfactor = 100)',
                           'user_logins_rows_' || substr(r.relname, 13),
                           CASE WHEN r.bound = 'DEFAULT' THEN 'DEFAULT'
                                ELSE regexp_replace(r.bound, '''(\d{{4}}-\d{{2}}-\d{{2}})''', '''\1 00:00+00''', 'g') END);
        EXCEPTION WHEN check_violation THEN NULL;
        END;
    END LOOP;
    IF (SELECT relkind FROM pg_class WHERE oid = 'user_logins'::regclass) = 'r'
       AND to_regclass('user_logins_rows_legacy') IS NULL THEN
        CREATE TABLE user_logins_rows_legacy PARTITION OF user_logins_rows
            FOR VALUES FROM (MINVALUE) TO ('{bound} 00:00+00') WITH (fillfactor = 100);
        CREATE TABLE user_logins_rows_default PARTITION OF user_logins_rows DEFAULT;
    END IF;
END
$$;
-- The copy's record: once it holds a row, a later run goes straight to
-- the cutover (the triggers keep the copy current).
CREATE TABLE IF NOT EXISTS user_logins_rows_copied (copied_at timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION login_etl_narrow_mirror_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path} AS $f$
BEGIN
    INSERT INTO user_logins_rows SELECT c.* FROM {new} ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$f$;
CREATE OR REPLACE FUNCTION login_etl_narrow_mirror_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path}
SET enable_hashjoin = off SET enable_mergejoin = off AS $f$
BEGIN
    UPDATE user_logins_rows n SET (user_tag, app_version, key_version, user_id, masked_ip, masked_device_id,
            device_type, locale, app_version_text, user_id_text, defects, extra)
          = (c.user_tag, c.app_version, c.key_version, c.user_id, c.masked_ip, c.masked_device_id,
             c.device_type, c.locale, c.app_version_text, c.user_id_text, c.defects, c.extra)
      FROM {new}
     WHERE n.sent_at = c.sent_at AND n.message_id = c.message_id;
    RETURN NULL;
END
$f$;
CREATE OR REPLACE FUNCTION login_etl_narrow_mirror_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {path}
SET enable_hashjoin = off SET enable_mergejoin = off AS $f$
BEGIN
    DELETE FROM user_logins_rows n USING {old}
     WHERE n.sent_at = c.sent_at AND n.message_id = c.message_id;
    RETURN NULL;
END
$f$;
REVOKE ALL ON FUNCTION login_etl_narrow_mirror_insert(), login_etl_narrow_mirror_update(),
    login_etl_narrow_mirror_delete() FROM PUBLIC;
DROP TRIGGER IF EXISTS user_logins_narrow_insert ON user_logins;
DROP TRIGGER IF EXISTS user_logins_narrow_update ON user_logins;
DROP TRIGGER IF EXISTS user_logins_narrow_delete ON user_logins;
CREATE TRIGGER user_logins_narrow_insert AFTER INSERT ON user_logins REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION login_etl_narrow_mirror_insert();
CREATE TRIGGER user_logins_narrow_update AFTER UPDATE ON user_logins REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION login_etl_narrow_mirror_update();
CREATE TRIGGER user_logins_narrow_delete AFTER DELETE ON user_logins REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION login_etl_narrow_mirror_delete()"#,
        new = converted("new_rows"),
        old = converted("old_rows"),
    )
}

/// Step 3: the old rows in key order, [`CHUNK_ROWS`] a transaction, read
/// `FOR SHARE` (see the module documentation); rows from before login-etl
/// (no `sent_at`) last, by message id. Returns the rows read.
async fn copy_rows(client: &Client) -> Result<u64, DbError> {
    let estimate: f64 = client
        .query_typed_one(
            &format!(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8 FROM {LEAVES} \
                 JOIN pg_class c ON c.oid = t.relid"
            ),
            &[],
        )
        .await
        .map_err(failed("estimating the rows of user_logins"))?
        .get(0);
    let chunk = |filter: &str, order: &str, last: &str| {
        format!(
            "WITH w AS (SELECT * FROM user_logins WHERE {filter} ORDER BY {order} LIMIT {CHUNK_ROWS} FOR SHARE NOWAIT), \
             copied AS (INSERT INTO user_logins_rows SELECT c.* FROM w CROSS JOIN LATERAL \
                 login_etl_narrow_row(w.message_id, w.user_id, w.device_type, w.masked_ip, w.masked_device_id, \
                 w.locale, w.app_version, w.app_version_text, w.create_date, w.sent_at, w.key_version, w.user_tag, \
                 w.defects, w.extra) c ON CONFLICT DO NOTHING RETURNING 1) \
             SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM copied), \
                    (SELECT sent_at FROM w ORDER BY {last} LIMIT 1), \
                    (SELECT message_id::text FROM w ORDER BY {last} LIMIT 1)"
        )
    };
    let keyed = chunk(
        "sent_at IS NOT NULL AND (sent_at, message_id) > ($1, $2)",
        "sent_at, message_id",
        "sent_at DESC, message_id DESC",
    );
    let upstream = chunk(
        "sent_at IS NULL AND message_id > $2 AND $1::timestamptz IS NOT NULL",
        "message_id",
        "message_id DESC",
    );
    let (mut read, mut written) = (0u64, 0u64);
    let started = Instant::now();
    for sql in [&keyed, &upstream] {
        // Before any SentTimestamp (and within PostgreSQL's range, which
        // chrono's minimum is not).
        let mut at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH - chrono::TimeDelta::days(365 * 70);
        let mut id = String::new();
        loop {
            // A value the narrow row cannot hold (a masked value that is no
            // token, written by hand: login-etl's own are) is an answer to
            // word, not a conflict to try again.
            let cannot_hold = |e: &tokio_postgres::Error| {
                use tokio_postgres::error::SqlState;
                matches!(e.code(), Some(c) if *c == SqlState::INVALID_PARAMETER_VALUE || *c == SqlState::CHECK_VIOLATION)
            };
            let row = with_lock_retries(client, "copying rows into user_logins_rows", || async {
                match client
                    .query_typed_one(sql, &[(&at, Type::TIMESTAMPTZ), (&id, Type::TEXT)])
                    .await
                {
                    Err(e) if cannot_hold(&e) => Ok(Err(e)),
                    answer => answer.map(Ok),
                }
            })
            .await?
            .map_err(|e| DbError::Fatal {
                op: "copying rows into user_logins_rows",
                cause: crate::error::describe(&e),
                hint: "; a row of the old table holds a value the narrow row cannot: find it with `SELECT count(*) FROM user_logins WHERE masked_ip !~ '^[0-9a-fA-F]{64}$' OR masked_device_id !~ '^[0-9a-fA-F]{64}$'`, set such values to NULL, then run `login-etl migrate` again (rows copied already are skipped)".into(),
            })?;
            let (n, w): (i64, i64) = (row.get(0), row.get(1));
            if n == 0 {
                break;
            }
            read += n as u64;
            written += w as u64;
            if let Some(last) = row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2) {
                at = last;
            }
            id = row.get::<_, Option<String>>(3).unwrap_or_default();
            let seconds = started.elapsed().as_secs_f64();
            info!(
                step = "3/5",
                read,
                written,
                of_about = estimate as u64,
                rows_per_s = (read as f64 / seconds.max(1e-3)) as u64,
                "rows copied so far"
            );
        }
    }
    Ok(read)
}

/// Step 4 (see the module documentation): how long it held the lock, or
/// `None` when `user_logins` was the view already.
async fn cutover(
    client: &mut Client,
    profile: Profile,
) -> Result<Option<std::time::Duration>, DbError> {
    let sql = format!(
        r#"DROP TRIGGER user_logins_narrow_insert ON user_logins;
DROP TRIGGER user_logins_narrow_update ON user_logins;
DROP TRIGGER user_logins_narrow_delete ON user_logins;
DROP TRIGGER user_logins_narrow_key ON user_logins;
DROP FUNCTION login_etl_narrow_mirror_insert(), login_etl_narrow_mirror_update(),
    login_etl_narrow_mirror_delete(), login_etl_narrow_key();
DROP TABLE user_logins_rows_copied;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'user_logins'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname, 'user_logins_wide_' || substr(r.relname, 13));
    END LOOP;
    ALTER TABLE user_logins RENAME TO user_logins_wide;
    COMMENT ON TABLE user_logins_wide IS 'login-etl: the table of before the narrow row, dropped by migrate';
    ALTER INDEX IF EXISTS user_logins_key RENAME TO user_logins_wide_key;
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'user_logins_rows'::regclass AND c.relname LIKE 'user\_logins\_rows\_%' LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', r.relname, 'user_logins_' || substr(r.relname, 18));
    END LOOP;
END
$$;
{schema}
;
DO $$
DECLARE
    g record;
BEGIN
    -- Whoever read or wrote the old table reads or writes through the view
    -- (its trigger stores a row as the owner): an adopter's own readers
    -- and writers, column by column where so granted. Login-etl's roles
    -- have what their kind has on the new objects already.
    FOR g IN SELECT DISTINCT a.grantee, a.privilege_type FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
             WHERE c.oid = 'user_logins_wide'::regclass AND a.privilege_type IN ('SELECT', 'INSERT')
               AND a.grantee <> c.relowner AND NOT EXISTS (SELECT 1 FROM user_logins_roles r WHERE r.role_name = pg_get_userbyid(a.grantee)) LOOP
        EXECUTE format('GRANT %s ON user_logins TO %s', g.privilege_type,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
    FOR g IN SELECT DISTINCT t.attname, a.grantee FROM pg_attribute t CROSS JOIN LATERAL aclexplode(t.attacl) a
             WHERE t.attrelid = 'user_logins_wide'::regclass AND NOT t.attisdropped AND a.privilege_type = 'SELECT'
               AND NOT EXISTS (SELECT 1 FROM user_logins_roles r WHERE r.role_name = pg_get_userbyid(a.grantee))
               AND EXISTS (SELECT 1 FROM pg_attribute v WHERE v.attrelid = 'user_logins'::regclass
                           AND v.attname = t.attname AND NOT v.attisdropped) LOOP
        EXECUTE format('GRANT SELECT (%I) ON user_logins TO %s', g.attname,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END);
    END LOOP;
END
$$"#,
        schema = schema_sql(migration_sql(profile), profile)
    );
    loop {
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
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
            Err(e) if Class::conflict_among(&e, &[Conflict::LockTimeout]) => {
                drop(tx);
                info!("cutover lock wait ran out (ingest goes first); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(failed("locking user_logins for the cutover")(e)),
        }
        let wide: bool = tx
            .query_typed_one(
                "SELECT relkind IN ('p', 'r') FROM pg_class WHERE oid = 'user_logins'::regclass",
                &[],
            )
            .await
            .map_err(failed("reading the catalog"))?
            .get(0);
        if !wide {
            return Ok(None);
        }
        // A drain the old maintain began since the copy (under the lock,
        // none can begin now).
        let draining: bool = tx
            .query_typed_one(DRAINING_SQL, &[])
            .await
            .map_err(failed("reading the catalog"))?
            .get(0);
        if draining {
            return Err(DrainUnderWay.into());
        }
        match tx.batch_execute(&sql).await {
            Ok(()) => {}
            // A lock of the schema's migration (another table's) waited
            // for: ingest goes first here too.
            Err(e) if Class::conflict_among(&e, &[Conflict::LockTimeout]) => {
                drop(tx);
                info!("a cutover lock wait ran out (ingest goes first); trying again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(failed("the cutover (nothing changed)")(e)),
        }
        tx.commit()
            .await
            .map_err(failed("committing the cutover (nothing changed)"))?;
        return Ok(Some(since.elapsed()));
    }
}
