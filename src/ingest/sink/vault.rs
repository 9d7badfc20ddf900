//! The PII vault's writes: the data key and the sealed entries of a
//! transaction's rows, in that transaction (see [`crate::privacy::vault`] for the
//! encryption, `tx::vault_and_commit` for where they are sent).

use chrono::NaiveDate;
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use std::ops::Range;

use crate::privacy::vault::{DataKey, Sealed, VaultWrite};

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
