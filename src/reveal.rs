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
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

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
    /// The caller's identity could not be established: nothing is revealed
    /// or erased without an audit record naming it.
    #[error(
        "cannot establish who is calling (STS GetCallerIdentity: {cause}); nothing was revealed or erased. Check the AWS credentials (and AWS_ENDPOINT_URL)"
    )]
    Identity {
        /// What STS or the SDK said.
        cause: String,
    },
}

fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RevealError {
    move |e| RevealError::Db {
        op,
        cause: crate::error::describe(&e),
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

/// The caller's ARN, from STS `GetCallerIdentity` (never `$USER`): what the
/// audit records name.
pub async fn caller_arn(sts: &aws_sdk_sts::Client) -> Result<String, RevealError> {
    let out = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| RevealError::Identity {
            cause: aws_sdk_sts::error::DisplayErrorContext(&e).to_string(),
        })?;
    out.arn.ok_or_else(|| RevealError::Identity {
        cause: "the answer names no ARN".into(),
    })
}

/// The tokens `target` names (for a user: from their rows' token columns).
async fn tokens(tx: &Transaction<'_>, target: &Target) -> Result<Vec<(Kind, String)>, RevealError> {
    Ok(match target {
        Target::IpToken(t) => vec![(Kind::Ip, t.clone())],
        Target::DeviceToken(t) => vec![(Kind::DeviceId, t.clone())],
        Target::UserId(user) => {
            let rows = tx
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

/// Reveals what `target` names, for the caller `caller_arn` (from STS
/// `GetCallerIdentity`). First, in one transaction, it reads the vault
/// entries and writes one audit record per token to
/// `user_logins_pii_audit`; only once that has committed does it unwrap each
/// data key through `kms` (`Decrypt`, once per key) and decrypt: a reveal
/// that cannot write its audit record reveals nothing. `audit` also gets one
/// JSON line per value (kind and token, never the value).
pub async fn reveal(
    client: &mut Client,
    kms: &aws_sdk_kms::Client,
    target: &Target,
    caller_arn: &str,
    audit: &mut dyn FnMut(&str),
) -> Result<Vec<Revealed>, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the reveal"))?;
    let mut found = Vec::new();
    for (kind, token) in tokens(&tx, target).await? {
        let row = tx
            .query_typed_opt(
                "SELECT v.key_id, v.nonce, v.ciphertext, k.wrapped_key \
                 FROM user_logins_pii_vault v JOIN user_logins_vault_keys k USING (key_id) \
                 WHERE v.kind = $1 AND v.token = $2",
                &[(&kind.as_str(), Type::VARCHAR), (&token, Type::VARCHAR)],
            )
            .await
            .map_err(db("reading the vault"))?;
        let key_id: Option<String> = row.as_ref().map(|r| r.get(0));
        tx.execute_typed(
            "INSERT INTO user_logins_pii_audit (action, caller_arn, kind, token, data_key_id) \
             VALUES ('reveal', $1, $2, $3, $4)",
            &[
                (&caller_arn, Type::VARCHAR),
                (&kind.as_str(), Type::VARCHAR),
                (&token, Type::VARCHAR),
                (&key_id, Type::VARCHAR),
            ],
        )
        .await
        .map_err(db("writing the audit record (nothing was revealed)"))?;
        found.push((kind, token, row));
    }
    tx.commit()
        .await
        .map_err(db("committing the audit records (nothing was revealed)"))?;

    let mut keys: HashMap<String, DataKey> = HashMap::new();
    let mut out = Vec::new();
    for (kind, token, row) in found {
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
                "caller": caller_arn,
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

/// Erases `user_id` for the caller `caller_arn`, in one transaction that
/// holds `user_logins` against every concurrent write (SHARE ROW EXCLUSIVE:
/// it waits for the function's transactions in flight, and theirs wait for
/// it): puts the user on the erasure list (by `user_key`, the keyed hash of
/// `Masker::user_key`), so that a message of theirs that arrives later is
/// not stored; deletes their rows and the vault entries no other row uses;
/// and writes its audit record (the user key and the counts, never the id).
pub async fn forget(
    client: &mut Client,
    user_id: &str,
    user_key: &str,
    caller_arn: &str,
) -> Result<Forgotten, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the erasure"))?;
    tx.batch_execute("LOCK TABLE user_logins IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(db("locking user_logins against concurrent writes"))?;
    tx.execute_typed(
        "INSERT INTO user_logins_erased (user_key) VALUES ($1) ON CONFLICT (user_key) DO NOTHING",
        &[(&user_key, Type::VARCHAR)],
    )
    .await
    .map_err(db("adding the user to the erasure list"))?;
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
    let rows = gone.len() as i64;
    tx.execute_typed(
        "INSERT INTO user_logins_pii_audit (action, caller_arn, user_key, rows_deleted, vault_entries_deleted) \
         VALUES ('forget', $1, $2, $3, $4)",
        &[
            (&caller_arn, Type::VARCHAR),
            (&user_key, Type::VARCHAR),
            (&rows, Type::INT8),
            (&(freed as i64), Type::INT8),
        ],
    )
    .await
    .map_err(db("writing the audit record (nothing was erased)"))?;
    tx.commit().await.map_err(db("committing the erasure"))?;
    Ok(Forgotten {
        rows: gone.len() as u64,
        vault_entries: freed,
    })
}

/// The audit trail since `since` (all of it with `None`), oldest first,
/// one JSON object per record (`login-etl audit`).
pub async fn audit_records(
    client: &Client,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<serde_json::Value>, RevealError> {
    let rows = client
        .query_typed(
            "SELECT id, at, action, caller_arn, kind, token, data_key_id, user_key, rows_deleted, \
             vault_entries_deleted FROM user_logins_pii_audit \
             WHERE $1::timestamptz IS NULL OR at >= $1 ORDER BY id",
            &[(&since, Type::TIMESTAMPTZ)],
        )
        .await
        .map_err(db("reading the audit trail"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let at: chrono::DateTime<chrono::Utc> = r.get(1);
            let mut doc = serde_json::Map::new();
            doc.insert("id".into(), json!(r.get::<_, i64>(0)));
            doc.insert("at".into(), json!(at.to_rfc3339()));
            for (i, name) in [
                (2, "action"),
                (3, "caller_arn"),
                (4, "kind"),
                (5, "token"),
                (6, "data_key_id"),
                (7, "user_key"),
            ] {
                if let Some(v) = r.get::<_, Option<String>>(i) {
                    doc.insert(name.into(), json!(v));
                }
            }
            for (i, name) in [(8, "rows_deleted"), (9, "vault_entries_deleted")] {
                if let Some(v) = r.get::<_, Option<i64>>(i) {
                    doc.insert(name.into(), json!(v));
                }
            }
            serde_json::Value::Object(doc)
        })
        .collect())
}
