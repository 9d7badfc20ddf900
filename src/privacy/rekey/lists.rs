//! The lists a re-key moves (steps 2 and 5): the erasure list's user keys
//! and the audit trail's tokens and user keys, a chunk of entries per
//! transaction (the owner's `login_etl_rekey_*` functions, migrations/functions/).

use tokio_postgres::Client;
use tokio_postgres::types::Type;

use super::RekeyError;
use crate::database::statement::Statement;
use crate::privacy::masking::Masker;

/// Erasure-list entries (or audit records) re-keyed per transaction.
const LIST_CHUNK: i64 = 1_000;

/// Moves the erasure list's entries still at `to - 1` to `to`, a chunk of
/// user keys per transaction (the owner's `login_etl_rekey_erased_chunk`);
/// the entries it moved.
pub(super) async fn rekey_erasure_list(
    client: &Client,
    masker: &Masker,
    to: u16,
) -> Result<u64, RekeyError> {
    let users = masker.users();
    let from = (to - 1) as i16;
    let mut done = 0u64;
    loop {
        const ERASED_AT: Statement = Statement::new(
            "SELECT user_key FROM user_logins_erased WHERE key_version = $1 LIMIT $2",
            &[Type::INT2, Type::INT8],
            "reading the erasure list",
        );
        let old: Vec<String> = ERASED_AT.column(client, &[&from, &LIST_CHUNK]).await?;
        if old.is_empty() {
            return Ok(done);
        }
        let new: Vec<String> = old
            .iter()
            .map(|k| users.rekey_text(k, to).as_str().to_owned())
            .collect();
        const REKEY_ERASED: Statement = Statement::new(
            "SELECT login_etl_rekey_erased_chunk($1, $2, $3)",
            &[Type::TEXT_ARRAY, Type::TEXT_ARRAY, Type::INT2],
            "re-keying a chunk of the erasure list",
        );
        let moved: i64 = REKEY_ERASED.value(client, &[&old, &new, &from]).await?;
        done += moved as u64;
    }
}

/// Moves the audit trail's tokens and user keys to `to`: each record from
/// its own version, one step of the chain at a time (the owner's
/// `login_etl_audit_to_rekey` and `login_etl_rekey_audit_chunk`); the
/// records it moved.
pub(super) async fn rekey_audit(
    client: &Client,
    masker: &Masker,
    to: u16,
) -> Result<u64, RekeyError> {
    let to_version = to as i16;
    let (mut after, mut done) = (0i64, 0u64);
    loop {
        let chunk = LIST_CHUNK as i32;
        const AUDIT_TO_REKEY: Statement = Statement::new(
            "SELECT id, token, user_key, key_version FROM login_etl_audit_to_rekey($1, $2, $3)",
            &[Type::INT2, Type::INT8, Type::INT4],
            "reading the audit records to re-key",
        );
        let rows = AUDIT_TO_REKEY
            .rows(client, &[&to_version, &after, &chunk])
            .await?;
        let Some(last) = rows.last() else {
            return Ok(done);
        };
        after = last.get(0);
        let mut ids = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        let mut user_keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let from = r.get::<_, i16>(3).max(1) as u16;
            let step = |mut text: String, users: bool| {
                for v in from + 1..=to {
                    text = if users {
                        masker.users().rekey_text(&text, v)
                    } else {
                        masker.rekey_text(&text, v)
                    }
                    .as_str()
                    .to_owned();
                }
                text
            };
            ids.push(r.get::<_, i64>(0));
            tokens.push(r.get::<_, Option<String>>(1).map(|t| step(t, false)));
            user_keys.push(r.get::<_, Option<String>>(2).map(|k| step(k, true)));
        }
        const REKEY_AUDIT: Statement = Statement::new(
            "SELECT login_etl_rekey_audit_chunk($1, $2, $3, $4)",
            &[
                Type::INT8_ARRAY,
                Type::TEXT_ARRAY,
                Type::TEXT_ARRAY,
                Type::INT2,
            ],
            "re-keying a chunk of the audit trail",
        );
        let moved: i64 = REKEY_AUDIT
            .value(client, &[&ids, &tokens, &user_keys, &to_version])
            .await?;
        done += moved as u64;
    }
}
