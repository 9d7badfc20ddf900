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
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::database::statement::{Failed, Statement};
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
        "{0}; nothing was erased. Give forget the erasure key the function uses (ERASURE_KEY_SECRET_ID: the stack's ErasureKeySecretArn), every version of it; if that is the one given, a program without it keyed the list first: `login-etl doctor` with both key secrets says so (docs/runbooks/erasure.md, \"Keyed first without the erasure key\")"
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

impl From<Failed> for RevealError {
    fn from(f: Failed) -> Self {
        db(f.doing)(f.error)
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

/// One vault entry `login_etl_reveal` gave out, its record committed.
struct GivenEntry {
    kind: Kind,
    token: String,
    /// `None` when the vault holds nothing for the token.
    sealed: Option<SealedEntry>,
}

/// An entry as the vault holds it, with its wrapped data key.
struct SealedEntry {
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
    wrapped: Vec<u8>,
    /// Its associated-data form.
    aad: i16,
}

/// The vault entries of `target`'s tokens: the owner's
/// `login_etl_reveal_request` writes one audit record per token and a
/// ticket, committed on its own; `login_etl_reveal` then hands the
/// entries out for that ticket, in a later transaction (the reveal role
/// may neither read the vault nor write a record itself).
async fn read_and_audit(
    client: &Client,
    target: &Target,
    caller_arn: &str,
) -> Result<Vec<GivenEntry>, RevealError> {
    let (kinds, tokens, user): (Vec<&str>, Vec<&str>, Option<&str>) = match target {
        Target::IpToken(t) => (vec![Kind::Ip.as_str()], vec![t.as_str()], None),
        Target::DeviceToken(t) => (vec![Kind::DeviceId.as_str()], vec![t.as_str()], None),
        Target::UserId(u) => (vec![], vec![], Some(u.as_str())),
    };
    // Two transactions: the records (and a ticket) commit first; the
    // entries come in a later one, which the database refuses while the
    // first is not committed (migrations/functions/login_etl_reveal.sql).
    const REQUEST: Statement = Statement::new(
        "SELECT login_etl_reveal_request($1, $2, $3, $4)",
        &[
            Type::TEXT_ARRAY,
            Type::TEXT_ARRAY,
            Type::VARCHAR,
            Type::TEXT,
        ],
        "writing the audit records (nothing was revealed)",
    );
    let ticket: i64 = REQUEST
        .value(client, &[&kinds, &tokens, &user, &caller_arn])
        .await?;
    const REVEAL: Statement = Statement::new(
        "SELECT kind, token, key_id, nonce, ciphertext, wrapped_key, aad_version \
         FROM login_etl_reveal($1)",
        &[Type::INT8],
        "reading the vault entries of the committed audit records (nothing was revealed)",
    );
    let rows = REVEAL.rows(client, &[&ticket]).await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.get(0);
            let kind = Kind::parse(&kind).ok_or_else(|| RevealError::Db {
                op: "reading the vault",
                cause: format!("an entry of unknown kind {kind}"),
            })?;
            let sealed = r.get::<_, Option<String>>(2).map(|key_id| SealedEntry {
                key_id,
                nonce: r.get(3),
                ciphertext: r.get(4),
                wrapped: r.get(5),
                aad: r.get(6),
            });
            Ok(GivenEntry {
                kind,
                token: r.get(1),
                sealed,
            })
        })
        .collect()
}

/// Reveals what `target` names, for the caller `caller_arn` (from STS
/// `GetCallerIdentity`). First, in one statement, the owner's
/// `login_etl_reveal` reads the vault entries and writes one audit record
/// per token to `user_logins_pii_audit`; only once that has committed does
/// it unwrap each data key through `kms` (`Decrypt` under `vault_key`, the
/// vault's KMS key and no other, once per key) and decrypt: a reveal that
/// cannot write its audit record reveals nothing. `audit` also gets one
/// JSON line per value (kind and token, never the value).
pub async fn reveal(
    client: &mut Client,
    kms: &aws_sdk_kms::Client,
    vault_key: &str,
    target: &Target,
    caller_arn: &str,
    audit: &mut dyn FnMut(&str),
) -> Result<Vec<Revealed>, RevealError> {
    let found = read_and_audit(client, target, caller_arn).await?;
    let mut keys: HashMap<String, DataKey> = HashMap::new();
    let mut out = Vec::new();
    for GivenEntry {
        kind,
        token,
        sealed,
    } in found
    {
        let Some(SealedEntry {
            key_id,
            nonce,
            ciphertext,
            wrapped,
            aad,
        }) = sealed
        else {
            out.push(Revealed {
                kind,
                token,
                value: None,
            });
            continue;
        };
        if !keys.contains_key(&key_id) {
            let key = DataKey::unwrap(kms, wrapped, vault_key).await?;
            keys.insert(key_id.clone(), key);
        }
        let value = keys[&key_id].open(kind, &token, aad, &nonce, &ciphertext)?;
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
