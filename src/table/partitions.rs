//! The partitions of `user_logins`: how wide each is, the ones made ahead
//! (by `migrate` and `maintain`), and one made for a day, its rows moved
//! out of the DEFAULT partition under a bounded lock
//! (`login_etl_ensure_partition`, migrations/functions/login_etl_ensure_partition.sql).

use chrono::NaiveDate;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::database::statement::Statement;
use crate::error::DbError;
use crate::table::retry::{failed, with_lock_retries};

/// How wide one partition of `user_logins` is (chosen by `login-etl migrate
/// --partition-interval`, stored in `user_logins_partitioning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "service", derive(clap::ValueEnum))]
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
) -> Result<(), DbError> {
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
        Some(g) if g.as_str() != stored => Err(DbError::Fatal {
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
pub async fn premake(client: &Client, days: u32) -> Result<usize, DbError> {
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

/// `ensure_partition`, unless the DEFAULT partition holds more than
/// `max_move` rows (`login_etl_ensure_partition(date, bigint)`).
pub async fn ensure_partition_bounded(
    client: &Client,
    day: NaiveDate,
    max_move: i64,
) -> Result<Ensured, DbError> {
    let row = with_lock_retries(client, "making a partition", || async move {
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

/// A partition made by `ensure_partition` and the rows it took over from
/// the DEFAULT partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// Its name (`user_logins_pYYYYMMDD`, by its first day).
    pub name: String,
    /// Rows moved into it from `user_logins_default`.
    pub moved: i64,
}

/// Makes the partition holding `day` unless one does (and moves its rows
/// out of the DEFAULT partition): `login_etl_ensure_partition`. A test hook:
/// `maintain` moves rows out in bounded steps ([`ensure_partition_bounded`]).
#[cfg(any(test, feature = "test-support"))]
pub async fn ensure_partition(client: &Client, day: NaiveDate) -> Result<Option<Made>, DbError> {
    let row = with_lock_retries(client, "making a partition", || async move {
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

/// One partition of `user_logins` as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its table's name.
    pub name: String,
    /// First day it holds; `None` for MINVALUE (a converted table) and the
    /// DEFAULT partition.
    pub lo: Option<NaiveDate>,
    /// The day after its last; `None` for the DEFAULT partition.
    pub hi: Option<NaiveDate>,
    /// The DEFAULT partition.
    pub is_default: bool,
}

/// The partitions, oldest first (the DEFAULT partition first of all);
/// none for a table not converted yet (`migrate --prepare` done, not the
/// cutover), which has no `login_etl_partitions` either.
pub async fn partitions(client: &Client) -> Result<Vec<Partition>, tokio_postgres::Error> {
    let listed = client
        .query_typed(
            "SELECT name, lo, hi, is_default FROM login_etl_partitions()",
            &[],
        )
        .await;
    if let Err(e) = &listed
        && e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION)
    {
        return Ok(Vec::new());
    }
    Ok(listed?
        .iter()
        .map(|r| Partition {
            name: r.get(0),
            lo: r.get(1),
            hi: r.get(2),
            is_default: r.get(3),
        })
        .collect())
}

/// The partitions as [`partitions`] lists them, read from the catalog
/// alone: no function of the schema runs (doctor, which may run as a
/// superuser over a schema it audits). The bounds print in the session's
/// `DateStyle`, so the caller reads them under ISO.
pub async fn partitions_in_catalog(
    client: &Client,
) -> Result<Vec<Partition>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text, pg_catalog.pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'user_logins_rows')) \
               AND c.relkind IN ('r', 'p')",
            &[],
        )
        .await?;
    let mut listed: Vec<Partition> = rows
        .iter()
        .map(|r| {
            let bound: Option<String> = r.get(1);
            let (lo, hi, is_default) = parse_bound(bound.as_deref().unwrap_or_default());
            Partition {
                name: r.get(0),
                lo,
                hi,
                is_default,
            }
        })
        .collect();
    listed.sort_by_key(|p| (!p.is_default, p.lo, p.hi));
    Ok(listed)
}

/// A range bound as `pg_get_expr` prints it under ISO dates:
/// `FOR VALUES FROM ('2026-11-26') TO ('2026-11-27')`, `MINVALUE` for an
/// open start, or `DEFAULT`.
fn parse_bound(bound: &str) -> (Option<NaiveDate>, Option<NaiveDate>, bool) {
    if bound.trim() == "DEFAULT" {
        return (None, None, true);
    }
    // A date (a table partitioned by create_date), or a timestamptz (the
    // narrow row's, by sent_at): its UTC day.
    let day = |part: &str| {
        let quoted = part.split('\'').nth(1)?;
        NaiveDate::parse_from_str(quoted, "%Y-%m-%d").ok().or_else(|| {
            chrono::DateTime::parse_from_str(quoted, "%Y-%m-%d %H:%M:%S%#z")
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc).date_naive())
        })
    };
    let (from, to) = bound.split_once(" TO ").unwrap_or((bound, ""));
    (day(from), day(to), false)
}

/// Whole days after `today` whose rows have a partition ready, counted to
/// the first day none covers: 7 after `maintain` made a week ahead, 0 when
/// tomorrow's rows will go to the DEFAULT partition, -1 when today's
/// already do. `None` for a table without range partitions. The function
/// reports it with its batches (`PartitionDaysAhead`), so an alarm fires
/// days before rows reach the DEFAULT partition.
pub fn days_ahead(partitions: &[Partition], today: NaiveDate) -> Option<i64> {
    let ranges: Vec<(Option<NaiveDate>, NaiveDate)> = partitions
        .iter()
        .filter(|p| !p.is_default)
        .filter_map(|p| p.hi.map(|hi| (p.lo, hi)))
        .collect();
    if ranges.is_empty() {
        return None;
    }
    // The first day not known to be covered, walked forward range by range.
    let mut next = today;
    while let Some(&(_, hi)) = ranges
        .iter()
        .find(|(lo, hi)| lo.is_none_or(|lo| lo <= next) && *hi > next)
    {
        next = hi;
    }
    Some((next - today).num_days() - 1)
}

/// A range of `create_date` that partition pruning narrows to one
/// partition, or to the DEFAULT one: how `forget` visits the table one
/// short statement at a time through the parent (its privileges are on
/// the parent, never on partitions made later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Segment {
    /// `lo <= create_date < hi`: one partition's range (`lo` open for the
    /// converted table's MINVALUE).
    Range(Option<NaiveDate>, Option<NaiveDate>),
    /// A range no partition covers, each end open when `None`: its rows are
    /// in the DEFAULT partition, and `maintain` may move them into a new
    /// partition meanwhile.
    Gap(Option<NaiveDate>, Option<NaiveDate>),
    /// `create_date IS NULL` (only the DEFAULT partition can hold it).
    Null,
}

/// Holds `maintain`'s partition step off until the transaction ends (its
/// lock, shared): what a statement on a DEFAULT partition's range runs
/// under first ([`Segment::in_default`]).
pub(crate) const HOLD_PARTITION_STEP: Statement = Statement::new(
    "SELECT login_etl_lock_shared('migration')",
    &[],
    "waiting for maintain's partition step",
);

impl Segment {
    /// Its rows are in the DEFAULT partition, which `maintain` may empty
    /// into a new partition under a statement: such a statement holds
    /// maintain's lock, shared ([`HOLD_PARTITION_STEP`]).
    pub fn in_default(&self) -> bool {
        !matches!(self, Segment::Range(..))
    }

    /// The condition on `sent_at`, by UTC days (the narrow row's
    /// partition key, migrations/0028), with `$lo` and `$hi` as date
    /// parameters numbered from `first`; and the values to bind.
    pub fn condition(&self, first: usize) -> (String, Vec<NaiveDate>) {
        match *self {
            // Every row has a sent_at since the narrow row.
            Segment::Null => ("false".into(), vec![]),
            Segment::Range(lo, hi) | Segment::Gap(lo, hi) => {
                let mut parts = Vec::new();
                let mut values = Vec::new();
                if let Some(lo) = lo {
                    parts.push(format!(
                        "sent_at >= ${}::date::timestamp AT TIME ZONE 'UTC'",
                        first + values.len()
                    ));
                    values.push(lo);
                }
                if let Some(hi) = hi {
                    parts.push(format!(
                        "sent_at < ${}::date::timestamp AT TIME ZONE 'UTC'",
                        first + values.len()
                    ));
                    values.push(hi);
                }
                if parts.is_empty() {
                    parts.push("true".into());
                }
                (parts.join(" AND "), values)
            }
        }
    }

    /// Its bounds as values: from, to (either open), and whether it is the
    /// rows without a date instead.
    pub fn bounds(&self) -> (Option<NaiveDate>, Option<NaiveDate>, bool) {
        match *self {
            Segment::Null => (None, None, true),
            Segment::Range(lo, hi) | Segment::Gap(lo, hi) => (lo, hi, false),
        }
    }

    /// The values of [`Segment::condition`] as typed parameters, to append
    /// after the statement's own.
    pub fn date_params(
        bounds: &[NaiveDate],
    ) -> impl Iterator<Item = (&(dyn tokio_postgres::types::ToSql + Sync), Type)> {
        bounds
            .iter()
            .map(|d| (d as &(dyn tokio_postgres::types::ToSql + Sync), Type::DATE))
    }
}

/// The table cut into [`Segment`]s: each partition's range, each gap
/// between them (only the DEFAULT partition holds rows there), the ends
/// and NULL. Together they cover every row exactly once.
pub fn segments(partitions: &[Partition]) -> Vec<Segment> {
    let mut ranges: Vec<(Option<NaiveDate>, NaiveDate)> = partitions
        .iter()
        .filter(|p| !p.is_default)
        .filter_map(|p| p.hi.map(|hi| (p.lo, hi)))
        .collect();
    ranges.sort();
    let mut out = Vec::new();
    let mut covered_to: Option<NaiveDate> = None;
    let mut open_start = true;
    for (lo, hi) in ranges {
        match (open_start, lo) {
            (true, Some(lo)) => out.push(Segment::Gap(None, Some(lo))),
            (false, Some(lo)) if covered_to.is_some_and(|c| c < lo) => {
                out.push(Segment::Gap(covered_to, Some(lo)))
            }
            _ => {}
        }
        out.push(Segment::Range(lo, Some(hi)));
        open_start = false;
        covered_to = Some(covered_to.map_or(hi, |c| c.max(hi)));
    }
    out.push(Segment::Gap(covered_to, None));
    out.push(Segment::Null);
    out
}

#[cfg(test)]
mod tests;
