//! The switch (step 1 of a re-key): the keys checked against the
//! database, and the key version moved from n-1 to n in a moment's lock,
//! tried again while writers, erasures in flight or a DEFAULT drain keep
//! it from starting.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use super::{RekeyError, SWITCH_LOCK_TIMEOUT_MS, db};
use crate::database::server::server_version;
use crate::database::sqlstate::{Class, Conflict, Own};
use crate::database::statement::Statement;
use crate::privacy::masking::Masker;

/// Compares the keys of `version` with the check values the database
/// records (records them where it has none).
pub(super) async fn check_keys(
    client: &Client,
    masker: &Masker,
    version: u16,
) -> Result<(), RekeyError> {
    let m = masker.at(version).expect("a version the masker holds");
    let (v, mc, ec) = (version as i16, m.check(), m.users().check());
    const CHECK: Statement = Statement::new(
        "SELECT login_etl_check_keys($1, $2, $3)",
        &[Type::INT2, Type::TEXT, Type::TEXT],
        "checking the keys against the database",
    );
    match CHECK.rows(client, &[&v, &mc.as_str(), &ec.as_str()]).await {
        Ok(_) => Ok(()),
        Err(f) => Err(match f.refusal(Own::KeysDiffer) {
            Some(message) => RekeyError::KeyMismatch(message),
            None => f.into(),
        }),
    }
}

/// Refuses a switch that would leave something behind: a server without
/// TID range scans, or an unpartitioned table (its rows are not walked).
pub(super) async fn ready_to_switch(client: &Client) -> Result<(), RekeyError> {
    // Chunks are TID range scans (PostgreSQL 14): on 13 each would read the
    // whole partition.
    let (version, _) = server_version(client)
        .await
        .map_err(db("reading the server's version"))?;
    if version < 140_000 {
        return Err(RekeyError::ServerTooOld(version));
    }
    let partitioned = !crate::table::partitions::partitions(client)
        .await
        .map_err(db("listing the partitions"))?
        .is_empty();
    if !partitioned {
        return Err(RekeyError::NotPartitioned);
    }
    // Vault entries of the old form: the switch checks them under its locks
    // (`Own::VaultNotUpgraded`), where none can arrive in between.
    Ok(())
}

/// The switch to version `to` (see the module docs), tried again while
/// writers hold their lock longer than [`SWITCH_LOCK_TIMEOUT_MS`].
pub(super) async fn switch(
    client: &Client,
    masker: &Masker,
    to: u16,
    caller: &str,
    patience: Duration,
) -> Result<(), RekeyError> {
    let next = masker
        .at(to)
        .expect("rotate only switches to a version the masker holds");
    let checks = (next.check(), next.users().check());
    let checks = (checks.0.as_str(), checks.1.as_str());
    let since = Instant::now();
    let mut waited_for_forget = false;
    loop {
        let Err(e) = try_switch(client, to, caller, checks).await else {
            return Ok(());
        };
        let _ = client.batch_execute("ROLLBACK").await;
        let pause = match Own::of(&e) {
            Some(Own::RotationNotArmed) => {
                return Err(RekeyError::NotArmed(
                    e.as_db_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_default(),
                ));
            }
            Some(Own::VaultNotUpgraded) => return Err(not_upgraded(client).await),
            Some(Own::VaultIndexMissing) => return Err(RekeyError::VaultIndexMissing),
            // maintain drains a swapped-out DEFAULT partition: wait for it
            // (its rows would be out of the walk's sight).
            Some(Own::DrainUnderWay) => {
                if since.elapsed() >= patience {
                    let seconds = patience.as_secs();
                    return Err(RekeyError::DrainUnderWay { seconds });
                }
                if since.elapsed().as_secs().is_multiple_of(30) {
                    info!(
                        "waiting for login-etl maintain to move a swapped-out DEFAULT partition's rows back"
                    );
                }
                Duration::from_secs(1)
            }
            // A forget between its deletes and its end holds tokens of the
            // current version: one in flight ends in seconds (erasure
            // requests go on during an incident), one that stopped never.
            Some(Own::ErasureUnfinished) => {
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                if since.elapsed() >= patience {
                    let seconds = patience.as_secs();
                    return Err(RekeyError::UnfinishedErasures { message, seconds });
                }
                if !waited_for_forget {
                    waited_for_forget = true;
                    info!(
                        "{message}: waiting up to {} s for the forget runs in flight to finish (one that stopped must be run again)",
                        patience.as_secs()
                    );
                }
                Duration::from_millis(200)
            }
            // The switch's policy: a lock wait or a serialization failure
            // is tried again, for as long as `patience`.
            _ if Class::conflict_among(&e, &[Conflict::LockTimeout, Conflict::Serialization]) => {
                if since.elapsed() >= patience {
                    let seconds = patience.as_secs();
                    return Err(RekeyError::SwitchLocked { seconds });
                }
                let jitter = u64::from(since.elapsed().subsec_nanos() % 100);
                Duration::from_millis(100 + jitter)
            }
            _ => return Err(db("switching the key version")(e)),
        };
        tokio::time::sleep(pause).await;
    }
}

/// One attempt at the switch's transaction (`login_etl_switch_key`),
/// waiting at most [`SWITCH_LOCK_TIMEOUT_MS`] for its lock; on an error
/// the transaction is still open (the caller rolls it back).
async fn try_switch(
    client: &Client,
    to: u16,
    caller: &str,
    (masking_check, erasure_check): (&str, &str),
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {SWITCH_LOCK_TIMEOUT_MS}"
        ))
        .await?;
    client
        .query_typed(
            "SELECT login_etl_switch_key($1, $2, $3, $4)",
            &[
                (&(to as i16), Type::INT2),
                (&caller, Type::TEXT),
                (&masking_check, Type::TEXT),
                (&erasure_check, Type::TEXT),
            ],
        )
        .await?;
    client.batch_execute("COMMIT").await
}

/// The switch refused vault entries of the old form: how many there are.
async fn not_upgraded(client: &Client) -> RekeyError {
    const OLD_FORM: Statement = Statement::new(
        "SELECT count(*) FROM user_logins_pii_vault WHERE aad_version = 1",
        &[],
        "counting vault entries of the old form",
    );
    match OLD_FORM.value(client, &[]).await {
        Ok(entries) => RekeyError::VaultNotUpgraded(entries),
        Err(f) => f.into(),
    }
}
