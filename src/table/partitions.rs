//! The partitions of `user_logins`: how wide each is, the ones made ahead
//! (by `migrate` and `maintain`), and one made for a day, its rows moved
//! out of the DEFAULT partition under a bounded lock
//! (`login_etl_ensure_partition`, migrations/0004).

use chrono::NaiveDate;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::error::SinkError;
use crate::table::schema::{failed, with_lock_retries};

/// How wide one partition of `user_logins` is (chosen by `login-etl migrate
/// --partition-interval`, stored in `user_logins_partitioning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Granularity {
    /// One partition per UTC day (the default: at 200 M rows a day, a day
    /// is the unit retention drops and `forget` scans).
    #[default]
    Day,
    /// One per ISO week (Monday to Sunday).
    Week,
    /// One per calendar month.
    Month,
}

impl Granularity {
    /// The name stored and given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
        }
    }

    /// Parses a stored or command-line name.
    pub fn parse(name: &str) -> Option<Self> {
        [Granularity::Day, Granularity::Week, Granularity::Month]
            .into_iter()
            .find(|g| g.as_str() == name)
    }
}

/// Days before today whose partitions `migrate` and `maintain` make (a
/// message sent just before midnight UTC and read after it).
pub const PREMAKE_PAST_DAYS: i64 = 1;

/// Stores the granularity of a new table, or checks that `wanted` is the
/// one stored.
pub(crate) async fn set_granularity(
    client: &Client,
    wanted: Option<Granularity>,
) -> Result<(), SinkError> {
    let read = client
        .query_typed_opt("SELECT granularity FROM user_logins_partitioning", &[])
        .await
        .map_err(failed("reading the partition interval"))?;
    let stored: String = match read {
        Some(row) => row.get(0),
        None => client
            .query_typed_one(
                "WITH ins AS (INSERT INTO user_logins_partitioning (granularity) VALUES ($1) \
                 ON CONFLICT (singleton) DO NOTHING RETURNING granularity) \
                 SELECT granularity FROM ins UNION ALL SELECT granularity FROM user_logins_partitioning LIMIT 1",
                &[(&wanted.unwrap_or_default().as_str(), Type::VARCHAR)],
            )
            .await
            .map_err(failed("storing the partition interval"))?
            .get(0),
    };
    match wanted {
        Some(g) if g.as_str() != stored => Err(SinkError::Fatal {
            op: "choosing the partition interval",
            cause: format!(
                "user_logins is partitioned by {stored}; --partition-interval {} was asked",
                g.as_str()
            ),
            hint: format!("; partitions of two widths would overlap: leave --partition-interval out (or give {stored})").into(),
        }),
        _ => Ok(()),
    }
}

/// Makes every missing partition from [`PREMAKE_PAST_DAYS`] before today
/// (UTC) to `days` after it, one short transaction each; returns how many
/// it made. One whose making would move more than
/// [`DEFAULT_MOVE_LIMIT`] rows of the DEFAULT partition under its lock is
/// left to `login-etl maintain` (which swaps the DEFAULT partition out).
pub async fn premake(client: &Client, days: u32) -> Result<usize, SinkError> {
    let today = chrono::Utc::now().date_naive();
    let mut made = 0;
    for offset in -PREMAKE_PAST_DAYS..=i64::from(days) {
        let day = today + chrono::TimeDelta::days(offset);
        match ensure_partition_bounded(client, day, DEFAULT_MOVE_LIMIT).await? {
            Ensured::Made(_) => made += 1,
            Ensured::Covered => {}
            Ensured::Deferred => {
                tracing::warn!(%day, "the DEFAULT partition holds too many rows to make this partition beside ingest; run login-etl maintain, which swaps it out");
                break;
            }
        }
    }
    Ok(made)
}

/// The most rows the DEFAULT partition may hold for a partition to be made
/// (its rows of the new partition's days moved) under its lock, by
/// default: making a partition scans the DEFAULT one, and holds the writes
/// that go there, for as long as that takes. Measured beside ingest
/// (benches/stalls.rs, docs/performance.md): about 12 ms per 1,000 rows
/// moved, so 2,000 keep a write's wait near 25 ms; above it, `maintain`
/// swaps the DEFAULT partition out and drains it in chunks.
pub const DEFAULT_MOVE_LIMIT: i64 = 2_000;

/// What [`ensure_partition_bounded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Made it (with the rows it took from the DEFAULT partition).
    Made(Made),
    /// A partition covered the day already.
    Covered,
    /// The DEFAULT partition holds more than the limit: not made.
    Deferred,
}

/// [`ensure_partition`], unless the DEFAULT partition holds more than
/// `max_move` rows (`login_etl_ensure_partition(date, bigint)`).
pub async fn ensure_partition_bounded(
    client: &Client,
    day: NaiveDate,
    max_move: i64,
) -> Result<Ensured, SinkError> {
    let row = with_lock_retries("making a partition", || async move {
        client
            .query_typed_opt(
                "SELECT created, moved FROM login_etl_ensure_partition($1, $2)",
                &[(&day, Type::DATE), (&max_move, Type::INT8)],
            )
            .await
    })
    .await?;
    Ok(match row {
        None => Ensured::Covered,
        Some(r) => match r.get::<_, Option<String>>(0) {
            Some(name) => Ensured::Made(Made {
                name,
                moved: r.get(1),
            }),
            None => Ensured::Deferred,
        },
    })
}

/// A partition made by [`ensure_partition`] and the rows it took over from
/// the DEFAULT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// Its name (`user_logins_pYYYYMMDD`, by its first day).
    pub name: String,
    /// Rows moved into it from `user_logins_default`.
    pub moved: i64,
}

/// Makes the partition holding `day` unless one does (and moves its rows
/// out of the DEFAULT partition): `login_etl_ensure_partition`.
pub async fn ensure_partition(client: &Client, day: NaiveDate) -> Result<Option<Made>, SinkError> {
    let row = with_lock_retries("making a partition", || async move {
        client
            .query_typed_opt(
                "SELECT created, moved FROM login_etl_ensure_partition($1)",
                &[(&day, Type::DATE)],
            )
            .await
    })
    .await?;
    Ok(row.map(|r| Made {
        name: r.get(0),
        moved: r.get(1),
    }))
}
