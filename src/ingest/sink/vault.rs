//! The PII vault's writes: the data key and the sealed entries of a
//! transaction's rows, in that transaction (see [`crate::privacy::vault`] for the
//! encryption, `tx::vault_and_commit` for where they are sent).

use chrono::NaiveDate;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use std::ops::Range;

use crate::privacy::vault::{DataKey, Sealed, VaultWrite};

/// The data key, stored once per key (its id is derived from the wrapped bytes).
const VAULT_KEY_SQL: &str = "INSERT INTO user_logins_vault_keys (key_id, kms_key_id, wrapped_key) \
    VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING";

/// An entry's `last_seen` moved to the latest day of the transaction's rows
/// that use it, where behind (migrations/0008: `maintain` deletes an entry
/// no row within retention uses). Only the entries that are behind, at
/// most once per entry and day: an INSERT ... ON CONFLICT DO UPDATE would
/// lock every entry the batch shares with other writers, in every batch.
///
/// Sent before [`VAULT_SQL`], as a statement of its own: against
/// `maintain`'s purge, an entry this UPDATE moved is locked until the
/// COMMIT (the purge then skips it), and one the purge deleted first is not
/// there for the INSERT to conflict with, so it is stored again. (In one
/// statement, as a data-modifying CTE, the UPDATE ran after the INSERT, and
/// an entry purged between the two was lost: the soak, seed 1.) And sent
/// again after it: an entry another transaction was inserting (a batch
/// with an older row, rotate-key's chunk, forget's put-back) is invisible
/// to the first UPDATE; the INSERT waits for it to commit, and the second
/// UPDATE then moves it forward. Left open: that entry, committed with a
/// day already past retention, purged in the microseconds between the
/// INSERT and the second UPDATE.
const VAULT_SEEN_SQL: &str = "UPDATE user_logins_pii_vault v SET last_seen = m.d \
    FROM UNNEST($1::varchar[], $2::varchar[], $3::date[]) AS m(k, t, d) \
    WHERE v.kind = m.k AND v.token = m.t AND v.last_seen < m.d";

/// The vault entries of the rows in the same transaction; an entry another
/// row or batch stored already is kept as it is (its `last_seen` moved by
/// [`VAULT_SEEN_SQL`] first).
const VAULT_SQL: &str = "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen) \
    SELECT k, t, $3, n, c, $6, $7, d FROM UNNEST($1::varchar[], $2::varchar[], $4::bytea[], $5::bytea[], $8::date[]) AS u(k, t, n, c, d) \
    ON CONFLICT (kind, token) DO NOTHING";

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
pub(crate) async fn write(
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
    let key_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&key_id, Type::VARCHAR),
        (&kms_key_id, Type::VARCHAR),
        (&wrapped, Type::BYTEA),
    ];
    let aad_version = crate::privacy::vault::AAD_VERSION;
    let entry_params: [(&(dyn ToSql + Sync), Type); 8] = [
        (&kinds, Type::VARCHAR_ARRAY),
        (&tokens, Type::VARCHAR_ARRAY),
        (&key_id, Type::VARCHAR),
        (&nonces, Type::BYTEA_ARRAY),
        (&ciphertexts, Type::BYTEA_ARRAY),
        (&v.key_version, Type::INT2),
        (&aad_version, Type::INT2),
        (&days, Type::DATE_ARRAY),
    ];
    let seen_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&kinds, Type::VARCHAR_ARRAY),
        (&tokens, Type::VARCHAR_ARRAY),
        (&days, Type::DATE_ARRAY),
    ];
    // Polled in order, so sent in this order, in the caller's round trip.
    let (stored, seen, written, seen_again) = tokio::join!(
        client.execute_typed(VAULT_KEY_SQL, &key_params),
        client.execute_typed(VAULT_SEEN_SQL, &seen_params),
        client.execute_typed(VAULT_SQL, &entry_params),
        client.execute_typed(VAULT_SEEN_SQL, &seen_params),
    );
    stored.and(seen).and(written).and(seen_again).map(|_| ())
}
