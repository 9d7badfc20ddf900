//! What an erasure reads of the key state, in the transaction it runs in:
//! the key version (holding the key-version lock shared, so no rotation
//! switches under it), whether a re-key or a DEFAULT drain is under way, and
//! whether the erasure key is the one the list is keyed with.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::database::sqlstate::Own;
use crate::database::statement::Statement;
use crate::privacy::masking::UserKeys;
use crate::privacy::reveal::RevealError;

/// The key version, in a transaction that holds the `key_version` lock
/// (user_logins_locks, migrations/0022) shared: no rotation's switch
/// (which takes it exclusively) commits under it. The version, and whether
/// a re-key is under way.
pub(super) async fn key_version(client: &impl GenericClient) -> Result<(u16, bool), RevealError> {
    const LOCK_KEY_VERSION: Statement = Statement::new(
        "SELECT login_etl_lock_shared('key_version')",
        &[],
        "waiting for a key rotation's switch",
    );
    LOCK_KEY_VERSION.rows(client, &[]).await?;
    const KEY_VERSION: Statement = Statement::new(
        "SELECT version, rekey_from IS NOT NULL FROM login_etl_key_state()",
        &[],
        "reading the key version",
    );
    let row = KEY_VERSION.row(client, &[]).await?;
    Ok((row.get::<_, i16>(0) as u16, row.get(1)))
}

/// How many DEFAULT-partition drains began, when none is under way
/// (`login_etl_drain_state()`, migrations/functions/login_etl_drain_state.sql); [`RevealError::DrainUnderWay`]
/// while one is.
pub(super) async fn drain_generation(client: &impl GenericClient) -> Result<i64, RevealError> {
    const DRAIN_STATE: Statement = Statement::new(
        "SELECT draining, generation FROM login_etl_drain_state()",
        &[],
        "reading whether maintain drains the DEFAULT partition",
    );
    let row = DRAIN_STATE.row(client, &[]).await?;
    if row.get::<_, bool>(0) {
        return Err(RevealError::DrainUnderWay);
    }
    Ok(row.get(1))
}

/// Refuses user keys the erasure list is not keyed with: keys of their own
/// where the list's are derived from the masking key, or keys whose check
/// value differs from the one recorded. When none is recorded yet, these
/// keys' value is (the function then refuses other keys, loudly).
pub(super) async fn check_erasure_key(
    client: &impl GenericClient,
    keys: &UserKeys,
    version: u16,
) -> Result<(), RevealError> {
    const ERASURE_DERIVED: Statement = Statement::new(
        "SELECT erasure_derived FROM login_etl_key_state()",
        &[],
        "reading the key version",
    );
    let derived: bool = ERASURE_DERIVED.value(client, &[]).await?;
    if derived && !keys.is_derived() {
        return Err(RevealError::DerivedUserKeys);
    }
    let v = version as i16;
    let check = keys.check();
    const CHECK: Statement = Statement::new(
        "SELECT login_etl_check_keys($1, NULL, $2)",
        &[Type::INT2, Type::TEXT],
        "checking the erasure key",
    );
    match CHECK.rows(client, &[&v, &check.as_str()]).await {
        Ok(_) => Ok(()),
        Err(f) => Err(match f.refusal(Own::KeysDiffer) {
            Some(message) => RevealError::KeyMismatch(message),
            None => f.into(),
        }),
    }
}

/// Fails with [`RevealError::RekeyUnderWay`] unless the key is still at
/// `version` with no re-key under way (see [`key_version`]).
pub(super) async fn same_key_version(
    client: &impl GenericClient,
    version: u16,
) -> Result<(), RevealError> {
    match key_version(client).await? {
        (v, false) if v == version => Ok(()),
        _ => Err(RevealError::RekeyUnderWay),
    }
}
