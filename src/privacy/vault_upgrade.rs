//! `login-etl vault-upgrade`: vault entries from before key versions,
//! sealed again so that a re-key can move them (compatibility: goes in the
//! first release after 0.3.0 whose upgrade notes have every deployment run
//! it first).

use std::collections::HashMap;

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use crate::database::statement::Statement;
use crate::privacy::reveal::{RevealError, db};
use crate::privacy::vault::{DataKey, Kind};

/// Re-seals the vault entries of associated-data form 1 (from before key
/// versions: bound to their token, which a re-key changes) in form 2, for
/// the caller `caller_arn`, chunk by chunk: each entry is decrypted in
/// memory under its data key (KMS `Decrypt`, once per key), sealed again
/// under the same key with a fresh nonce, and updated in place; the value
/// never leaves the process. One audit record (`vault_upgrade`, with the
/// count, through the owner's `login_etl_audit`) per run. Runs as the
/// upgrade role (`login-etl grants --role upgrade`) with `kms:Decrypt` on
/// `vault_key`. `login-etl rotate-key` refuses to start while entries of
/// form 1 exist. Returns the entries re-sealed.
pub async fn upgrade_vault(
    client: &mut Client,
    kms: &aws_sdk_kms::Client,
    vault_key: &str,
    caller_arn: &str,
) -> Result<u64, RevealError> {
    let mut keys: HashMap<String, DataKey> = HashMap::new();
    let mut done = 0u64;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a chunk of the vault"))?;
        const OLD_FORM: Statement = Statement::new(
            "SELECT v.kind, v.token, v.key_id, v.nonce, v.ciphertext, k.wrapped_key \
             FROM user_logins_pii_vault v JOIN user_logins_vault_keys k USING (key_id) \
             WHERE v.aad_version = 1 ORDER BY v.kind, v.token LIMIT 1000 FOR UPDATE OF v",
            &[],
            "reading entries of the old form",
        );
        let rows = OLD_FORM.rows(&tx, &[]).await?;
        if rows.is_empty() {
            let n = done as i64;
            const AUDIT: Statement = Statement::new(
                "SELECT login_etl_audit('vault_upgrade', $1, NULL, NULL, NULL, \
                 jsonb_build_object('entries_resealed', $2::int8))",
                &[Type::TEXT, Type::INT8],
                "writing the audit record",
            );
            AUDIT.rows(&tx, &[&caller_arn, &n]).await?;
            tx.commit()
                .await
                .map_err(db("committing the audit record"))?;
            return Ok(done);
        }
        let (mut kinds, mut tokens, mut nonces, mut ciphertexts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            let (kind, token, key_id): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let kind = Kind::parse(&kind).ok_or_else(|| RevealError::Db {
                op: "reading entries of the old form",
                cause: format!("an entry of unknown kind {kind}"),
            })?;
            if !keys.contains_key(&key_id) {
                keys.insert(
                    key_id.clone(),
                    DataKey::unwrap(kms, r.get(5), vault_key).await?,
                );
            }
            let key = &keys[&key_id];
            let value = key.open(kind, &token, 1, r.get(3), r.get(4))?;
            let sealed = key.seal(kind, &token, &value);
            kinds.push(kind.as_str().to_owned());
            tokens.push(token);
            nonces.push(sealed.nonce.to_vec());
            ciphertexts.push(sealed.ciphertext);
        }
        let aad = crate::privacy::vault::AAD_VERSION;
        const RESEAL: Statement = Statement::new(
            "UPDATE user_logins_pii_vault v SET nonce = u.n, ciphertext = u.c, aad_version = $5 \
             FROM unnest($1::varchar[], $2::varchar[], $3::bytea[], $4::bytea[]) AS u(k, t, n, c) \
             WHERE v.kind = u.k AND v.token = u.t AND v.aad_version = 1",
            &[
                Type::VARCHAR_ARRAY,
                Type::VARCHAR_ARRAY,
                Type::BYTEA_ARRAY,
                Type::BYTEA_ARRAY,
                Type::INT2,
            ],
            "re-sealing a chunk of the vault",
        );
        let n = RESEAL
            .execute(&tx, &[&kinds, &tokens, &nonces, &ciphertexts, &aad])
            .await?;
        tx.commit()
            .await
            .map_err(db("committing a chunk of the vault"))?;
        done += n;
        info!(entries = done, "vault entries re-sealed");
    }
}
