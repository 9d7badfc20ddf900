//! What an erasure reads of the key state, in the transaction it runs in:
//! the key version (holding the key-version lock shared, so no rotation
//! switches under it), whether a re-key or a DEFAULT drain is under way, and
//! whether the erasure key is the one the list is keyed with.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::privacy::masking::UserKeys;
use crate::privacy::reveal::{RevealError, db};

/// The key version, in a transaction that holds the `key_version` lock
/// (user_logins_locks, migrations/0019) shared: no rotation's switch
/// (which takes it exclusively) commits under it. The version, and whether
/// a re-key is under way.
pub(super) async fn key_version(client: &impl GenericClient) -> Result<(u16, bool), RevealError> {
    client
        .query_typed("SELECT login_etl_lock_shared('key_version')", &[])
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
pub(super) async fn drain_generation(client: &impl GenericClient) -> Result<i64, RevealError> {
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
pub(super) async fn check_erasure_key(
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
pub(super) async fn same_key_version(
    client: &impl GenericClient,
    version: u16,
) -> Result<(), RevealError> {
    match key_version(client).await? {
        (v, false) if v == version => Ok(()),
        _ => Err(RevealError::RekeyUnderWay),
    }
}
