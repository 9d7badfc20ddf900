//! `login-etl reveal`: an authorised, audited way back from a token to the
//! original value, and the error every operator command on the vault shares
//! ([`RevealError`]).
//!
//! It runs with operator credentials, never the function's: it needs
//! `kms:Decrypt` on the vault key (the template's `PiiRevealRole`, with the
//! vault's encryption context), which the function's role lacks. Every value
//! revealed is announced by one audit line on stderr naming the kind and the
//! token, never the value; CloudTrail records each KMS `Decrypt` as well.

use std::collections::HashMap;

use serde_json::json;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Transaction};

use crate::privacy::vault::{DataKey, Kind, VaultError};

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
    /// The erasure key does not reach the database's key version.
    #[error(
        "the database is at masking-key version {database} and the erasure key holds versions up to {held}; nothing was erased. Append the new version to the erasure secret (ERASURE_KEY_SECRET_ID), as docs/runbooks/leaked-key.md \"The masking key leaked\" says, and run forget again"
    )]
    KeyBehind {
        /// The database's version.
        database: u16,
        /// The newest version the erasure key holds.
        held: u16,
    },
    /// `login-etl rotate-key` is re-keying: the user is on the erasure list
    /// (nothing of theirs is stored any more), the rest waits for the re-key.
    #[error(
        "a masking-key rotation (login-etl rotate-key) is re-keying the table: the user is on the erasure list, so no row of theirs is stored any more, but their rows are deleted only after the re-key; run forget again when rotate-key has finished (login-etl rotate-key --status)"
    )]
    RekeyUnderWay,
    /// `maintain` moves a swapped-out DEFAULT partition's rows back (or did
    /// while this ran): some of the user's rows may be out of sight.
    #[error(
        "login-etl maintain is moving the rows of a swapped-out DEFAULT partition back into user_logins (after days of failed maintenance), or did while this ran: the user is on the erasure list, so no row of theirs is stored any more, but some of their rows may be out of sight until it ends; run forget again when maintain has finished (it reports RowsDrainedFromDefault)"
    )]
    DrainUnderWay,
    /// The erasure key is not the one the erasure list is keyed with.
    #[error(
        "{0}; nothing was erased. Give forget the erasure key the function uses (ERASURE_KEY_SECRET_ID: the stack's ErasureKeySecretArn), every version of it"
    )]
    KeyMismatch(String),
    /// The list predates erasure keys and forget was given one.
    #[error(
        "this deployment's erasure list predates erasure keys: its user keys are derived from the masking key, so forget needs MASKING_KEY_SECRET_ID (and no ERASURE_KEY_SECRET_ID); nothing was erased"
    )]
    DerivedUserKeys,
}

/// Maps a PostgreSQL error to [`RevealError::Db`], naming what was being done.
pub(crate) fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RevealError {
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

/// The tokens `target` names (for a user: from their rows' token columns),
/// with the key version of each when known (a row's; for a token given,
/// its vault entry's, read with it).
async fn tokens(
    tx: &Transaction<'_>,
    target: &Target,
) -> Result<Vec<(Kind, String, Option<i16>)>, RevealError> {
    Ok(match target {
        Target::IpToken(t) => vec![(Kind::Ip, t.clone(), None)],
        Target::DeviceToken(t) => vec![(Kind::DeviceId, t.clone(), None)],
        Target::UserId(user) => {
            let rows = tx
                .query_typed(
                    "SELECT DISTINCT masked_ip, masked_device_id, key_version FROM user_logins WHERE user_id = $1",
                    &[(user, Type::VARCHAR)],
                )
                .await
                .map_err(db("reading the user's tokens"))?;
            let mut out: Vec<(Kind, String, Option<i16>)> = Vec::new();
            for row in rows {
                for (kind, col) in [(Kind::Ip, 0), (Kind::DeviceId, 1)] {
                    if let Some(token) = row.get::<_, Option<String>>(col)
                        && !out.iter().any(|(k, t, _)| *k == kind && *t == token)
                    {
                        out.push((kind, token, Some(row.get(2))));
                    }
                }
            }
            out
        }
    })
}

/// The vault entries of `target`'s tokens, read in one transaction with
/// one audit record per token, committed before anything is decrypted.
async fn read_and_audit(
    client: &mut Client,
    target: &Target,
    caller_arn: &str,
) -> Result<Vec<(Kind, String, Option<tokio_postgres::Row>)>, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting the reveal"))?;
    let mut found = Vec::new();
    for (kind, token, version) in tokens(&tx, target).await? {
        let row = tx
            .query_typed_opt(
                "SELECT v.key_id, v.nonce, v.ciphertext, k.wrapped_key, v.aad_version, v.key_version \
                 FROM user_logins_pii_vault v JOIN user_logins_vault_keys k USING (key_id) \
                 WHERE v.kind = $1 AND v.token = $2",
                &[(&kind.as_str(), Type::VARCHAR), (&token, Type::VARCHAR)],
            )
            .await
            .map_err(db("reading the vault"))?;
        let key_id: Option<String> = row.as_ref().map(|r| r.get(0));
        // The token's version, so that rotate-key re-keys the record from
        // it. A token nothing stored knows has no version to re-key from:
        // the record keeps that it matched nothing, not the token (it may
        // be one of a retired key's, which no stored token may stay).
        let version: Option<i16> = version.or(row.as_ref().map(|r| r.get(5)));
        let (kept, detail) = match version {
            Some(_) => (Some(token.as_str()), None),
            None => (None, Some(json!({"token_matched": false}).to_string())),
        };
        tx.execute_typed(
            "INSERT INTO user_logins_pii_audit (action, caller_arn, kind, token, data_key_id, key_version, detail) \
             VALUES ('reveal', $1, $2, $3, $4, coalesce($5, login_etl_current_key_version()), $6::text::jsonb)",
            &[
                (&caller_arn, Type::VARCHAR),
                (&kind.as_str(), Type::VARCHAR),
                (&kept, Type::VARCHAR),
                (&key_id, Type::VARCHAR),
                (&version, Type::INT2),
                (&detail, Type::TEXT),
            ],
        )
        .await
        .map_err(db("writing the audit record (nothing was revealed)"))?;
        found.push((kind, token, row));
    }
    tx.commit()
        .await
        .map_err(db("committing the audit records (nothing was revealed)"))?;
    Ok(found)
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
    let found = read_and_audit(client, target, caller_arn).await?;
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
        let value = keys[&key_id].open(kind, &token, row.get(4), &nonce, &ciphertext)?;
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
