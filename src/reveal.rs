//! Operator commands on the PII vault: `login-etl reveal` (an authorised,
//! audited way back from a token to the original value) and `login-etl
//! forget` (erasure of one user's rows and of the vault entries only they used).
//!
//! Both run with operator credentials, never the function's: `reveal` needs
//! `kms:Decrypt` on the vault key (the template's `PiiRevealRole`, with the vault's encryption context), which
//! the function's role lacks. Every value revealed is announced by one audit
//! line on stderr naming the kind and the token, never the value; CloudTrail
//! records each KMS `Decrypt` as well.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Transaction};
use tracing::info;

use crate::masking::UserKeys;
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
    /// The erasure key does not reach the database's key version.
    #[error(
        "the database is at masking-key version {database} and the erasure key holds versions up to {held}; nothing was erased. Append the new version to the erasure secret (ERASURE_KEY_SECRET_ID), as docs/operations.md \"The masking key leaked\" says, and run forget again"
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

/// The advisory lock (shared by each `forget` transaction, exclusive by
/// `rotate-key`'s switch) that keeps an erasure's steps on one key version.
pub const KEY_VERSION_LOCK_KEY: i64 = 0x4C45_5F4B_4559_5631; // "LE_KEYV1"

/// The key version, in a transaction that holds [`KEY_VERSION_LOCK_KEY`]
/// shared (so no rotation switches under it): the version, and whether a
/// re-key is under way.
async fn key_version(client: &impl GenericClient) -> Result<(u16, bool), RevealError> {
    client
        .query_typed(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[(&KEY_VERSION_LOCK_KEY, Type::INT8)],
        )
        .await
        .map_err(db("waiting for a key rotation's switch"))?;
    let row = client
        .query_typed_one(
            "SELECT version, rekey_from IS NOT NULL FROM login_etl_key_state()",
            &[],
        )
        .await
        .map_err(db("reading the key version"))?;
    Ok((row.get::<_, i16>(0) as u16, row.get(1)))
}

/// How many DEFAULT-partition drains began, when none is under way
/// (`login_etl_drain_state()`, migrations/0007); [`RevealError::DrainUnderWay`]
/// while one is.
async fn drain_generation(client: &impl GenericClient) -> Result<i64, RevealError> {
    let row = client
        .query_typed_one(
            "SELECT draining, generation FROM login_etl_drain_state()",
            &[],
        )
        .await
        .map_err(db("reading whether maintain drains the DEFAULT partition"))?;
    if row.get::<_, bool>(0) {
        return Err(RevealError::DrainUnderWay);
    }
    Ok(row.get(1))
}

/// Refuses user keys the erasure list is not keyed with: keys of their own
/// where the list's are derived from the masking key, or keys whose check
/// value differs from the one recorded. When none is recorded yet, these
/// keys' value is (the function then refuses other keys, loudly).
async fn check_erasure_key(
    client: &impl GenericClient,
    keys: &UserKeys,
    version: u16,
) -> Result<(), RevealError> {
    let derived: bool = client
        .query_typed_one("SELECT erasure_derived FROM login_etl_key_state()", &[])
        .await
        .map_err(db("reading the key version"))?
        .get(0);
    if derived && !keys.is_derived() {
        return Err(RevealError::DerivedUserKeys);
    }
    let v = version as i16;
    let check = keys.check();
    match client
        .query_typed(
            "SELECT login_etl_check_keys($1, NULL, $2)",
            &[(&v, Type::INT2), (&check.as_str(), Type::TEXT)],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| c.code() == "LE004") => Err(RevealError::KeyMismatch(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        )),
        Err(e) => Err(db("checking the erasure key")(e)),
    }
}

/// Fails with [`RevealError::RekeyUnderWay`] unless the key is still at
/// `version` with no re-key under way (see [`key_version`]).
async fn same_key_version(client: &impl GenericClient, version: u16) -> Result<(), RevealError> {
    match key_version(client).await? {
        (v, false) if v == version => Ok(()),
        _ => Err(RevealError::RekeyUnderWay),
    }
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

/// Re-seals the vault entries of associated-data form 1 (from before key
/// versions: bound to their token, which a re-key changes) in form 2, for
/// the caller `caller_arn`, chunk by chunk: each entry is decrypted in
/// memory under its data key (KMS `Decrypt`, once per key), sealed again
/// under the same key with a fresh nonce, and updated in place; the value
/// never leaves the process. One audit record (`vault_upgrade`, with the
/// count) per run. `login-etl rotate-key` refuses to start while entries of
/// form 1 exist. Returns the entries re-sealed.
pub async fn upgrade_vault(
    client: &mut Client,
    kms: &aws_sdk_kms::Client,
    caller_arn: &str,
) -> Result<u64, RevealError> {
    let mut keys: HashMap<String, DataKey> = HashMap::new();
    let mut done = 0u64;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a chunk of the vault"))?;
        let rows = tx
            .query_typed(
                "SELECT v.kind, v.token, v.key_id, v.nonce, v.ciphertext, k.wrapped_key \
                 FROM user_logins_pii_vault v JOIN user_logins_vault_keys k USING (key_id) \
                 WHERE v.aad_version = 1 ORDER BY v.kind, v.token LIMIT 1000 FOR UPDATE OF v",
                &[],
            )
            .await
            .map_err(db("reading entries of the old form"))?;
        if rows.is_empty() {
            let n = done as i64;
            tx.execute_typed(
                "INSERT INTO user_logins_pii_audit (action, caller_arn, detail) \
                 VALUES ('vault_upgrade', $1, jsonb_build_object('entries_resealed', $2::int8))",
                &[(&caller_arn, Type::VARCHAR), (&n, Type::INT8)],
            )
            .await
            .map_err(db("writing the audit record"))?;
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
                keys.insert(key_id.clone(), DataKey::unwrap(kms, r.get(5)).await?);
            }
            let key = &keys[&key_id];
            let value = key.open(kind, &token, 1, r.get(3), r.get(4))?;
            let sealed = key.seal(kind, &token, &value);
            kinds.push(kind.as_str().to_owned());
            tokens.push(token);
            nonces.push(sealed.nonce.to_vec());
            ciphertexts.push(sealed.ciphertext);
        }
        let aad = crate::vault::AAD_VERSION;
        let n = tx
            .execute_typed(
                "UPDATE user_logins_pii_vault v SET nonce = u.n, ciphertext = u.c, aad_version = $5 \
                 FROM unnest($1::varchar[], $2::varchar[], $3::bytea[], $4::bytea[]) AS u(k, t, n, c) \
                 WHERE v.kind = u.k AND v.token = u.t AND v.aad_version = 1",
                &[
                    (&kinds, Type::VARCHAR_ARRAY),
                    (&tokens, Type::VARCHAR_ARRAY),
                    (&nonces, Type::BYTEA_ARRAY),
                    (&ciphertexts, Type::BYTEA_ARRAY),
                    (&aad, Type::INT2),
                ],
            )
            .await
            .map_err(db("re-sealing a chunk of the vault"))?;
        tx.commit()
            .await
            .map_err(db("committing a chunk of the vault"))?;
        done += n;
        info!(entries = done, "vault entries re-sealed");
    }
}

/// What `forget` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Rows of the user deleted from `user_logins`.
    pub rows: u64,
    /// Vault entries deleted (those no other row still uses).
    pub vault_entries: u64,
}

/// How long `forget` waits for its moment's lock on `user_logins` before it
/// lets the writes queued behind it through and tries again: the longest a
/// write waits for an erasure, whatever the table's size.
pub const FORGET_LOCK_TIMEOUT_MS: u32 = 100;

/// How long `forget` keeps trying to get that lock (writers in flight
/// finish in milliseconds; only writes slower than the timeout delay it).
pub const FORGET_LOCK_PATIENCE: Duration = Duration::from_secs(300);

/// Erases `user_id` for the caller `caller_arn` without ever holding ingest
/// back for more than [`FORGET_LOCK_TIMEOUT_MS`], whatever the table's size:
///
/// 1. in a moment's lock on `user_logins` (SHARE ROW EXCLUSIVE on the
///    parent only: it waits for the write transactions in flight, and
///    theirs for it), puts the user on the erasure list (by `user_key`, the
///    keyed hash of `Masker::user_key`) and audits the start
///    (`forget_begun`). Every write after it checks the list, so no row of
///    the user can be stored any more;
/// 2. deletes their rows one partition at a time, each in a statement of
///    its own that locks only rows (ingest goes on);
/// 3. in a second moment's lock, moves the vault entries of their tokens
///    aside (`user_logins_pii_vault_held`); a write after it that needs one
///    stores it again;
/// 4. scans, partition by partition, for rows of other users that still use
///    those tokens, puts their entries back and deletes the rest, and
///    writes the audit record (`forget`: the user key and the counts, never
///    the id) in that transaction.
///
/// A run that stops anywhere finishes on the next run for the same user.
pub async fn forget(
    client: &mut Client,
    user_id: &str,
    keys: &UserKeys,
    caller_arn: &str,
) -> Result<Forgotten, RevealError> {
    let began = Instant::now();
    begin_locked(client).await?;
    let listed = async {
        let (version, rekeying) = key_version(&*client).await?;
        let keys = keys.at(version).ok_or(RevealError::KeyBehind {
            database: version,
            held: keys.latest(),
        })?;
        check_erasure_key(&*client, &keys, version).await?;
        let user_key = keys.user_key(user_id);
        let user_key = user_key.as_str().to_owned();
        // During a re-key the user may be listed under the previous
        // version still (rotate-key moves the list after its switch): then
        // they are erased already, and a second entry would collide with
        // the one the re-key is about to write.
        let previous = match (rekeying, keys.at(version - 1)) {
            (true, Some(old)) => old.user_key(user_id).as_str().to_owned(),
            _ => user_key.clone(),
        };
        let v = version as i16;
        client
            .execute_typed(
                "INSERT INTO user_logins_erased (user_key, key_version) \
                 SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM user_logins_erased WHERE user_key = $3) \
                 ON CONFLICT (user_key) DO NOTHING",
                &[
                    (&user_key, Type::VARCHAR),
                    (&v, Type::INT2),
                    (&previous, Type::VARCHAR),
                ],
            )
            .await
            .map_err(db("adding the user to the erasure list"))?;
        client
            .execute_typed(
                "INSERT INTO user_logins_pii_audit (action, caller_arn, user_key) VALUES ('forget_begun', $1, $2)",
                &[(&caller_arn, Type::VARCHAR), (&user_key, Type::VARCHAR)],
            )
            .await
            .map_err(db("writing the audit record (nothing was erased)"))?;
        Ok((user_key, version, rekeying))
    }
    .await;
    let (user_key, version, rekeying) =
        end_locked(client, listed, "putting the user on the erasure list").await?;
    let user_key = user_key.as_str();
    info!(
        ms = began.elapsed().as_millis() as u64,
        "user on the erasure list: no write stores their rows any more"
    );
    // While rows and vault entries are re-keyed, a row's token and its
    // entry's may be of two versions: match them up only after the re-key.
    if rekeying {
        return Err(RevealError::RekeyUnderWay);
    }
    // Rows of a swapped-out DEFAULT partition are out of sight until
    // maintain has moved them back: the deletes below would miss them.
    let drains = drain_generation(client).await?;

    let segments = crate::maintain::segments(
        &crate::maintain::partitions(client)
            .await
            .map_err(db("listing the partitions"))?,
    );
    // Each DELETE writes the tokens of the rows it deletes, in its own
    // statement: a run that stops later still knows them on the next run.
    let mut rows = 0u64;
    for (i, segment) in segments.iter().enumerate() {
        let (cond, bounds) = segment.condition(3);
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
            vec![(&user_id, Type::VARCHAR), (&user_key, Type::VARCHAR)];
        params.extend(
            bounds
                .iter()
                .map(|d| (d as &(dyn ToSql + Sync), Type::DATE)),
        );
        let tx = segment_tx(client, segment, version).await?;
        let gone: i64 = tx
            .query_typed_one(
                &format!(
                    "WITH gone AS (DELETE FROM user_logins WHERE user_id = $1 AND {cond} \
                       RETURNING masked_ip, masked_device_id), \
                     kept AS (INSERT INTO user_logins_erasure_tokens (user_key, kind, token) \
                       SELECT $2, 'ip', masked_ip FROM gone WHERE masked_ip IS NOT NULL \
                       UNION SELECT $2, 'device_id', masked_device_id FROM gone WHERE masked_device_id IS NOT NULL \
                       ON CONFLICT DO NOTHING) \
                     SELECT count(*) FROM gone"
                ),
                &params,
            )
            .await
            .map_err(db("deleting the user's rows"))?
            .get(0);
        tx.commit().await.map_err(db("committing a delete"))?;
        rows += gone as u64;
        info!(
            segment = i + 1,
            of = segments.len(),
            rows_deleted = rows,
            "deleting the user's rows, one partition at a time"
        );
    }

    // The tokens of every row of the user, deleted now or by a run that stopped.
    let tokens = client
        .query_typed(
            "SELECT kind, token FROM user_logins_erasure_tokens WHERE user_key = $1",
            &[(&user_key, Type::VARCHAR)],
        )
        .await
        .map_err(db("reading the user's tokens"))?;
    let of_kind = |rows: &[tokio_postgres::Row], kind: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r.get::<_, &str>(0) == kind)
            .map(|r| r.get(1))
            .collect()
    };
    let (ips, devices) = (of_kind(&tokens, "ip"), of_kind(&tokens, "device_id"));
    if !ips.is_empty() || !devices.is_empty() {
        hold_vault_entries(client, user_key, version, &ips, &devices).await?;
    }

    // Held now, or by an earlier run that stopped: who else uses them?
    let held = client
        .query_typed(
            "SELECT kind, token FROM user_logins_pii_vault_held WHERE user_key = $1",
            &[(&user_key, Type::VARCHAR)],
        )
        .await
        .map_err(db("reading the held vault entries"))?;
    let (held_ips, held_devices) = (of_kind(&held, "ip"), of_kind(&held, "device_id"));
    let (mut used_ips, mut used_devices) = (BTreeSet::new(), BTreeSet::new());
    if !held.is_empty() {
        for segment in &segments {
            let (cond, bounds) = segment.condition(3);
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
                (&held_ips, Type::VARCHAR_ARRAY),
                (&held_devices, Type::VARCHAR_ARRAY),
            ];
            params.extend(
                bounds
                    .iter()
                    .map(|d| (d as &(dyn ToSql + Sync), Type::DATE)),
            );
            let tx = segment_tx(client, segment, version).await?;
            let row = tx
                .query_typed_one(
                    &format!(
                        "SELECT coalesce(array_agg(DISTINCT masked_ip) FILTER (WHERE masked_ip = ANY($1)), '{{}}'), \
                         coalesce(array_agg(DISTINCT masked_device_id) FILTER (WHERE masked_device_id = ANY($2)), '{{}}') \
                         FROM user_logins WHERE (masked_ip = ANY($1) OR masked_device_id = ANY($2)) AND {cond}"
                    ),
                    &params,
                )
                .await
                .map_err(db("looking for other users of the tokens"))?;
            tx.commit().await.map_err(db("ending a scan"))?;
            used_ips.extend(row.get::<_, Vec<String>>(0));
            used_devices.extend(row.get::<_, Vec<String>>(1));
        }
    }
    let (used_ips, used_devices): (Vec<String>, Vec<String>) = (
        used_ips.into_iter().collect(),
        used_devices.into_iter().collect(),
    );

    let tx = client
        .transaction()
        .await
        .map_err(db("starting the end of the erasure"))?;
    same_key_version(&tx, version).await?;
    // A DEFAULT partition swapped out since the deletes began may hold rows
    // of the user they did not see: not done (the rerun finishes).
    if drain_generation(&tx).await? != drains {
        return Err(RevealError::DrainUnderWay);
    }
    tx.execute_typed(
        "WITH back AS (DELETE FROM user_logins_pii_vault_held h WHERE h.user_key = $1 AND \
           ((h.kind = 'ip' AND h.token = ANY($2)) OR (h.kind = 'device_id' AND h.token = ANY($3))) \
           RETURNING h.kind, h.token, h.key_id, h.nonce, h.ciphertext, h.created_at, h.key_version, h.aad_version) \
         INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, created_at, key_version, aad_version) \
         SELECT * FROM back ON CONFLICT (kind, token) DO NOTHING",
        &[
            (&user_key, Type::VARCHAR),
            (&used_ips, Type::VARCHAR_ARRAY),
            (&used_devices, Type::VARCHAR_ARRAY),
        ],
    )
    .await
    .map_err(db("putting back the vault entries other users' rows use"))?;
    let freed = tx
        .execute_typed(
            "DELETE FROM user_logins_pii_vault_held WHERE user_key = $1",
            &[(&user_key, Type::VARCHAR)],
        )
        .await
        .map_err(db("deleting the user's vault entries"))?;
    tx.execute_typed(
        "DELETE FROM user_logins_erasure_tokens WHERE user_key = $1",
        &[(&user_key, Type::VARCHAR)],
    )
    .await
    .map_err(db("clearing the user's tokens"))?;
    tx.execute_typed(
        "INSERT INTO user_logins_pii_audit (action, caller_arn, user_key, rows_deleted, vault_entries_deleted) \
         VALUES ('forget', $1, $2, $3, $4)",
        &[
            (&caller_arn, Type::VARCHAR),
            (&user_key, Type::VARCHAR),
            (&(rows as i64), Type::INT8),
            (&(freed as i64), Type::INT8),
        ],
    )
    .await
    .map_err(db("writing the audit record"))?;
    tx.commit().await.map_err(db("committing the erasure"))?;
    info!(
        rows,
        vault_entries = freed,
        seconds = began.elapsed().as_secs_f64(),
        "user erased"
    );
    Ok(Forgotten {
        rows,
        vault_entries: freed,
    })
}

/// A transaction for one statement on `segment`: on the DEFAULT
/// partition's ranges it holds maintain's lock shared, so that no partition
/// is made out of the DEFAULT one (its rows moved) under the statement; a
/// partition's own range needs none, so a long scan there never holds
/// maintain up.
async fn segment_tx<'c>(
    client: &'c mut Client,
    segment: &crate::maintain::Segment,
    version: u16,
) -> Result<Transaction<'c>, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    same_key_version(&tx, version).await?;
    if segment.in_default() {
        tx.query_typed(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[(&crate::schema::MIGRATION_LOCK_KEY, Type::INT8)],
        )
        .await
        .map_err(db("waiting for maintain's partition step"))?;
    }
    Ok(tx)
}

/// Moves the vault entries of `ips` and `devices` aside for `user_key`, in
/// a moment's lock (see [`begin_locked`]). Not while another `forget` holds
/// one of them and has not finished its check: it may still put the entry
/// back, after this one's check would have found it gone. So it waits for
/// that one, as long as [`FORGET_LOCK_PATIENCE`], without holding the lock.
async fn hold_vault_entries(
    client: &Client,
    user_key: &str,
    version: u16,
    ips: &[String],
    devices: &[String],
) -> Result<(), RevealError> {
    let since = Instant::now();
    loop {
        begin_locked(client).await?;
        let step = async {
            same_key_version(client, version).await?;
            let busy: bool = client
                .query_typed_one(
                    "SELECT EXISTS (SELECT 1 FROM user_logins_pii_vault_held h WHERE h.user_key <> $1 AND \
                       ((h.kind = 'ip' AND h.token = ANY($2)) OR (h.kind = 'device_id' AND h.token = ANY($3))))",
                    &[
                        (&user_key, Type::VARCHAR),
                        (&ips, Type::VARCHAR_ARRAY),
                        (&devices, Type::VARCHAR_ARRAY),
                    ],
                )
                .await
                .map_err(db("reading the held vault entries"))?
                .get(0);
            if busy {
                return Ok(false);
            }
            client
                .execute_typed(
                    "WITH gone AS (DELETE FROM user_logins_pii_vault v WHERE \
                       (v.kind = 'ip' AND v.token = ANY($2)) OR (v.kind = 'device_id' AND v.token = ANY($3)) \
                       RETURNING v.kind, v.token, v.key_id, v.nonce, v.ciphertext, v.created_at, v.key_version, v.aad_version) \
                     INSERT INTO user_logins_pii_vault_held (user_key, kind, token, key_id, nonce, ciphertext, created_at, key_version, aad_version) \
                     SELECT $1, gone.* FROM gone ON CONFLICT DO NOTHING",
                    &[
                        (&user_key, Type::VARCHAR),
                        (&ips, Type::VARCHAR_ARRAY),
                        (&devices, Type::VARCHAR_ARRAY),
                    ],
                )
                .await
                .map_err(db("moving the user's vault entries aside"))?;
            Ok(true)
        }
        .await;
        if end_locked(client, step, "holding the user's vault entries").await? {
            return Ok(());
        }
        if since.elapsed() >= FORGET_LOCK_PATIENCE {
            return Err(RevealError::Db {
                op: "holding the user's vault entries",
                cause: "another `login-etl forget` holds a vault entry this user shares and has not finished; if it stopped, run it again (`login-etl audit` shows its forget_begun record without a forget), then run this one again; its rows are deleted already".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Opens a transaction that holds SHARE ROW EXCLUSIVE on the partitioned
/// parent `user_logins` alone (`ONLY`: one lock, however many partitions),
/// waiting at most [`FORGET_LOCK_TIMEOUT_MS`] for it and trying again after
/// a pause, so that writes never queue behind it longer. [`end_locked`]
/// ends it.
async fn begin_locked(client: &Client) -> Result<(), RevealError> {
    let since = Instant::now();
    loop {
        // The key-version lock first, as rotate-key's switch takes it: the
        // same order, so the two never wait for each other crosswise.
        let locked = client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {FORGET_LOCK_TIMEOUT_MS}; \
                 SELECT pg_advisory_xact_lock_shared({KEY_VERSION_LOCK_KEY}); \
                 LOCK TABLE ONLY user_logins IN SHARE ROW EXCLUSIVE MODE"
            ))
            .await;
        let Err(e) = locked else { return Ok(()) };
        let _ = client.batch_execute("ROLLBACK").await;
        if e.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) {
            return Err(db("locking user_logins for a moment")(e));
        }
        if since.elapsed() >= FORGET_LOCK_PATIENCE {
            return Err(RevealError::Db {
                op: "locking user_logins for a moment",
                cause: format!(
                    "for {} s some transaction on user_logins always held it longer than {FORGET_LOCK_TIMEOUT_MS} ms; \
                     look for long-running transactions (pg_stat_activity) and run forget again: it finishes what this run started",
                    FORGET_LOCK_PATIENCE.as_secs()
                ),
            });
        }
        // A pause with a little jitter, so that queued writes get through.
        let jitter = u64::from(since.elapsed().subsec_nanos() % 100);
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
    }
}

/// Commits the transaction [`begin_locked`] opened when `done` is Ok, else
/// rolls it back and returns the error.
async fn end_locked<T>(
    client: &Client,
    done: Result<T, RevealError>,
    op: &'static str,
) -> Result<T, RevealError> {
    match done {
        Ok(v) => {
            client.batch_execute("COMMIT").await.map_err(db(op))?;
            Ok(v)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
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
             vault_entries_deleted, detail::text FROM user_logins_pii_audit \
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
            // rotate-key's records: the versions and counts (jsonb, ours).
            if let Some(detail) = r.get::<_, Option<&str>>(10)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(detail)
            {
                doc.insert("detail".into(), v);
            }
            serde_json::Value::Object(doc)
        })
        .collect())
}
