//! One INSERT transaction in one round trip, in one of two forms:
//! - [`write_alone`]: the whole transaction as one statement
//!   ([`write_alone_sql`]: `login_etl_write_tx` sets its bounds, inserts
//!   (taking the lock), checks and reads the xid floor), committed by the Sync
//!   that ends it: one answer, one flush of the server's output. Every
//!   write takes it but these:
//! - [`insert_tx`], framed: the frame's `BEGIN` ([`super::tx`]), the
//!   lost-reply recount when asked, the write ([`WRITE_SQL`]: the erasure
//!   check and the `INSERT ... SELECT FROM UNNEST ... ON CONFLICT DO
//!   NOTHING` in one server-side function), then the shared end (vault
//!   entries + `COMMIT`), sent together and answered together: a write
//!   with vault entries, a recount, and a connection whose role stored an
//!   isolation level since it connected.
//!
//! Nothing outlives the transaction on the client's side: the statements
//! are unnamed (Parse ""). The INSERT's plan is kept by the server
//! connection, inside `login_etl_write` (migrations/functions/login_etl_write.sql) and
//! `login_etl_write_tx`, where a transaction-mode pooler cannot lose it.
//! Success means the server answered the COMMIT (or, for the one
//! statement, its Sync without an error); an error raised at commit (a
//! deferred constraint) is a failure like any other.

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::classify::{WriteFailure, classify};
use super::columns::{Columns, array_placeholders};
use crate::contract::columns::COLUMNS;
use super::tx::VaultRows;
use super::tx::{XidFloor, no_answer, vault_and_commit};
use crate::contract::LoginRow;
use crate::privacy::keys::Versions;

/// The bulk write: the erasure and key check (`login_etl_check_write`,
/// `Own::ErasuresChanged`/`Own::KeyVersionChanged`, see `tx::ERASED_SQL`) and one `INSERT ...
/// SELECT FROM UNNEST(...) ON CONFLICT DO NOTHING` for the whole batch, in
/// `login_etl_write` (migrations/functions/login_etl_write.sql); the rows inserted. The function
/// keeps the INSERT's plan per server connection: sent as a statement of
/// its own, it was parsed and planned again for every batch, about a third
/// of a batch of 10's time above its floor (docs/performance.md). Arrays
/// are bound as `varchar[]`, the columns' type: with `text[]` the server
/// coerces every value to `varchar(n)`, which made the statement 1.7x
/// slower for 10,000 rows (benches/batch_pg.rs).
///
/// `ON CONFLICT DO NOTHING` names no index on purpose: every unique index
/// of the partition a row lands in arbitrates, the key `(sent_at,
/// message_id, create_date)` and, on a table converted from before
/// partitions, its old unique `message_id` (see `schema::convert`).
pub static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT login_etl_write($1::int8, $2::int4, $3::int4, {})",
        array_placeholders(4)
    )
});

/// The write as the only statement of its transaction
/// (`login_etl_write_tx`, migrations/functions/login_etl_write_tx.sql):
/// its bounds, INSERT (and lock), check and the xid floor in one call, committed
/// by the Sync that ends it. The function is named by schema, as the
/// framed transaction's pinned search path would find it; no type is
/// named: the parameters' types go with them ([`write_alone`]).
pub(crate) fn write_alone_sql(tables_schema: &str) -> String {
    let params: Vec<String> = (1..=4 + COLUMNS.len()).map(|n| format!("${n}")).collect();
    format!(
        "SELECT {}.login_etl_write_tx({})",
        postgres_protocol::escape::escape_identifier(tables_schema),
        params.join(", ")
    )
}

/// After a lost reply: how many of these rows (by key) were written by
/// transactions that began at or after `$3`, the xid floor taken before the
/// lost attempt. Those rows are this invocation's own (see [`insert_tx`]).
/// The `sent_at = ANY` prunes the partitions the batch cannot touch.
/// Reading `xmin` needs `GRANT SELECT (message_id, sent_at, xmin)` on
/// `user_logins_rows`; without it the rows count as duplicates.
const RECOUNT_SQL: &str = "SELECT count(*) FROM user_logins_rows u \
    JOIN UNNEST($1::uuid[], $2::timestamptz[]) AS k(m, s) \
      ON u.message_id = k.m AND u.sent_at = k.s \
    WHERE u.sent_at = ANY($2::timestamptz[]) AND age(u.xmin) <= age(xid($3::text::xid8))";

/// What one committed INSERT transaction did.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Rows this invocation wrote: new now, plus (after a lost reply) those
    /// its lost attempt had already committed.
    pub inserted: u64,
    /// The xid floor for the next transaction of this sink.
    pub floor: Option<XidFloor>,
}

/// Runs one INSERT transaction for `rows` as one statement
/// ([`write_alone_sql`], `sql`), its lock waits bounded by `server_bound` on the
/// server: one message out, one answer back, committed when the answer
/// ends without an error (an error raised at commit comes before it). A
/// write the framed transaction must carry takes [`insert_tx`] (which:
/// `bisect::try_range`).
pub(crate) async fn write_alone(
    client: &Client,
    rows: &[&LoginRow<'_>],
    erased_version: Versions,
    sql: &str,
    server_bound: Duration,
    client_bound: Duration,
) -> Result<Committed, WriteFailure> {
    let cols = Columns::from(rows);
    let ms = i32::try_from(server_bound.as_millis().max(1)).unwrap_or(i32::MAX);
    let (key, from) = (
        i32::from(erased_version.key),
        i32::from(erased_version.checked_from),
    );
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&ms, Type::INT4),
        (&erased_version.erased, Type::INT8),
        (&key, Type::INT4),
        (&from, Type::INT4),
    ];
    params.extend(cols.typed_params());
    let row = match timeout(client_bound, client.query_typed_one(sql, &params)).await {
        Ok(answer) => answer.map_err(|e| classify(&e))?,
        Err(_) => return Err(no_answer(client_bound)),
    };
    // {inserted, the xid floor} (login_etl_write_tx).
    let answer: Vec<i64> = row.get(0);
    Ok(Committed {
        inserted: answer.first().map_or(0, |&n| n as u64),
        floor: answer.get(1).map(|&xid| XidFloor::of(xid as u64)),
    })
}

/// Runs one INSERT transaction for `rows`. With `recount_since` (the floor
/// taken before an attempt whose reply was lost), rows of the batch written
/// since then count as inserted by this invocation, not as duplicates.
pub(crate) async fn insert_tx(
    client: &Client,
    rows: &[&LoginRow<'_>],
    erased_version: Versions,
    begin: &str,
    client_bound: Duration,
    recount_since: Option<XidFloor>,
    vault: Option<&VaultRows<'_>>,
) -> Result<Committed, WriteFailure> {
    let cols = Columns::from(rows);
    let (key, from) = (
        i32::from(erased_version.key),
        i32::from(erased_version.checked_from),
    );
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&erased_version.erased, Type::INT8),
        (&key, Type::INT4),
        (&from, Type::INT4),
    ];
    params.extend(cols.typed_params());
    let since = recount_since.map(XidFloor::to_text);
    // The futures are polled in order, so the messages go out in order, in
    // one write: one round trip for the whole transaction.
    let pipeline = async {
        tokio::join!(
            client.batch_execute(begin),
            async {
                match &since {
                    Some(floor) => client
                        .query_typed_one(
                            RECOUNT_SQL,
                            &[
                                (&cols.message_id, Type::UUID_ARRAY),
                                (&cols.sent_at, Type::TIMESTAMPTZ_ARRAY),
                                (floor, Type::TEXT),
                            ],
                        )
                        .await
                        .map(|r| r.get::<_, i64>(0) as u64),
                    None => Ok(0),
                }
            },
            client.query_typed_one(&WRITE_SQL, &params),
            vault_and_commit(client, vault),
        )
    };
    let (begun, earlier, written, ended) = match timeout(client_bound, pipeline).await {
        Ok(answers) => answers,
        Err(_) => return Err(no_answer(client_bound)),
    };
    // The first failure in statement order is the cause; after it the server
    // skipped the rest and turned the COMMIT into a ROLLBACK.
    begun.map_err(|e| classify(&e))?;
    let earlier = earlier.map_err(|e| match e.code() {
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => WriteFailure::RecountDenied,
        _ => classify(&e),
    })?;
    let inserted = written.map_err(|e| classify(&e))?.get::<_, i64>(0) as u64;
    let floor = ended.map_err(|e| classify(&e))?;
    Ok(Committed {
        inserted: inserted + earlier,
        floor,
    })
}
