//! `rotate-key --status`: the exposure window. While a re-key is under way
//! a leaked key still opens the rows and vault entries not yet moved; this
//! says how many are left and how long they should take at the rate so far.

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::{ROWS_ESTIMATE, RekeyError, db};

/// What the retired key still opens, and for how long, while a re-key is
/// under way (all zero and `None` when none is).
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    /// The version being re-keyed from.
    pub rekey_from: Option<u16>,
    /// When the switch began this re-key.
    pub started_at: Option<DateTime<Utc>>,
    /// Rows still under the old version, at most: the planner's count of
    /// every row (`reltuples`) less the rows re-keyed. Rows written since
    /// the switch are counted too, so the window is never understated.
    pub rows_left: u64,
    /// Vault entries still under the old version, at most, counted the
    /// same way.
    pub vault_entries_left: u64,
    /// Rows and entries re-keyed per second since the switch, by every run
    /// (the pauses between runs included).
    pub rate: f64,
    /// Seconds until nothing is left at that rate; `None` before anything
    /// has moved.
    pub seconds_left: Option<f64>,
}

/// Reads [`Exposure`] (the rotate role's privileges suffice). The counts
/// are the planner's: as fresh as the last ANALYZE of each partition.
pub async fn exposure(client: &Client) -> Result<Exposure, RekeyError> {
    let row = client
        .query_typed_one(
            &format!(
                "SELECT s.rekey_from, s.changed_at, s.rekey_rows, s.rekey_vault, ({ROWS_ESTIMATE}), \
             (SELECT coalesce(max(greatest(c.reltuples, 0)), 0)::int8 FROM pg_class c \
               WHERE c.oid = to_regclass('user_logins_pii_vault')), \
             extract(epoch FROM clock_timestamp() - s.changed_at)::float8 \
             FROM user_logins_key_state s"
            ),
            &[],
        )
        .await
        .map_err(db(
            "reading the re-key's progress (the rotate role of this version: login-etl grants --role rotate)",
        ))?;
    let Some(from) = row.get::<_, Option<i16>>(0) else {
        return Ok(Exposure {
            rekey_from: None,
            started_at: None,
            rows_left: 0,
            vault_entries_left: 0,
            rate: 0.0,
            seconds_left: Some(0.0),
        });
    };
    let (rows_done, vault_done): (i64, i64) = (row.get(2), row.get(3));
    let (rows, vault): (i64, i64) = (row.get(4), row.get(5));
    let left = |all: i64, done: i64| all.saturating_sub(done).max(0) as u64;
    let (rows_left, vault_entries_left) = (left(rows, rows_done), left(vault, vault_done));
    let elapsed: f64 = row.get(6);
    let rate = (rows_done + vault_done) as f64 / elapsed.max(1e-3);
    let seconds_left = (rate > 0.0).then(|| (rows_left + vault_entries_left) as f64 / rate);
    Ok(Exposure {
        rekey_from: Some(from as u16),
        started_at: Some(row.get(1)),
        rows_left,
        vault_entries_left,
        rate,
        seconds_left,
    })
}
