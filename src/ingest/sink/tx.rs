//! The frame every framed write transaction shares, INSERT and COPY alike
//! (the INSERT path's one statement, `insert::write_alone`, sets its own
//! bounds and has none): its `BEGIN` (server-side bounds, the table lock)
//! and its end (the PII vault's entries of its rows, sealed under their
//! data key, then `COMMIT` and the next xid floor: see
//! `crate::privacy::vault` for the encryption); and the erasure check,
//! which COPY sends as a statement of its own and the INSERT runs inside
//! its write function (`insert::WRITE_SQL`, or `login_etl_write_tx`).
//!
//! Nothing outlives the transaction: the server-side bounds are `SET LOCAL`,
//! so a transaction-mode pooler may hand the next transaction to any server
//! connection. Success means the server answered the COMMIT.

use std::ops::Range;
use std::time::Duration;

use chrono::NaiveDate;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::classify::WriteFailure;
use crate::database::stored_settings::OWNERS_SCHEMA_SQL;
use crate::privacy::keys::Versions;
use crate::privacy::vault::{DataKey, Sealed, VaultWrite};

/// `BEGIN` with the server-side bounds of this transaction only, the
/// transaction's search path (`pg_catalog`, then `tables_schema`, the
/// schema of the `user_logins` the tables' owner made, then `pg_temp`),
/// then the lock every write takes anyway (ROW EXCLUSIVE) on the
/// partitioned parent, taken first so that `login-etl forget` (SHARE ROW
/// EXCLUSIVE on the parent, for a moment) either commits its erasure before
/// the erasure check ([`ERASED_SQL`], or the same inside
/// `insert::WRITE_SQL`) or waits for this transaction to end. `ONLY`: a
/// plain `LOCK TABLE` on a partitioned table locks every partition, a
/// lock-table slot each, in every write transaction.
///
/// The path is pinned in every transaction: the session's own is checked
/// at connect (`database::stored_settings`), but one a role stores later
/// reaches a pooler's new server connections before the function
/// reconnects. `tables_schema` is resolved once, by the sink's first
/// connection ([`OWNERS_SCHEMA_SQL`]: a table of the same name that the
/// role itself made comes last, so a plant never takes the batch); a
/// catalog query here cost a batch of 10 a third of its database time.
pub(crate) fn begin_sql(server_bound: Duration, tables_schema: &str) -> String {
    let ms = server_bound.as_millis().max(1);
    let schema = postgres_protocol::escape::escape_identifier(tables_schema);
    format!(
        "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; \
         {DURABLE_COMMIT_SQL}; SET LOCAL search_path = pg_catalog, {schema}, pg_temp; \
         LOCK TABLE ONLY user_logins_rows IN ROW EXCLUSIVE MODE"
    )
}

/// The schema of the `user_logins` the tables' owner made, as
/// [`begin_sql`] pins it: read once per sink.
pub(crate) async fn tables_schema(
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(client
        .query_typed_opt(OWNERS_SCHEMA_SQL, &[])
        .await?
        .map(|row| row.get(0)))
}

/// A durable COMMIT whatever the session's default (a role may store
/// `synchronous_commit = off` for itself after the function connected,
/// and a pooler's next server connection takes it): the messages are
/// deleted from SQS once COMMIT answers. Weaker levels only are raised
/// (`remote_apply` and the like are kept).
pub(crate) const DURABLE_COMMIT_SQL: &str = "SELECT pg_catalog.set_config('synchronous_commit', 'on', true) \
     WHERE pg_catalog.current_setting('synchronous_commit') OPERATOR(pg_catalog.=) 'off'";

/// The write check: raises `Own::ErasuresChanged` (the transaction is refused)
/// when the erasure list has grown past the version the batch was filtered
/// with (`login-etl forget` erased someone since), `Own::KeyVersionChanged` when the key
/// version is no longer the batch's (`login-etl rotate-key` began), and
/// `Own::ErasuresChanged` while the list holds keys older than the batch's users were
/// checked at. `login_etl_check_write` (migrations/functions/) is
/// `login_etl_refuse_erased` (its own file there) reading the key state once.
pub(crate) const ERASED_SQL: &str = "SELECT login_etl_check_write($1::int8, $2::int4, $3::int4)";

/// The write check against `known` ([`ERASED_SQL`]).
pub(crate) async fn refuse_erased(
    client: &Client,
    known: Versions,
) -> Result<(), tokio_postgres::Error> {
    let (key, from) = (i32::from(known.key), i32::from(known.checked_from));
    client
        .query_typed(
            ERASED_SQL,
            &[
                (&known.erased, Type::INT8),
                (&key, Type::INT4),
                (&from, Type::INT4),
            ],
        )
        .await
        .map(|_| ())
}

/// `COMMIT`, then the xid floor: the first transaction id not yet assigned,
/// so a row with a newer `xmin` was written after this commit.
pub(crate) const COMMIT_SQL: &str = "COMMIT; SELECT pg_snapshot_xmax(pg_current_snapshot())::text";

/// The end of every write transaction: the vault entries of its rows, then
/// [`COMMIT_SQL`], sent together (and with whatever the caller sent before,
/// in one round trip). A failed vault statement turns the COMMIT into a
/// ROLLBACK, so a row never commits without its entries. The error is the
/// first in statement order; the caller's policy decides what it means (see
/// [`WriteFailure`]: a transient one leaves the COMMIT's outcome unknown).
pub(crate) async fn vault_and_commit(
    client: &Client,
    vault: Option<&VaultRows<'_>>,
) -> Result<Option<XidFloor>, tokio_postgres::Error> {
    let (vaulted, committed) =
        tokio::join!(write_vault(client, vault), client.simple_query(COMMIT_SQL));
    vaulted?;
    Ok(XidFloor::from_answer(&committed?))
}

/// The xid floor after a confirmed transaction of this sink: the first
/// transaction id not yet assigned then. After a lost COMMIT reply, the
/// batch's rows whose `xmin` is at or past the floor taken before the lost
/// attempt are this sink's own (see `insert::RECOUNT_SQL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XidFloor(u64);

impl XidFloor {
    /// The floor `xid` (an `xid8`'s value).
    pub(crate) fn of(xid: u64) -> Self {
        Self(xid)
    }

    /// A floor from its text form (an `xid8` printed by the server).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        text.parse().ok().map(Self)
    }

    /// The floor in the answer to [`COMMIT_SQL`] (or any query that selects it).
    fn from_answer(messages: &[SimpleQueryMessage]) -> Option<Self> {
        messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(Self::parse),
            _ => None,
        })
    }

    /// The text the recount binds (`$2::text::xid8`).
    pub(crate) fn to_text(self) -> String {
        self.0.to_string()
    }
}

/// A client-side bound ran out: the connection's state is unknown.
pub(crate) fn no_answer(bound: Duration) -> WriteFailure {
    WriteFailure::Transient(format!("no answer within {} ms", bound.as_millis()))
}

/// The data key and the entries of the transaction's rows, stored by the
/// owner's `login_etl_store_vault` (migrations/functions/): an entry stored
/// already is kept, its `last_seen` moved forward to the latest day of the
/// rows that use it (`maintain` deletes an entry no row within retention
/// uses), no further than today. The ingest role holds no privilege on the
/// vault's tables; the function locks entries in the order every vault
/// writer shares, so rotate-key and forget beside it never deadlock with it.
const STORE_SQL: &str = "SELECT login_etl_store_vault($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// The vault entries one transaction writes beside its rows.
pub(crate) struct VaultRows<'a> {
    /// The data key the entries are sealed under.
    pub key: &'a DataKey,
    /// The entries of exactly the transaction's rows, each with the latest
    /// `create_date` of those rows that use it.
    pub entries: Vec<(&'a Sealed, NaiveDate)>,
    /// Their tokens' key version.
    pub key_version: i16,
}

impl<'a> VaultRows<'a> {
    /// The entries of the batch's rows `rows` (indices in the order the
    /// vault batch was filled), for the transaction that writes those rows.
    pub(crate) fn of(write: VaultWrite<'a>, rows: Range<usize>) -> Self {
        Self {
            key: write.key,
            entries: write.batch.entries_for(rows),
            key_version: write.batch.key_version as i16,
        }
    }
}

/// Writes `vault` (its statements sent at once); nothing without a vault.
async fn write_vault(
    client: &Client,
    vault: Option<&VaultRows<'_>>,
) -> Result<(), tokio_postgres::Error> {
    let Some(v) = vault else {
        return Ok(());
    };
    let kinds: Vec<&str> = v.entries.iter().map(|(e, _)| e.kind.as_str()).collect();
    let tokens: Vec<&str> = v.entries.iter().map(|(e, _)| e.token.as_str()).collect();
    let nonces: Vec<&[u8]> = v.entries.iter().map(|(e, _)| &e.nonce[..]).collect();
    let ciphertexts: Vec<&[u8]> = v
        .entries
        .iter()
        .map(|(e, _)| e.ciphertext.as_slice())
        .collect();
    let days: Vec<NaiveDate> = v.entries.iter().map(|&(_, day)| day).collect();
    let (key_id, kms_key_id, wrapped) = (v.key.id(), v.key.kms_key_id(), v.key.wrapped());
    let aad_version = crate::privacy::vault::AAD_VERSION;
    let params: [(&(dyn ToSql + Sync), Type); 10] = [
        (&key_id, Type::VARCHAR),
        (&kms_key_id, Type::VARCHAR),
        (&wrapped, Type::BYTEA),
        (&kinds, Type::VARCHAR_ARRAY),
        (&tokens, Type::VARCHAR_ARRAY),
        (&nonces, Type::BYTEA_ARRAY),
        (&ciphertexts, Type::BYTEA_ARRAY),
        (&days, Type::DATE_ARRAY),
        (&v.key_version, Type::INT2),
        (&aad_version, Type::INT2),
    ];
    client.query_typed(STORE_SQL, &params).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_is_the_servers_xid8_text_and_nothing_else() {
        let floor = XidFloor::parse("18446744073709551615").expect("the largest xid8");
        assert_eq!(floor.to_text(), "18446744073709551615");
        assert_eq!(
            XidFloor::parse("123").map(XidFloor::to_text).as_deref(),
            Some("123")
        );
        for bad in ["", "-1", "12a", "18446744073709551616"] {
            assert_eq!(XidFloor::parse(bad), None, "{bad}");
        }
    }
}
