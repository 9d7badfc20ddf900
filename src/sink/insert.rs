//! One INSERT transaction, pipelined into one round trip:
//! `BEGIN; SET LOCAL ...` + the unnamed `INSERT ... SELECT FROM UNNEST ...
//! ON CONFLICT DO NOTHING` + `COMMIT`, sent together and answered together.
//!
//! Nothing outlives the transaction: the statement is unnamed (Parse ""),
//! the server-side bounds are `SET LOCAL`, so a transaction-mode pooler may
//! hand the next transaction to any server connection. Success means the
//! server answered the COMMIT; an error raised at COMMIT (a deferred
//! constraint) is a failure like any other.

use std::time::Duration;

use chrono::NaiveDate;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::classify::{Failure, classify};
use crate::record::LoginRow;
use crate::vault::{DataKey, Sealed};

/// The bulk insert: one statement for the whole batch. Arrays are bound as
/// `varchar[]`, the columns' type: with `text[]` the server coerces every
/// value to `varchar(n)`, which made the statement 1.7x slower for 10,000
/// rows (benches/batch_pg.rs).
pub const INSERT_SQL: &str = "INSERT INTO user_logins \
    (message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, app_version_text, create_date) \
    SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::int4[], $8::varchar[], $9::date[]) \
    ON CONFLICT (message_id) DO NOTHING";

/// After a lost reply: how many of these message ids were written by
/// transactions that began at or after `$2`, the xid floor taken before the
/// lost attempt. Those rows are this invocation's own (see [`insert_tx`]).
/// Reading `xmin` needs `GRANT SELECT (message_id, xmin)`; without it the
/// rows count as duplicates.
const RECOUNT_SQL: &str = "SELECT count(*) FROM user_logins \
    WHERE message_id = ANY($1::varchar[]) AND age(xmin) <= age(xid($2::text::xid8))";

/// `BEGIN` with the server-side bounds of this transaction only, then the
/// table lock every write takes anyway (ROW EXCLUSIVE), taken first so that
/// `login-etl forget` (SHARE ROW EXCLUSIVE) either finishes before the
/// erasure check ([`ERASED_SQL`]) or waits for this transaction to end.
pub(crate) fn begin_sql(server_bound: Duration) -> String {
    let ms = server_bound.as_millis().max(1);
    format!(
        "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; \
         LOCK TABLE user_logins IN ROW EXCLUSIVE MODE"
    )
}

/// The erasure check: raises SQLSTATE `LE001` (the transaction is refused)
/// when the erasure list has grown past the version the batch was filtered
/// with (`login-etl forget` erased someone since).
pub(crate) const ERASED_SQL: &str = "SELECT login_etl_refuse_erased($1::int8)";

/// The erasure check against `known`, the list's version ([`ERASED_SQL`]).
pub(crate) async fn refuse_erased(
    client: &Client,
    known: i64,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(ERASED_SQL, &[(&known, Type::INT8)])
        .await
        .map(|_| ())
}

/// The erasure list and its version, in one statement (one snapshot).
pub(crate) const ERASED_LIST_SQL: &str =
    "SELECT coalesce(max(seq), 0), coalesce(array_agg(user_key), '{}') FROM user_logins_erased";

/// `COMMIT`, then the xid floor: the first transaction id not yet assigned,
/// so a row with a newer `xmin` was written after this commit.
pub(crate) const COMMIT_SQL: &str = "COMMIT; SELECT pg_snapshot_xmax(pg_current_snapshot())::text";

/// The xid floor from the answer to [`COMMIT_SQL`] (or any query that
/// selects it).
pub(crate) fn floor_of(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// The data key, stored once per key (its id is derived from the wrapped bytes).
const VAULT_KEY_SQL: &str = "INSERT INTO user_logins_vault_keys (key_id, kms_key_id, wrapped_key) \
    VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING";

/// The vault entries of the rows in the same transaction; an entry another
/// row or batch stored already is kept as it is.
const VAULT_SQL: &str = "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext) \
    SELECT k, t, $3, n, c FROM UNNEST($1::varchar[], $2::varchar[], $4::bytea[], $5::bytea[]) AS u(k, t, n, c) \
    ON CONFLICT (kind, token) DO NOTHING";

/// The vault entries one transaction writes beside its rows.
pub(crate) struct VaultRows<'a> {
    pub key: &'a DataKey,
    pub entries: Vec<&'a Sealed>,
}

/// Writes `vault` (both statements sent at once); nothing without a vault.
pub(crate) async fn write_vault(
    client: &Client,
    vault: Option<&VaultRows<'_>>,
) -> Result<(), tokio_postgres::Error> {
    let Some(v) = vault else {
        return Ok(());
    };
    let kinds: Vec<&str> = v.entries.iter().map(|e| e.kind.as_str()).collect();
    let tokens: Vec<&str> = v.entries.iter().map(|e| e.token.as_str()).collect();
    let nonces: Vec<&[u8]> = v.entries.iter().map(|e| &e.nonce[..]).collect();
    let ciphertexts: Vec<&[u8]> = v.entries.iter().map(|e| e.ciphertext.as_slice()).collect();
    let (key_id, kms_key_id, wrapped) = (v.key.id(), v.key.kms_key_id(), v.key.wrapped());
    let key_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&key_id, Type::VARCHAR),
        (&kms_key_id, Type::VARCHAR),
        (&wrapped, Type::BYTEA),
    ];
    let entry_params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&kinds, Type::VARCHAR_ARRAY),
        (&tokens, Type::VARCHAR_ARRAY),
        (&key_id, Type::VARCHAR),
        (&nonces, Type::BYTEA_ARRAY),
        (&ciphertexts, Type::BYTEA_ARRAY),
    ];
    let (stored, written) = tokio::join!(
        client.execute_typed(VAULT_KEY_SQL, &key_params),
        client.execute_typed(VAULT_SQL, &entry_params),
    );
    stored.and(written).map(|_| ())
}

/// What one committed INSERT transaction did.
#[derive(Debug, Default)]
pub(crate) struct Committed {
    /// Rows this invocation wrote: new now, plus (after a lost reply) those
    /// its lost attempt had already committed.
    pub inserted: u64,
    /// The xid floor for the next transaction of this sink.
    pub floor: Option<String>,
}

/// Runs one INSERT transaction for `rows`. With `recount_since` (the floor
/// taken before an attempt whose reply was lost), rows of the batch written
/// since then count as inserted by this invocation, not as duplicates.
pub(crate) async fn insert_tx(
    client: &Client,
    rows: &[LoginRow<'_>],
    erased_version: i64,
    server_bound: Duration,
    client_bound: Duration,
    recount_since: Option<&str>,
    vault: Option<&VaultRows<'_>>,
) -> Result<Committed, Failure> {
    let cols = Columns::from(rows);
    let params = cols.typed_params();
    let begin = begin_sql(server_bound);
    // The futures are polled in order, so the messages go out in order, in
    // one write: one round trip for the whole transaction.
    let pipeline = async {
        tokio::join!(
            client.batch_execute(&begin),
            refuse_erased(client, erased_version),
            async {
                match recount_since {
                    Some(floor) => client
                        .query_typed_one(
                            RECOUNT_SQL,
                            &[
                                (&cols.message_id, Type::VARCHAR_ARRAY),
                                (&floor, Type::TEXT),
                            ],
                        )
                        .await
                        .map(|r| r.get::<_, i64>(0) as u64),
                    None => Ok(0),
                }
            },
            client.execute_typed(INSERT_SQL, &params),
            write_vault(client, vault),
            client.simple_query(COMMIT_SQL),
        )
    };
    let (begun, allowed, earlier, inserted, vaulted, committed) =
        match timeout(client_bound, pipeline).await {
            Ok(answers) => answers,
            Err(_) => return Err(no_answer(client_bound)),
        };
    // The first failure in statement order is the cause; after it the server
    // skipped the rest and turned the COMMIT into a ROLLBACK.
    begun.map_err(|e| classify(&e))?;
    allowed.map_err(|e| classify(&e))?;
    let earlier = earlier.map_err(|e| match e.code() {
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => Failure::RecountDenied,
        _ => classify(&e),
    })?;
    let inserted = inserted.map_err(|e| classify(&e))?;
    vaulted.map_err(|e| classify(&e))?;
    let floor = floor_of(&committed.map_err(|e| classify(&e))?);
    Ok(Committed {
        inserted: inserted + earlier,
        floor,
    })
}

/// A client-side bound ran out: the connection's state is unknown.
pub(crate) fn no_answer(bound: Duration) -> Failure {
    Failure::Transient(format!("no answer within {} ms", bound.as_millis()))
}

/// Column-major parameters for one statement.
struct Columns<'r> {
    message_id: Vec<&'r str>,
    user_id: Vec<&'r str>,
    device_type: Vec<&'r str>,
    masked_ip: Vec<&'r str>,
    masked_device_id: Vec<&'r str>,
    locale: Vec<Option<&'r str>>,
    app_version: Vec<i32>,
    app_version_text: Vec<&'r str>,
    create_date: Vec<NaiveDate>,
}

impl<'r> Columns<'r> {
    fn from(rows: &'r [LoginRow<'_>]) -> Self {
        Self {
            message_id: rows.iter().map(|r| r.message_id).collect(),
            user_id: rows.iter().map(|r| &*r.user_id).collect(),
            device_type: rows.iter().map(|r| &*r.device_type).collect(),
            masked_ip: rows.iter().map(|r| r.masked_ip.as_str()).collect(),
            masked_device_id: rows.iter().map(|r| r.masked_device_id.as_str()).collect(),
            locale: rows.iter().map(|r| r.locale.as_deref()).collect(),
            app_version: rows.iter().map(|r| r.app_version).collect(),
            app_version_text: rows.iter().map(|r| &*r.app_version_text).collect(),
            create_date: rows.iter().map(|r| r.create_date).collect(),
        }
    }

    fn typed_params(&self) -> [(&(dyn ToSql + Sync), Type); 9] {
        [
            (&self.message_id, Type::VARCHAR_ARRAY),
            (&self.user_id, Type::VARCHAR_ARRAY),
            (&self.device_type, Type::VARCHAR_ARRAY),
            (&self.masked_ip, Type::VARCHAR_ARRAY),
            (&self.masked_device_id, Type::VARCHAR_ARRAY),
            (&self.locale, Type::VARCHAR_ARRAY),
            (&self.app_version, Type::INT4_ARRAY),
            (&self.app_version_text, Type::VARCHAR_ARRAY),
            (&self.create_date, Type::DATE_ARRAY),
        ]
    }
}
