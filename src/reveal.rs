//! Operator commands on the PII vault: `login-etl reveal` (an authorised,
//! audited way back from a token to the original value) and `login-etl
//! forget` (erasure of one user's rows and of the vault entries only they used).
//!
//! Both run with operator credentials, never the function's: `reveal` needs
//! `kms:Decrypt` on the vault key (the template's `PiiRevealRole`, with the vault's encryption context), which
//! the function's role lacks. Every value revealed is announced by one audit
//! line on stderr naming the kind and the token, never the value; CloudTrail
//! records each KMS `Decrypt` as well.

use std::collections::HashMap;

use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::vault::{DataKey, Kind, VaultError};

/// What to reveal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The value behind an ip token (`masked_ip`).
    IpToken(String),
    /// The value behind a device token (`masked_device_id`).
    DeviceToken(String),
    /// Every ip and device id of this user's logins.
    UserId(String),
}

/// Why a reveal or erasure failed.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    /// The database failed.
    #[error("PostgreSQL failed while {op}: {cause}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// SQLSTATE and message (no values).
        cause: String,
    },
    /// A key or entry could not be decrypted.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RevealError {
    move |e| RevealError::Db {
        op,
        cause: crate::sink::describe(&e),
    }
}

/// One revealed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revealed {
    /// Its kind.
    pub kind: Kind,
    /// Its token.
    pub token: String,
    /// The original value; `None` when the vault holds no entry for the token
    /// (written before the vault was on, or erased).
    pub value: Option<String>,
}

/// The tokens `target` names (for a user: from their rows' token columns).
async fn tokens(client: &Client, target: &Target) -> Result<Vec<(Kind, String)>, RevealError> {
    Ok(match target {
        Target::IpToken(t) => vec![(Kind::Ip, t.clone())],
        Target::DeviceToken(t) => vec![(Kind::DeviceId, t.clone())],
        Target::UserId(user) => {
            let rows = client
                .query_typed(
                    "SELECT DISTINCT masked_ip, masked_device_id FROM user_logins WHERE user_id = $1",
                    &[(user, Type::VARCHAR)],
                )
                .await
                .map_err(db("reading the user's tokens"))?;
            let mut out: Vec<(Kind, String)> = Vec::new();
            for row in rows {
                for (kind, col) in [(Kind::Ip, 0), (Kind::DeviceId, 1)] {
                    if let Some(token) = row.get::<_, Option<String>>(col)
                        && !out.contains(&(kind, token.clone()))
                    {
                        out.push((kind, token));
                    }
                }
            }
            out
        }
    })
}

/// Reveals what `target` names: reads the vault and its keys, unwraps each
/// data key once through `kms` (`Decrypt`), and writes one audit line per
/// value to `audit` (kind and token, never the value).
pub async fn reveal(
    client: &Client,
    kms: &aws_sdk_kms::Client,
    target: &Target,
    audit: &mut dyn FnMut(&str),
) -> Result<Vec<Revealed>, RevealError> {
    let mut keys: HashMap<String, DataKey> = HashMap::new();
    let mut out = Vec::new();
    for (kind, token) in tokens(client, target).await? {
        let row = client
            .query_typed_opt(
                "SELECT v.key_id, v.nonce, v.ciphertext, k.wrapped_key \
                 FROM user_logins_pii_vault v JOIN user_logins_vault_keys k USING (key_id) \
                 WHERE v.kind = $1 AND v.token = $2",
                &[(&kind.as_str(), Type::VARCHAR), (&token, Type::VARCHAR)],
            )
            .await
            .map_err(db("reading the vault"))?;
        let Some(row) = row else {
            out.push(Revealed {
                kind,
                token,
                value: None,
            });
            continue;
        };
        let key_id: String = row.get(0);
        if !keys.contains_key(&key_id) {
            let key = DataKey::unwrap(kms, row.get(3)).await?;
            keys.insert(key_id.clone(), key);
        }
        let nonce: Vec<u8> = row.get(1);
        let ciphertext: Vec<u8> = row.get(2);
        let value = keys[&key_id].open(kind, &token, &nonce, &ciphertext)?;
        audit(
            &json!({
                "audit": "pii_revealed",
                "kind": kind.as_str(),
                "token": token,
                "data_key": key_id,
                "at": chrono::Utc::now().to_rfc3339(),
                "operator": std::env::var("USER").unwrap_or_default(),
            })
            .to_string(),
        );
        out.push(Revealed {
            kind,
            token,
            value: Some(value),
        });
    }
    Ok(out)
}

/// What `forget` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Rows of the user deleted from `user_logins`.
    pub rows: u64,
    /// Vault entries deleted (those no other row still uses).
    pub vault_entries: u64,
}

/// Erases `user_id`: their rows, and the vault entries of their tokens that
/// no other row uses, in one transaction.
pub async fn forget(client: &mut Client, user_id: &str) -> Result<Forgotten, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the erasure"))?;
    let gone = tx
        .query_typed(
            "DELETE FROM user_logins WHERE user_id = $1 RETURNING masked_ip, masked_device_id",
            &[(&user_id, Type::VARCHAR)],
        )
        .await
        .map_err(db("deleting the user's rows"))?;
    let ips: Vec<String> = gone.iter().filter_map(|r| r.get(0)).collect();
    let devices: Vec<String> = gone.iter().filter_map(|r| r.get(1)).collect();
    // A second statement: it sees the rows the first one deleted as gone.
    let freed = tx
        .execute_typed(
            "DELETE FROM user_logins_pii_vault v WHERE \
               (v.kind = 'ip' AND v.token = ANY($1) \
                  AND NOT EXISTS (SELECT 1 FROM user_logins u WHERE u.masked_ip = v.token)) \
            OR (v.kind = 'device_id' AND v.token = ANY($2) \
                  AND NOT EXISTS (SELECT 1 FROM user_logins u WHERE u.masked_device_id = v.token))",
            &[(&ips, Type::VARCHAR_ARRAY), (&devices, Type::VARCHAR_ARRAY)],
        )
        .await
        .map_err(db("deleting the user's vault entries"))?;
    tx.commit().await.map_err(db("committing the erasure"))?;
    Ok(Forgotten {
        rows: gone.len() as u64,
        vault_entries: freed,
    })
}
