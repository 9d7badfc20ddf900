//! What `RETENTION_DAYS` removes, as `login-etl maintain` runs it: the
//! DEFAULT partition's rows past it, the partitions wholly past it
//! (detached, then dropped in a transaction of their own), and the PII
//! vault's entries no row within it uses (`last_seen`, migrations/0010).
//!
//! Every step is one of the owner's `login_etl_*` functions, under a
//! bounded lock ([`with_lock_retries`]); the vault's purge finds its
//! entries through the index on `last_seen` and deletes them a chunk at a
//! time, so a run costs what it purges and no step holds a lock long.

use chrono::NaiveDate;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::{info, warn};

use crate::database::server::server_version;
use crate::error::DbError;
use crate::table::partitions::{Partition, partitions};
use crate::table::retry::{failed, with_lock_retries};

/// The deployment's retention as the tables' owner records it
/// (`user_logins_retention`, migrations/0016): the floor the maintain
/// role's functions hold every cutoff to (`login_etl_check_cutoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Every login (no cutoff is taken).
    Everything,
    /// This many days, today included.
    Days(u32),
}

impl std::str::FromStr for Kept {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(Kept::Everything),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&d| d > 0)
                .map(Kept::Days)
                .ok_or_else(|| "expected a whole number of days, 1 or more, or `all`".into()),
        }
    }
}

impl Kept {
    /// `RETENTION_DAYS` as maintain and doctor read it: unset keeps everything.
    pub fn configured(days: Option<u32>) -> Self {
        days.map_or(Kept::Everything, Kept::Days)
    }

    /// The days kept, `None` for every login.
    pub fn days(self) -> Option<u32> {
        match self {
            Kept::Everything => None,
            Kept::Days(d) => Some(d),
        }
    }

    /// Which of two retentions keeps more (the one a run applies).
    pub fn longer(self, other: Kept) -> Kept {
        match (self, other) {
            (Kept::Days(a), Kept::Days(b)) => Kept::Days(a.max(b)),
            _ => Kept::Everything,
        }
    }
}

impl std::fmt::Display for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kept::Everything => f.write_str("every login"),
            Kept::Days(d) => write!(f, "{d} days"),
        }
    }
}

/// `RETENTION_DAYS` and the retention the tables' owner recorded,
/// disagreeing: what a run applies and how to make them one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// What is wrong, and which one won.
    pub problem: String,
    /// The command that makes them one.
    pub fix: String,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}. To make them one: {}", self.problem, self.fix)
    }
}

/// What a run applies when `RETENTION_DAYS` (`configured`) and the
/// owner's record disagree: the longer, so nothing either keeps is
/// deleted and the owner's floor (`login_etl_check_cutoff`) never refuses
/// the cutoff; with what to tell the operator (`None` when they agree).
pub fn reconcile(configured: Kept, recorded: Kept) -> (Kept, Option<Disagreement>) {
    let applied = configured.longer(recorded);
    if configured == recorded {
        return (applied, None);
    }
    let as_setting = |k: Kept| k.days().map_or("all".to_owned(), |d| d.to_string());
    let setting = match configured {
        Kept::Everything => "RETENTION_DAYS is unset (every login)".to_owned(),
        Kept::Days(d) => format!("RETENTION_DAYS={d}"),
    };
    let disagreement = Disagreement {
        problem: format!(
            "{setting} disagrees with the retention the tables' owner recorded ({recorded}): the longer, {applied}, is applied, so nothing either keeps is deleted"
        ),
        fix: format!(
            "as the migrate role, record the deployment's (the stack's RetentionDays): RETENTION_DAYS={} login-etl migrate; or {}",
            as_setting(configured),
            match recorded {
                Kept::Everything => "unset RETENTION_DAYS (the stack's RetentionDays=0)".to_owned(),
                Kept::Days(d) => format!("set RETENTION_DAYS (the stack's RetentionDays) to {d}"),
            }
        ),
    };
    (applied, Some(disagreement))
}

/// The retention the tables' owner recorded, as the maintain role may
/// read it (`login_etl_kept_days`); `None` on a database migrated before
/// that function (the next `migrate` makes it).
pub(crate) async fn recorded(client: &Client) -> Result<Option<Kept>, DbError> {
    match client
        .query_typed_one("SELECT login_etl_kept_days()", &[])
        .await
    {
        Ok(row) => Ok(Some(
            row.get::<_, Option<i32>>(0).map_or(Kept::Everything, |d| {
                Kept::Days(u32::try_from(d).unwrap_or(1).max(1))
            }),
        )),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {
            Ok(None)
        }
        Err(e) => Err(failed("reading the deployment's recorded retention")(e)),
    }
}

/// Records the deployment's retention (as the tables' owner: nobody else
/// may write it); unchanged where it says so already.
pub(crate) async fn record(client: &Client, kept: Kept) -> Result<bool, DbError> {
    let days: Option<i32> = match kept {
        Kept::Everything => None,
        Kept::Days(d) => Some(i32::try_from(d).unwrap_or(i32::MAX)),
    };
    let changed = client
        .execute(
            "UPDATE user_logins_retention SET keep_days = $1, recorded_at = now(), recorded_by = session_user \
             WHERE keep_days IS DISTINCT FROM $1",
            &[&days],
        )
        .await
        .map_err(failed("recording the deployment's retention"))?;
    if changed > 0 {
        info!(keep_days = ?days, "the deployment's retention recorded: maintain deletes nothing inside it");
    }
    Ok(changed > 0)
}

/// Entries deleted per purge transaction.
const VAULT_CHUNK: i32 = 10_000;

/// Pages of the vault read per purge transaction (about 60,000 entries)
/// where its index on `last_seen` is not built yet.
const VAULT_PAGES: i32 = 1_000;

/// What retention removed from the table in one run.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    /// Rows deleted from the DEFAULT partition.
    pub(crate) purged_from_default: i64,
    /// Partitions detached, with their estimated rows.
    pub(crate) dropped: Vec<(String, i64)>,
}

/// Retention: the DEFAULT partition's rows before `cutoff` deleted, and
/// the partitions wholly before it detached (dropped by [`drop_detached`]).
pub(crate) async fn apply(client: &Client, cutoff: NaiveDate) -> Result<Expired, DbError> {
    let purged_from_default =
        with_lock_retries(client, "purging the DEFAULT partition", || async {
            let row = client
                .query_typed_one(
                    "SELECT login_etl_purge_default($1)",
                    &[(&cutoff, Type::DATE)],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        })
        .await?;
    let mut report = Expired {
        purged_from_default,
        dropped: Vec::new(),
    };
    for name in expired(client, cutoff).await? {
        let detached =
            with_lock_retries(client, "detaching a partition past retention", || async {
                let row = client
                    .query_typed_one(
                        "SELECT login_etl_drop_partition($1, $2)",
                        &[(&name, Type::TEXT), (&cutoff, Type::DATE)],
                    )
                    .await?;
                Ok(row.get::<_, Option<i64>>(0))
            })
            .await?;
        if let Some(rows) = detached {
            info!(partition = %name, rows_estimate = rows, %cutoff, "partition past retention detached");
            report.dropped.push((name, rows));
        }
    }
    Ok(report)
}

/// The DROP in a transaction of its own: the detach's lock is long gone
/// when the files go. Also drops what a run that stopped between left.
pub(crate) async fn drop_detached(client: &Client) -> Result<(), DbError> {
    let dropped = with_lock_retries(client, "dropping detached partitions", || async {
        let rows = client
            .query_typed("SELECT login_etl_drop_detached()", &[])
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>())
    })
    .await?;
    for name in dropped {
        // Counted where it was detached (this run, or one that stopped).
        info!(partition = %name, "detached partition dropped");
    }
    Ok(())
}

/// Partitions whose every day is before `cutoff`.
async fn expired(client: &Client, cutoff: NaiveDate) -> Result<Vec<String>, DbError> {
    Ok(client
        .query_typed(
            "SELECT name FROM login_etl_partitions() WHERE NOT is_default AND hi <= $1",
            &[(&cutoff, Type::DATE)],
        )
        .await
        .map_err(failed("listing the partitions"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The vault's entries no kept row can use, deleted a chunk of pages at a
/// time (`login_etl_purge_vault`); returns how many. An entry's
/// `last_seen` is the latest day of the rows written with it, so these are
/// the originals of values whose every row is gone: past retention, or
/// erased with its user.
///
/// The day below which they go is the first day a kept partition holds,
/// not `cutoff`: a partition of a week or a month is dropped only when its
/// last day is past retention, and keeps its older rows until then. A
/// partition from before partitions (`user_logins_legacy`, no lower bound)
/// keeps every entry until it is dropped.
pub(crate) async fn purge_vault(client: &Client, cutoff: NaiveDate) -> Result<i64, DbError> {
    let kept: Vec<Partition> = partitions(client)
        .await
        .map_err(failed("listing the partitions"))?
        .into_iter()
        .filter(|p| !p.is_default)
        .collect();
    if kept.iter().any(|p| p.lo.is_none()) {
        return Ok(0);
    }
    let below = kept
        .iter()
        .filter_map(|p| p.lo)
        .min()
        .map_or(cutoff, |first| first.min(cutoff));
    let indexed: bool = client
        .query_typed_one(
            "SELECT coalesce((SELECT indisvalid AND indisready FROM pg_index \
             WHERE indexrelid = to_regclass('user_logins_pii_vault_last_seen')), false)",
            &[],
        )
        .await
        .map_err(failed("looking for the vault's index by last_seen"))?
        .get(0);
    let purged = if indexed {
        purge_by_index(client, below).await?
    } else {
        warn!(
            "the vault's index by last_seen (user_logins_pii_vault_last_seen) is missing: the purge reads the whole vault; run login-etl migrate, which builds it online"
        );
        purge_by_pages(client, below).await?
    };
    if purged > 0 {
        info!(entries = purged, last_seen_before = %below, "vault entries past retention deleted");
    }
    Ok(purged)
}

/// The entries before `below`, a chunk at a time through the index
/// (`login_etl_purge_vault(date, integer)`), until a chunk comes back short.
async fn purge_by_index(client: &Client, below: NaiveDate) -> Result<i64, DbError> {
    let mut purged = 0i64;
    loop {
        let deleted = with_lock_retries(client, "purging the vault past retention", || async {
            let row = client
                .query_typed_one(
                    "SELECT login_etl_purge_vault($1, $2)",
                    &[(&below, Type::DATE), (&VAULT_CHUNK, Type::INT4)],
                )
                .await?;
            Ok(row.get::<_, i64>(0))
        })
        .await?;
        purged += deleted;
        if deleted < i64::from(VAULT_CHUNK) {
            return Ok(purged);
        }
    }
}

/// The entries before `below`, by a walk of every page of the vault
/// (`login_etl_purge_vault(date, bigint, integer)`).
async fn purge_by_pages(client: &Client, below: NaiveDate) -> Result<i64, DbError> {
    // Without a TID range scan (PostgreSQL 13), each chunk would read the
    // whole vault: one chunk of every page instead.
    let (version, _) = server_version(client)
        .await
        .map_err(failed("reading the server version"))?;
    let pages = if version >= 140_000 {
        VAULT_PAGES
    } else {
        i32::MAX
    };
    let (mut purged, mut page) = (0i64, 0i64);
    loop {
        let (deleted, next) =
            with_lock_retries(client, "purging the vault past retention", || async {
                let row = client
                    .query_typed_one(
                        "SELECT purged, next_page FROM login_etl_purge_vault($1, $2, $3)",
                        &[
                            (&below, Type::DATE),
                            (&page, Type::INT8),
                            (&pages, Type::INT4),
                        ],
                    )
                    .await?;
                Ok((row.get::<_, i64>(0), row.get::<_, Option<i64>>(1)))
            })
            .await?;
        purged += deleted;
        match next {
            Some(next) => page = next,
            None => return Ok(purged),
        }
    }
}
