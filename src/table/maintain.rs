//! `login-etl maintain`: the table's life. It makes the partitions of the
//! coming days, moves rows that landed in the DEFAULT partition into their
//! own, and drops the partitions past `RETENTION_DAYS`.
//!
//! Every step is one call of an owner's function (migrations/functions/), in a
//! transaction of its own, run with the owner's rights (the maintain role
//! holds EXECUTE on them and nothing else: ingest never gets DDL). Each
//! takes the migration's lock (a row only the owner may lock), so runs
//! beside each other and
//! beside `migrate` are safe, and each waits for its table lock at most
//! 100 ms before it lets ingest through and tries again
//! ([`crate::table::retry::LOCK_TRIES`]): a write never waits longer than that.
//! Nothing is kept on the connection between steps, so it runs through a
//! transaction-mode pooler too. Idempotent: a second run finds nothing to do.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeDelta, Utc};
use serde_json::{Value, json};
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::{info, warn};

use crate::database::sqlstate::Own;
use crate::error::DbError;
use crate::table::partitions::{
    DEFAULT_MOVE_LIMIT, Ensured, Made, PREMAKE_PAST_DAYS, ensure_partition_bounded,
};
use crate::table::retention;
use crate::table::retry::{failed, with_lock_retries};

/// Days ahead whose partitions exist after a run: a week, so that a
/// maintenance schedule that fails for six days in a row (alarmed on its
/// first failure) still leaves no row in the DEFAULT partition. Empty
/// partitions cost a few catalog rows each.
pub const DEFAULT_PREMAKE_DAYS: u32 = 7;

/// What a run is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaintainOptions {
    /// Partitions are made up to this many days after today (UTC).
    pub premake_days: u32,
    /// Rows are kept for this many days (today included): partitions whose
    /// every day is older are dropped. `None` keeps everything.
    pub retention_days: Option<u32>,
    /// The most rows the DEFAULT partition may hold for them to be moved
    /// under its lock (`DEFAULT_MOVE_LIMIT`); above it, the DEFAULT
    /// partition is swapped out and drained in chunks.
    pub default_move_limit: i64,
}

impl Default for MaintainOptions {
    fn default() -> Self {
        Self {
            premake_days: DEFAULT_PREMAKE_DAYS,
            retention_days: None,
            default_move_limit: DEFAULT_MOVE_LIMIT,
        }
    }
}

/// Pages of the swapped-out DEFAULT partition moved back per transaction
/// (about 8,000 rows).
const DRAIN_PAGES: i32 = 200;

/// The pause after a chunk of the drain, as a share of the chunk's time.
const DRAIN_REST: f64 = 1.0;

impl MaintainOptions {
    /// `PREMAKE_DAYS` and `RETENTION_DAYS` from the environment (unset:
    /// the defaults, keep everything); what the maintenance function reads.
    pub fn from_env() -> Result<Self, crate::error::ConfigError> {
        let read = |var: &'static str| -> Result<Option<u32>, crate::error::ConfigError> {
            match std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .map(Some)
                    .ok_or(crate::error::ConfigError::Invalid {
                        var,
                        reason: "expected a whole number of days, 1 or more".into(),
                    }),
            }
        };
        Ok(Self {
            premake_days: read("PREMAKE_DAYS")?.unwrap_or(DEFAULT_PREMAKE_DAYS),
            retention_days: read("RETENTION_DAYS")?,
            default_move_limit: read("DEFAULT_MOVE_LIMIT")?.map_or(DEFAULT_MOVE_LIMIT, i64::from),
        })
    }

    /// The first day kept: rows dated before it are past retention.
    pub fn cutoff(&self, today: NaiveDate) -> Option<NaiveDate> {
        self.retention_days
            .map(|days| today - TimeDelta::days(i64::from(days.saturating_sub(1))))
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// Partitions made, with the rows each took over from the DEFAULT partition.
    pub created: Vec<Made>,
    /// Partitions dropped, with their estimated rows (`pg_class.reltuples`).
    pub dropped: Vec<(String, i64)>,
    /// Rows of the DEFAULT partition past retention, deleted.
    pub purged_from_default: i64,
    /// PII-vault entries no row within retention uses, deleted.
    pub vault_entries_purged: i64,
    /// Rows still in the DEFAULT partition at the end: 0 unless a step
    /// failed, or rows are dated past the premake horizon (no partition
    /// is made for them: doctor names them).
    pub default_rows: i64,
    /// Rows of a swapped-out DEFAULT partition moved back into their
    /// partitions (its drain, this run's or one an earlier run began).
    pub drained_from_default: i64,
    /// Partitions left unmade because the DEFAULT partition was too large
    /// to scan under its lock and could not be swapped (a re-key under way).
    pub deferred: usize,
    /// Wall time of the run.
    pub duration: Duration,
    /// `RETENTION_DAYS` and the retention the tables' owner recorded
    /// disagree: which one the run applied, and the command that makes
    /// them one.
    pub retention_disagrees: Option<String>,
}

impl MaintainReport {
    /// Rows moved out of the DEFAULT partition into partitions made for them.
    pub fn moved_from_default(&self) -> i64 {
        self.created.iter().map(|m| m.moved).sum()
    }

    /// Rows of the dropped partitions, as estimated.
    pub fn rows_dropped(&self) -> i64 {
        self.dropped.iter().map(|(_, rows)| rows).sum()
    }

    /// The run as a CloudWatch EMF document (namespace, `service`
    /// dimension and `level` as the function's, see [`crate::emf`]).
    pub fn emf(&self, namespace: &str, service: &str, level: &str, timestamp_ms: i64) -> Value {
        let metrics = [
            ("PartitionsCreated", self.created.len() as i64, "Count"),
            ("PartitionsDropped", self.dropped.len() as i64, "Count"),
            ("RowsDropped", self.rows_dropped(), "Count"),
            ("RowsMovedFromDefault", self.moved_from_default(), "Count"),
            ("RowsPurgedFromDefault", self.purged_from_default, "Count"),
            ("RowsDrainedFromDefault", self.drained_from_default, "Count"),
            ("VaultEntriesPurged", self.vault_entries_purged, "Count"),
            ("PartitionsDeferred", self.deferred as i64, "Count"),
            (
                "RetentionDisagrees",
                i64::from(self.retention_disagrees.is_some()),
                "Count",
            ),
            ("DefaultPartitionRows", self.default_rows, "Count"),
            (
                "MaintenanceDuration",
                self.duration.as_millis() as i64,
                "Milliseconds",
            ),
        ];
        let mut doc = json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [["service"]],
                    "Metrics": metrics.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
                }],
            },
            "level": level,
            "message": "maintenance done",
            "service": service,
            "created": self.created.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            "dropped": self.dropped.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        });
        for (name, value, _) in metrics {
            doc[name] = json!(value);
        }
        if let Some(why) = &self.retention_disagrees {
            doc["retention"] = json!(why);
        }
        doc
    }
}

/// The run's EMF document with the namespace, `service` and level the
/// function's documents take from the same variables
/// (`POWERTOOLS_METRICS_NAMESPACE`, `POWERTOOLS_SERVICE_NAME`,
/// `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`).
pub fn emf_from_env(report: &MaintainReport) -> Value {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let level = get("AWS_LAMBDA_LOG_LEVEL").or_else(|| get("RUST_LOG"));
    report.emf(
        &get("POWERTOOLS_METRICS_NAMESPACE")
            .unwrap_or_else(|| crate::emf::DEFAULT_NAMESPACE.into()),
        &get("POWERTOOLS_SERVICE_NAME").unwrap_or_else(|| crate::emf::DEFAULT_SERVICE.into()),
        crate::emf::emf_level(level.as_deref()),
        Utc::now().timestamp_millis(),
    )
}

/// One maintenance run (see the module documentation).
pub async fn run(client: &Client, options: &MaintainOptions) -> Result<MaintainReport, DbError> {
    let started = Instant::now();
    let today = Utc::now().date_naive();
    let mut report = MaintainReport::default();
    // RETENTION_DAYS and the owner's record: the longer applies, and a
    // disagreement is reported, never a failed run.
    let configured = retention::Kept::configured(options.retention_days);
    let kept = match retention::recorded(client).await? {
        Some(recorded) => {
            let (applied, disagreement) = retention::reconcile(configured, recorded);
            if let Some(why) = &disagreement {
                warn!("{why}");
            }
            report.retention_disagrees = disagreement.map(|d| d.to_string());
            applied
        }
        None => configured,
    };
    let cutoff = MaintainOptions {
        retention_days: kept.days(),
        ..*options
    }
    .cutoff(today);

    let premade: Vec<NaiveDate> = (-PREMAKE_PAST_DAYS..=i64::from(options.premake_days))
        .map(|offset| today + TimeDelta::days(offset))
        .collect();
    // No partition past the premake horizon, whatever a row's date: SQS
    // dates no message ahead, so a row dated later was written by a
    // credential, not the function, and each partition it asked for would
    // stay for years. Such rows wait in the DEFAULT partition (doctor names
    // them) until their day comes within the horizon.
    let horizon = horizon(today, options.premake_days);
    let wanted = |day: Option<NaiveDate>| {
        day.filter(|d| cutoff.is_none_or(|c| *d >= c) && *d <= horizon)
    };
    if draining(client, options, today).await? {
        drain_default(client, options, &wanted, &premade, &mut report).await?;
    }
    // The coming days first: the step that keeps rows out of the DEFAULT
    // partition; then the days of rows that found no partition (unless
    // past retention, or past the horizon).
    let mut waiting: Vec<NaiveDate> = Vec::new();
    for (day, rows) in default_days(client).await? {
        match wanted(day) {
            Some(day) => {
                warn!(%day, rows, "rows in the DEFAULT partition: making their partition");
                waiting.push(day);
            }
            None if day.is_some_and(|d| d > horizon) => warn!(
                rows,
                "rows in the DEFAULT partition dated past the premake horizon: no partition made for them (login-etl doctor names them)"
            ),
            None => {}
        }
    }
    for day in premade.into_iter().chain(waiting) {
        match ensure_partition_bounded(client, day, options.default_move_limit).await? {
            Ensured::Made(made) => {
                info!(partition = %made.name, moved = made.moved, "partition made");
                report.created.push(made);
            }
            Ensured::Covered => {}
            Ensured::Deferred => report.deferred += 1,
        }
    }
    if let Some(cutoff) = cutoff {
        let expired = retention::apply(client, cutoff).await?;
        report.purged_from_default = expired.purged_from_default;
        report.dropped.extend(expired.dropped);
    }
    retention::drop_detached(client).await?;
    // A masking-only database has no vault to age out.
    if let Some(cutoff) = cutoff
        && crate::table::schema::profile(client)
            .await
            .map_err(failed("reading the database's profile"))?
            == crate::profile::Profile::Full
    {
        report.vault_entries_purged = retention::purge_vault(client, cutoff).await?;
    }
    report.default_rows = default_days(client)
        .await?
        .iter()
        .map(|(_, rows)| rows)
        .sum();
    report.duration = started.elapsed();
    Ok(report)
}

/// Whether a drain of a swapped-out DEFAULT partition is under way: one
/// an earlier run began and did not finish, or one begun now because the
/// DEFAULT partition is too large to empty under its lock (days of failed
/// runs), unless a re-key keeps it from being swapped.
async fn draining(
    client: &Client,
    options: &MaintainOptions,
    today: NaiveDate,
) -> Result<bool, DbError> {
    if drain_state(client).await? {
        return Ok(true);
    }
    if default_size(client, options.default_move_limit).await? <= options.default_move_limit {
        return Ok(false);
    }
    let swapped = swap_default(client, &[today - TimeDelta::days(1), today]).await?;
    if !swapped {
        warn!(
            "a masking-key re-key is under way: the DEFAULT partition's rows stay there until it ends (login-etl rotate-key --status)"
        );
    }
    Ok(swapped)
}

/// The last day maintain makes a partition for: `premake_days` after
/// `today`. A row dated later waits in the DEFAULT partition (doctor names
/// it), and so does the drain's.
pub fn horizon(today: NaiveDate, premake_days: u32) -> NaiveDate {
    today + TimeDelta::days(i64::from(premake_days))
}

/// The partitions first (today's at once, while the new DEFAULT partition
/// holds a moment's rows), then the drained days' (read from the drain,
/// which takes a while), then the rows back.
async fn drain_default(
    client: &Client,
    options: &MaintainOptions,
    wanted: &(dyn Fn(Option<NaiveDate>) -> Option<NaiveDate> + Sync),
    premade: &[NaiveDate],
    report: &mut MaintainReport,
) -> Result<(), DbError> {
    let make = async |day: NaiveDate, report: &mut MaintainReport| {
        let limit = options.default_move_limit;
        if let Ensured::Made(made) = ensure_partition_bounded(client, day, limit).await? {
            info!(partition = %made.name, moved = made.moved, "partition made while the DEFAULT partition is drained");
            report.created.push(made);
        }
        Ok::<_, DbError>(())
    };
    for &day in premade {
        make(day, report).await?;
    }
    for (day, rows) in days_of(client, "login_etl_drain_days()").await? {
        if let Some(day) = wanted(day) {
            info!(%day, rows, "rows of the swapped-out DEFAULT partition: making their partition");
            make(day, report).await?;
        }
    }
    report.drained_from_default += drain(client).await?;
    Ok(())
}

/// The DEFAULT partition's rows, counted up to `cap + 1`.
async fn default_size(client: &Client, cap: i64) -> Result<i64, DbError> {
    Ok(client
        .query_typed_one("SELECT login_etl_default_size($1)", &[(&cap, Type::INT8)])
        .await
        .map_err(failed("counting the DEFAULT partition's rows"))?
        .get(0))
}

/// Whether a swapped-out DEFAULT partition waits to be drained.
async fn drain_state(client: &Client) -> Result<bool, DbError> {
    Ok(client
        .query_typed_one("SELECT draining FROM login_etl_drain_state()", &[])
        .await
        .map_err(failed("reading whether a DEFAULT partition is drained"))?
        .get(0))
}

/// Swaps the DEFAULT partition out, making the partitions of `live_days`
/// in the same moment (`login_etl_swap_default`): false when
/// a re-key under way keeps it (`Own::DrainUnderWay`).
async fn swap_default(client: &Client, live_days: &[NaiveDate]) -> Result<bool, DbError> {
    // A drain under way (`Own::DrainUnderWay`) is an answer, not a failure: no swap now.
    let swapped = with_lock_retries(client, "swapping the DEFAULT partition out", || async {
        match client
            .query_typed_one(
                "SELECT login_etl_swap_default($1)",
                &[(&live_days, Type::DATE_ARRAY)],
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if Own::of(&e) == Some(Own::DrainUnderWay) => Ok(false),
            Err(e) => Err(e),
        }
    })
    .await?;
    if swapped {
        info!("DEFAULT partition swapped out; draining it into its partitions");
    }
    Ok(swapped)
}

/// Moves a swapped-out DEFAULT partition's rows back through `user_logins`
/// a chunk of pages per transaction, to its end; the rows moved (0 when no
/// drain is under way).
async fn drain(client: &Client) -> Result<i64, DbError> {
    let (mut page, mut moved) = (0i64, 0i64);
    let started = Instant::now();
    let mut said = Instant::now();
    loop {
        let chunk = Instant::now();
        let row = with_lock_retries(
            client,
            "draining the swapped-out DEFAULT partition",
            || async move {
                client
                    .query_typed_one(
                        "SELECT moved, next_page FROM login_etl_drain_default($1, $2)",
                        &[(&page, Type::INT8), (&DRAIN_PAGES, Type::INT4)],
                    )
                    .await
            },
        )
        .await?;
        moved += row.get::<_, i64>(0);
        match row.get::<_, Option<i64>>(1) {
            Some(next) => page = next,
            None => return Ok(moved),
        }
        // Half the time resting: the rows' WAL and index writes compete
        // with ingest's commits for the disk (benches/stalls.rs).
        tokio::time::sleep(chunk.elapsed().mul_f64(DRAIN_REST)).await;
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            info!(
                rows = moved,
                pages = page,
                seconds = started.elapsed().as_secs(),
                "draining the swapped-out DEFAULT partition"
            );
        }
    }
}

/// The DEFAULT partition's rows by day.
async fn default_days(client: &Client) -> Result<Vec<(Option<NaiveDate>, i64)>, DbError> {
    days_of(client, "login_etl_default_days()").await
}

/// Rows by day, from `function` (the DEFAULT partition's, or a swapped-out
/// one's).
async fn days_of(
    client: &Client,
    function: &str,
) -> Result<Vec<(Option<NaiveDate>, i64)>, DbError> {
    Ok(client
        .query_typed(&format!("SELECT day, row_count FROM {function}"), &[])
        .await
        .map_err(failed("reading the DEFAULT partition's days"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[cfg(test)]
mod tests;
