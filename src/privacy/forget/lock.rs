//! The moments' locks an erasure takes, and the transactions it runs its
//! per-partition statements in: each waits for its lock at most
//! [`FORGET_LOCK_TIMEOUT_MS`] before it lets queued writes through and
//! tries again, so ingest never waits longer for an erasure.

use std::time::{Duration, Instant};

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use super::state::same_key_version;
use super::{FORGET_LOCK_PATIENCE, FORGET_LOCK_TIMEOUT_MS};
use crate::database::sqlstate::{Class, Conflict};
use crate::database::statement::Statement;
use crate::privacy::reveal::{RevealError, db};
use crate::table::partitions::HOLD_PARTITION_STEP;

/// A transaction for one statement on `segment`: on the DEFAULT
/// partition's ranges it holds maintain's lock shared, so that no partition
/// is made out of the DEFAULT one (its rows moved) under the statement; a
/// partition's own range needs none, so a long scan there never holds
/// maintain up.
pub(super) async fn segment_tx<'c>(
    client: &'c mut Client,
    segment: &crate::table::partitions::Segment,
    version: u16,
) -> Result<Transaction<'c>, RevealError> {
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a transaction"))?;
    same_key_version(&tx, version).await?;
    if segment.in_default() {
        HOLD_PARTITION_STEP.rows(&tx, &[]).await?;
    }
    Ok(tx)
}

/// Moves the vault entries of `ips` and `devices` aside for `user_key`, in
/// a moment's lock (see [`begin_locked`]). Not while another `forget` holds
/// one of them and has not finished its check: it may still put the entry
/// back, after this one's check would have found it gone. So it waits for
/// that one, as long as [`FORGET_LOCK_PATIENCE`], without holding the lock.
pub(super) async fn hold_vault_entries(
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
            let entries: [&(dyn ToSql + Sync); 3] = [&user_key, &ips, &devices];
            const OTHERS_HOLD: Statement = Statement::new(
                "SELECT EXISTS (SELECT 1 FROM user_logins_pii_vault_held h WHERE h.user_key <> $1 AND \
                   ((h.kind = 'ip' AND h.token = ANY($2)) OR (h.kind = 'device_id' AND h.token = ANY($3))))",
                &[Type::VARCHAR, Type::VARCHAR_ARRAY, Type::VARCHAR_ARRAY],
                "reading the held vault entries",
            );
            if OTHERS_HOLD.value(client, &entries).await? {
                return Ok(false);
            }
            // The owner's function: the erase role holds no privilege on the vault
            // itself (migrations/functions/login_etl_hold_vault.sql).
            const HOLD_VAULT: Statement = Statement::new(
                "SELECT login_etl_hold_vault($1, $2, $3)",
                &[Type::VARCHAR, Type::VARCHAR_ARRAY, Type::VARCHAR_ARRAY],
                "moving the user's vault entries aside",
            );
            HOLD_VAULT.rows(client, &entries).await?;
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
pub(super) async fn begin_locked(client: &Client) -> Result<(), RevealError> {
    let since = Instant::now();
    loop {
        // The key-version lock first, as rotate-key's switch takes it: the
        // same order, so the two never wait for each other crosswise.
        // The owner's function takes both (the erase role may not lock the
        // table itself: migrations/functions/login_etl_forget_lock.sql).
        let locked = client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {FORGET_LOCK_TIMEOUT_MS}; \
                 SELECT login_etl_forget_lock()"
            ))
            .await;
        let Err(e) = locked else { return Ok(()) };
        let _ = client.batch_execute("ROLLBACK").await;
        // forget's policy: a lock wait is tried again, for as long as its patience.
        if !Class::conflict_among(&e, &[Conflict::LockTimeout]) {
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
pub(super) async fn end_locked<T>(
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
