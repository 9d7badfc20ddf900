//! A schema or partition statement that failed, as a [`DbError`], and
//! the retries of a step that waited too long for its lock: what
//! `migrate`, `maintain` and retention share.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::info;

use crate::database::sqlstate::{Class, Conflict};
use crate::error::{DbError, describe};

/// A failed schema statement as a [`DbError`]: transient for what a
/// retry may fix (the connection, a lock timeout), fatal otherwise.
pub(crate) fn failed(op: &'static str) -> impl Fn(tokio_postgres::Error) -> DbError {
    move |e| {
        if Class::of(&e).is_transient() {
            DbError::Transient {
                op,
                cause: describe(&e),
            }
        } else {
            use tokio_postgres::error::SqlState;
            let code = e.code();
            // login-etl's own refusals (SQLSTATE LE…, raised by its SQL)
            // carry their fix as the server's hint: theirs, not a guess.
            if let Some(db) = e.as_db_error()
                && db.code().code().starts_with("LE")
                && let Some(own) = db.hint()
            {
                return DbError::Fatal {
                    op,
                    cause: describe(&e),
                    hint: format!("; {own}").into(),
                };
            }
            let hint = if code == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                "; the role lacks a privilege: `login-etl migrate` runs as the tables' owner, `login-etl maintain` as the role that `login-etl grants --role maintain` prints (docs/configuration.md, \"Database roles\")"
            } else if code == Some(&SqlState::UNDEFINED_FUNCTION)
                || code == Some(&SqlState::UNDEFINED_TABLE)
            {
                // Missing, or not visible: a role without USAGE on the
                // schema sees none of its objects.
                "; either `login-etl migrate` has not run on this database (run it as the tables' owner), or this role may not use the tables' schema: as the admin, `GRANT USAGE ON SCHEMA <the schema> TO <this role>` (README's deploy block does), then apply its `login-etl grants` as the tables' owner (docs/configuration.md, \"Database roles\")"
            } else {
                "; run `login-etl migrate` as the tables' owner (docs/configuration.md, \"Database roles\"); the error above says what PostgreSQL refused"
            };
            DbError::Fatal {
                op,
                cause: describe(&e),
                hint: hint.into(),
            }
        }
    }
}

/// How often a partition step is tried when its lock wait (100 ms,
/// migrations/0004) runs out, and the pause between tries: ingest never
/// waits longer than one lock wait, and the step still gets through
/// between two write transactions.
pub const LOCK_TRIES: u32 = 50;
const LOCK_PAUSE: Duration = Duration::from_millis(200);

/// Runs one partition step, again while it times out waiting for its lock;
/// when the last try runs out, the error names who holds a lock on the
/// tables then ([`lock_holders`]): what holds retention off is never silent.
pub(crate) async fn with_lock_retries<T, F, Fut>(
    client: &Client,
    op: &'static str,
    mut step: F,
) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    let mut tries = 0;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            // A deadlock too (the vault's purge beside the function's
            // updates of the same entries): each step is a transaction of
            // its own, so trying again is safe.
            Err(e)
                if Class::conflict_among(&e, &[Conflict::LockTimeout, Conflict::Deadlock])
                    && tries + 1 < LOCK_TRIES =>
            {
                tries += 1;
                info!(
                    op,
                    tries, "lock wait ran out or a deadlock (ingest goes first); trying again"
                );
                tokio::time::sleep(LOCK_PAUSE).await;
            }
            Err(e) if Class::conflict_among(&e, &[Conflict::LockTimeout]) => {
                let holders = lock_holders(client).await;
                return Err(match failed(op)(e) {
                    DbError::Transient { op, cause } => DbError::Transient {
                        op,
                        cause: format!("{cause}, {LOCK_TRIES} times; {holders}"),
                    },
                    other => other,
                });
            }
            Err(e) => return Err(failed(op)(e)),
        }
    }
}

/// The sessions holding a lock on the tables now, in this database (the
/// oldest transaction first where this role may see its start, at most
/// five sessions): pid, role, the locks and relations, since when; and the
/// statements that end one and keep it from coming back. Names and numbers
/// only: no query text. Another role's transaction start is hidden from
/// the maintain role, so the oldest is named only when it is visible.
pub(crate) async fn lock_holders(client: &Client) -> String {
    const HOLDERS_SQL: &str = "SELECT l.pid, coalesce(a.usename::text, ''),             pg_catalog.string_agg(DISTINCT l.mode OPERATOR(pg_catalog.||) ' on ' OPERATOR(pg_catalog.||) c.relname::text, ', '),             pg_catalog.min(a.xact_start)::text, pg_catalog.current_database()::text         FROM pg_catalog.pg_locks l         JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.relation         LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid OPERATOR(pg_catalog.=) l.pid         WHERE l.granted AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()           AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d               WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())           AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[])           AND c.relnamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n               WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema())           AND pg_catalog.starts_with(c.relname::text, 'user_logins')         GROUP BY l.pid, a.usename         ORDER BY pg_catalog.min(a.xact_start) NULLS LAST, l.pid LIMIT 5";
    let rows = match client.query_typed(HOLDERS_SQL, &[]).await {
        Ok(rows) => rows,
        Err(e) => return format!("who holds the lock could not be read ({})", describe(&e)),
    };
    if rows.is_empty() {
        return "no session holds a lock on the tables now (the holder ended): run it again".into();
    }
    let held: Vec<String> = rows
        .iter()
        .map(|r| {
            let (pid, role): (Option<i32>, String) = (r.get(0), r.get(1));
            let since: Option<String> = r.get(3);
            match pid {
                None => format!("a prepared transaction ({})", r.get::<_, String>(2)),
                Some(pid) => format!(
                    "pid {pid} (role {}, {}, {})",
                    if role.is_empty() { "?" } else { &role },
                    r.get::<_, String>(2),
                    since.map_or_else(
                        || "its transaction's start not visible to this role".to_owned(),
                        |t| format!("in a transaction since {t}")
                    ),
                ),
            }
        })
        .collect();
    let database: String = rows[0].get(4);
    let oldest = &rows[0];
    let fix = match (
        oldest.get::<_, Option<i32>>(0),
        oldest.get::<_, Option<String>>(3),
    ) {
        (Some(pid), Some(_)) if !oldest.get::<_, String>(1).is_empty() => format!(
            "As an admin, end the oldest: SELECT pg_terminate_backend({pid}); and keep it from coming back: ALTER ROLE {} IN DATABASE {} SET idle_in_transaction_session_timeout = '10min'",
            postgres_protocol::escape::escape_identifier(&oldest.get::<_, String>(1)),
            postgres_protocol::escape::escape_identifier(&database)
        ),
        _ => format!(
            "As an admin, find which of them has held its transaction longest (pg_stat_activity.xact_start, state 'idle in transaction') and end it: SELECT pg_terminate_backend(<its pid>); keep it from coming back: ALTER ROLE <its role> IN DATABASE {} SET idle_in_transaction_session_timeout = '10min'",
            postgres_protocol::escape::escape_identifier(&database)
        ),
    };
    format!("held now by {}. {fix} (docs/insiders.md)", held.join(", "))
}
