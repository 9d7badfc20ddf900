//! `login-etl forget`: erasure of one user's rows, and of the vault entries
//! only they used, without holding ingest back.
//!
//! One file per concern: this file, the steps in order; [`state`], what
//! each step reads of the key state; [`lock`], the moments' locks and the
//! per-partition transactions.

mod lock;
mod state;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};
use tracing::info;

use crate::database::statement::Statement;
use crate::privacy::masking::UserKeys;
use crate::privacy::reveal::{RevealError, db};
use crate::table::partitions::Segment;
use lock::{begin_locked, end_locked, hold_vault_entries, segment_tx};
use state::{check_erasure_key, drain_generation, key_version, same_key_version};

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
    let (user_key, version, rekeying) = list_user(client, user_id, keys, caller_arn).await?;
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
    let segments = crate::table::partitions::segments(
        &crate::table::partitions::partitions(client)
            .await
            .map_err(db("listing the partitions"))?,
    );
    let rows = delete_rows(client, &segments, user_id, user_key, version).await?;

    // The tokens of every row of the user, deleted now or by a run that stopped.
    const TOKENS: Statement = Statement::new(
        "SELECT kind, token FROM user_logins_erasure_tokens WHERE user_key = $1",
        &[Type::VARCHAR],
        "reading the user's tokens",
    );
    let tokens = TOKENS.rows(&*client, &[&user_key]).await?;
    let (ips, devices) = (of_kind(&tokens, "ip"), of_kind(&tokens, "device_id"));
    if !ips.is_empty() || !devices.is_empty() {
        hold_vault_entries(client, user_key, version, &ips, &devices).await?;
    }
    let used = still_used(client, &segments, user_key, version).await?;
    let freed = finish(client, user_key, version, drains, rows, &used, caller_arn).await?;
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

/// Step 1: in a moment's lock, the user on the erasure list at the
/// database's key version, and `forget_begun` audited. Returns the user
/// key, the version and whether a re-key is under way.
async fn list_user(
    client: &mut Client,
    user_id: &str,
    keys: &UserKeys,
    caller_arn: &str,
) -> Result<(String, u16, bool), RevealError> {
    begin_locked(client).await?;
    let listed = async {
        let (version, rekeying) = key_version(&*client).await?;
        let keys = keys.at(version).ok_or(RevealError::KeyBehind {
            database: version,
            held: keys.latest(),
        })?;
        check_erasure_key(&*client, &keys, version).await?;
        let user_key = keys.user_key(user_id).as_str().to_owned();
        // During a re-key the user may be listed under the previous
        // version still (rotate-key moves the list after its switch): then
        // they are erased already, and a second entry would collide with
        // the one the re-key is about to write.
        let previous = match (rekeying, keys.at(version - 1)) {
            (true, Some(old)) => old.user_key(user_id).as_str().to_owned(),
            _ => user_key.clone(),
        };
        let v = version as i16;
        // The owner's function lists the user and writes forget_begun; the
        // rows go only once this transaction has committed.
        const BEGIN: Statement = Statement::new(
            "SELECT login_etl_forget_begin($1, $2, $3, $4)",
            &[Type::VARCHAR, Type::VARCHAR, Type::INT2, Type::TEXT],
            "adding the user to the erasure list and writing forget_begun (nothing was erased)",
        );
        BEGIN
            .rows(&*client, &[&user_key, &previous, &v, &caller_arn])
            .await?;
        Ok((user_key, version, rekeying))
    }
    .await;
    end_locked(client, listed, "putting the user on the erasure list").await
}

/// Step 2: the user's rows deleted, one partition at a time. Each DELETE
/// writes the tokens of the rows it deletes, in its own statement: a run
/// that stops later still knows them on the next run.
async fn delete_rows(
    client: &mut Client,
    segments: &[Segment],
    user_id: &str,
    user_key: &str,
    version: u16,
) -> Result<u64, RevealError> {
    let mut rows = 0u64;
    for (i, segment) in segments.iter().enumerate() {
        let (lo, hi, null_dates) = segment.bounds();
        let tx = segment_tx(client, segment, version).await?;
        // The owner's function deletes (the erase role holds no DELETE),
        // only under this user's committed forget_begun.
        const DELETE: Statement = Statement::new(
            "SELECT login_etl_forget_rows($1, $2, $3, $4, $5)",
            &[
                Type::VARCHAR,
                Type::VARCHAR,
                Type::DATE,
                Type::DATE,
                Type::BOOL,
            ],
            "deleting the user's rows",
        );
        let gone: i64 = DELETE
            .value(&tx, &[&user_id, &user_key, &lo, &hi, &null_dates])
            .await?;
        tx.commit().await.map_err(db("committing a delete"))?;
        rows += gone as u64;
        info!(
            segment = i + 1,
            of = segments.len(),
            rows_deleted = rows,
            "deleting the user's rows, one partition at a time"
        );
    }
    Ok(rows)
}

/// The tokens of `kind` among `rows` of (kind, token).
fn of_kind(rows: &[Row], kind: &str) -> Vec<String> {
    rows.iter()
        .filter(|r| r.get::<_, &str>(0) == kind)
        .map(|r| r.get(1))
        .collect()
}

/// Step 4's scan: of the vault entries held for `user_key` (now, or by an
/// earlier run that stopped), the ip and device tokens some other row still
/// uses, partition by partition.
async fn still_used(
    client: &mut Client,
    segments: &[Segment],
    user_key: &str,
    version: u16,
) -> Result<(Vec<String>, Vec<String>), RevealError> {
    const HELD: Statement = Statement::new(
        "SELECT kind, token FROM user_logins_pii_vault_held WHERE user_key = $1",
        &[Type::VARCHAR],
        "reading the held vault entries",
    );
    let held = HELD.rows(&*client, &[&user_key]).await?;
    let (held_ips, held_devices) = (of_kind(&held, "ip"), of_kind(&held, "device_id"));
    let (mut used_ips, mut used_devices) = (BTreeSet::new(), BTreeSet::new());
    if held.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    for segment in segments {
        let (cond, bounds) = segment.condition(3);
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&held_ips, Type::VARCHAR_ARRAY),
            (&held_devices, Type::VARCHAR_ARRAY),
        ];
        params.extend(Segment::date_params(&bounds));
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
    Ok((
        used_ips.into_iter().collect(),
        used_devices.into_iter().collect(),
    ))
}

/// Step 4's end, in one transaction: the held entries other rows use put
/// back (where the function stored one again meanwhile, it keeps the later
/// `last_seen` of the two: the vault's retention), the rest deleted, the user's tokens cleared, and the `forget`
/// audit record written (the user key and the counts, never the id).
/// Returns the vault entries deleted.
async fn finish(
    client: &mut Client,
    user_key: &str,
    version: u16,
    drains: i64,
    rows: u64,
    (used_ips, used_devices): &(Vec<String>, Vec<String>),
    caller_arn: &str,
) -> Result<u64, RevealError> {
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
    // In the vault's lock order, by the owner's function (the erase role holds
    // no privilege on the vault itself).
    const PUT_BACK: Statement = Statement::new(
        "SELECT login_etl_put_back_vault($1, $2, $3)",
        &[Type::VARCHAR, Type::VARCHAR_ARRAY, Type::VARCHAR_ARRAY],
        "putting back the vault entries other users' rows use",
    );
    PUT_BACK
        .rows(&tx, &[&user_key, used_ips, used_devices])
        .await?;
    const DELETE_HELD: Statement = Statement::new(
        "DELETE FROM user_logins_pii_vault_held WHERE user_key = $1",
        &[Type::VARCHAR],
        "deleting the user's vault entries",
    );
    let freed = DELETE_HELD.execute(&tx, &[&user_key]).await?;
    const CLEAR_TOKENS: Statement = Statement::new(
        "DELETE FROM user_logins_erasure_tokens WHERE user_key = $1",
        &[Type::VARCHAR],
        "clearing the user's tokens",
    );
    CLEAR_TOKENS.execute(&tx, &[&user_key]).await?;
    let counts = (rows as i64, freed as i64);
    // The owner's function: the erase role writes no record of its own choosing.
    const AUDIT: Statement = Statement::new(
        "SELECT login_etl_audit('forget', $1, $2, $3, $4, NULL)",
        &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8],
        "writing the audit record",
    );
    AUDIT
        .rows(&tx, &[&caller_arn, &user_key, &counts.0, &counts.1])
        .await?;
    tx.commit().await.map_err(db("committing the erasure"))?;
    Ok(freed)
}
