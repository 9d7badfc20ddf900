//! `login-etl rotate-key`: moves everything stored to the newest version of
//! the masking key, online, resumably (docs/runbooks/leaked-key.md, "The masking key
//! leaked").
//!
//! 1. **The switch** (`login_etl_switch_key`, one moment's lock, holding
//!    nothing that grows with the data): the database's key version moves
//!    from n-1 to n. From then on every write is checked against version
//!    n (`login_etl_check_write`): a function still on n-1 is refused,
//!    reads its keys again, re-keys its batch in memory and writes it under
//!    n. No row is stored under n-1 after the switch.
//! 2. **The erasure list**, in chunks of user keys: each entry moves from
//!    its n-1 user key to its n one. Meanwhile a writer checks a user at
//!    both versions (the list tells it a re-key is under way), so an erased
//!    user stays erased throughout.
//! 3. **The rows**, partition by partition, in chunks of pages, each chunk
//!    its own short transaction: the rows still at n-1 are read and updated
//!    to `HMAC(kₙ, token)` with `key_version = n` in one statement guarded
//!    by `key_version = n-1`. A row is therefore re-keyed exactly once,
//!    however often the command is killed and run again.
//! 4. **The vault's tokens**, in chunks of pages, the same way (an entry a
//!    function stored under n meanwhile replaces its n-1 twin).
//! 5. **The audit trail's** tokens and user keys, in chunks of records: each
//!    record names its version, and moves to n.
//! 6. **The end** (`login_etl_end_rekey`): checks that nothing is left
//!    under n-1 (vault, erasure list, audit), clears the re-key and audits
//!    it with the counts of every run that took part.
//!
//! Partitions that `maintain` makes while this runs (its rows moved out of
//! the DEFAULT partition) are found by listing the partitions again until a
//! listing brings nothing new.
//!
//! Steps 3 and 4 run in one stream on the command's connection, or, with
//! `--jobs N` ([`rotate_side_by_side`], `jobs.rs`), spread over N
//! connections of their own, the same chunks side by side.

//!
//! One file per step: [`switch`] (1), [`lists`] (2 and 5), [`rows`] (3),
//! [`vault`] (4), [`jobs`] (3 and 4 side by side); [`status`], the exposure
//! window (`--status`); this file, the run that strings them together and
//! what it reports.

mod jobs;
mod lists;
mod rows;
mod status;
mod switch;
mod vault;

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::info;

use crate::database::sqlstate::{Class, Conflict};
use crate::database::statement::{Failed, Statement};
use crate::privacy::masking::Masker;
use jobs::Jobs;
pub use status::exposure;

/// How long the switch waits for its locks before it lets the writes
/// queued behind it through and tries again: the longest a write waits.
pub const SWITCH_LOCK_TIMEOUT_MS: u32 = 100;

/// How long the switch keeps trying.
pub const SWITCH_PATIENCE: Duration = Duration::from_secs(300);

/// Pages of a partition re-keyed in one transaction by default (about
/// 60,000 rows of 130 bytes: a transaction of about a second).
pub const DEFAULT_CHUNK_PAGES: u32 = 1_000;

/// Why `rotate-key` stopped. Never names a key, a token or a value.
#[derive(Debug, thiserror::Error)]
pub enum RekeyError {
    /// The database failed.
    #[error("PostgreSQL failed while {op}: {cause}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// SQLSTATE and message (no values).
        cause: String,
        /// Whether trying again resolves it (see `is_conflict`).
        conflict: bool,
    },
    /// The keys given do not reach the database's version.
    #[error(
        "the database is at masking-key version {database} but the keys given hold versions up to {held}: run rotate-key with the newest masking and erasure secrets"
    )]
    KeysBehind {
        /// The database's version.
        database: u16,
        /// The newest version held.
        held: u16,
    },
    /// An erasure stopped half way holds tokens of the current version.
    #[error(
        "{message} after {seconds} s of waiting for them: a forget that stopped half way (killed, or its exit 75 not followed by a rerun) holds them; nothing was changed. Run login-etl forget again for those users (login-etl audit lists their forget_begun records without a forget), then run rotate-key again"
    )]
    UnfinishedErasures {
        /// How many, as the database counted them (no user ids).
        message: String,
        /// How long the switch waited for them.
        seconds: u64,
    },
    /// Vault entries of the form bound to their token would stop decrypting.
    #[error(
        "{0} vault entries are of the form from before key versions (their ciphertext is bound to the token a re-key changes); nothing was changed. Run `login-etl vault-upgrade` as the reveal role with PiiRevealRole's credentials first, then rotate-key again"
    )]
    VaultNotUpgraded(i64),
    /// The keys given are not the ones the stored tokens or the erasure list
    /// are under.
    #[error(
        "{0}; nothing was changed. rotate-key needs the masking and erasure secrets with every version, the new one appended (docs/runbooks/leaked-key.md, \"The masking key leaked\")"
    )]
    KeyMismatch(String),
    /// The vault's index of old-form entries is missing (a vault with
    /// entries upgraded without `login-etl migrate` since).
    #[error(
        "the vault's index of entries of the old form (user_logins_pii_vault_form1) is missing, so the switch would have to scan the whole vault under the lock every write waits for; nothing was changed. Run `login-etl migrate` (it builds the index online), then rotate-key again"
    )]
    VaultIndexMissing,
    /// `maintain` is still moving a swapped-out DEFAULT partition's rows
    /// back (after days of failed maintenance).
    #[error(
        "for {seconds} s login-etl maintain was moving the rows of a swapped-out DEFAULT partition back into user_logins (out of a re-key's sight until then), so the key version was not switched; run login-etl maintain to finish it (or wait for its schedule), then rotate-key again"
    )]
    DrainUnderWay {
        /// How long it waited.
        seconds: u64,
    },
    /// The server predates TID range scans.
    #[error(
        "rotate-key needs PostgreSQL 14 or later (it re-keys in chunks of pages, which 13 cannot read without scanning the whole partition each time); this server is {0}. Upgrade the server, then run rotate-key"
    )]
    ServerTooOld(i32),
    /// The table is not partitioned yet (`migrate --prepare` done, not the cutover).
    #[error(
        "user_logins is not partitioned yet (migrate --prepare was run, not the cutover); nothing was changed. Run `login-etl migrate` first (docs/deploy.md, \"Upgrading an existing table\")"
    )]
    NotPartitioned,
    /// The tables' owner has not armed this rotation (`Own::RotationNotArmed`).
    #[error("{0}")]
    NotArmed(String),
    /// `--arm`: the keys given do not reach the next version.
    #[error(
        "the database is at key version {database} and the masking secret's newest version is {held}: append the new version to both key secrets first (docs/runbooks/leaked-key.md, step 2), then arm"
    )]
    NothingToArm {
        /// The database's version.
        database: u16,
        /// The newest version the secrets hold.
        held: u16,
    },
    /// The switch could not get its moment's lock.
    #[error(
        "for {seconds} s some transaction on user_logins always held its lock longer than {SWITCH_LOCK_TIMEOUT_MS} ms, so the key version was not switched; look for long-running transactions (pg_stat_activity) and run rotate-key again"
    )]
    SwitchLocked {
        /// How long it tried.
        seconds: u64,
    },
}

/// Maps a PostgreSQL error to [`RekeyError::Db`], naming what was being done.
pub(crate) fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RekeyError {
    move |e| RekeyError::Db {
        op,
        conflict: is_conflict(&e),
        cause: crate::error::describe(&e),
    }
}

impl From<Failed> for RekeyError {
    fn from(f: Failed) -> Self {
        db(f.doing)(f.error)
    }
}

/// How often a chunk that met another transaction is tried again.
pub(crate) const CHUNK_CONFLICT_RETRIES: u32 = 5;

/// The planner's estimate (`reltuples`) of every row of `user_logins`, over
/// its partitions: the walk's progress and `--status` both read it.
const ROWS_ESTIMATE: &str = "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('user_logins_rows')";

/// A failure that trying the chunk again resolves (a chunk's retry
/// policy): a deadlock or a serialization failure.
fn is_conflict(e: &tokio_postgres::Error) -> bool {
    Class::conflict_among(e, &[Conflict::Deadlock, Conflict::Serialization])
}

impl RekeyError {
    fn is_conflict(&self) -> bool {
        matches!(self, RekeyError::Db { conflict: true, .. })
    }
}

/// Where the key stands in the database (`rotate-key --status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationState {
    /// The version every write must be masked at.
    pub version: u16,
    /// The version being re-keyed from, while a re-key is under way.
    pub rekey_from: Option<u16>,
    /// Rows re-keyed so far by this re-key (by every run).
    pub rows_rekeyed: i64,
    /// Vault entries re-keyed so far.
    pub vault_rekeyed: i64,
    /// The erasure list predates erasure keys (user keys derived from the
    /// masking key).
    pub erasure_derived: bool,
}

/// Reads [`RotationState`].
pub async fn state(client: &Client) -> Result<RotationState, RekeyError> {
    const STATE: Statement = Statement::new(
        "SELECT version, rekey_from, rekey_rows, rekey_vault, erasure_derived FROM user_logins_key_state",
        &[],
        "reading the key version (run login-etl migrate first)",
    );
    let row = STATE.row(client, &[]).await?;
    Ok(RotationState {
        version: row.get::<_, i16>(0) as u16,
        rekey_from: row.get::<_, Option<i16>>(1).map(|v| v as u16),
        rows_rekeyed: row.get(2),
        vault_rekeyed: row.get(3),
        erasure_derived: row.get(4),
    })
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// The version everything was at when the run began.
    pub from: u16,
    /// The version everything is at now.
    pub to: u16,
    /// Rows this run re-keyed.
    pub rows: u64,
    /// Vault entries this run re-keyed (or merged into their twin).
    pub vault_entries: u64,
    /// Erasure-list entries this run re-keyed.
    pub erasures: u64,
    /// Audit records whose token or user key this run re-keyed.
    pub audit_records: u64,
    /// The longest switch (its transaction, retries included).
    pub switch: Duration,
    /// Time spent on the rows.
    pub rows_time: Duration,
    /// Time spent on the vault.
    pub vault_time: Duration,
}

/// Progress of the rows, for the operator.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Rows re-keyed by this run.
    pub done: u64,
    /// The planner's estimate of all rows (`reltuples`), to do or done.
    pub estimate: u64,
    /// Rows per second so far.
    pub rate: f64,
    /// Seconds left at that rate.
    pub eta_seconds: f64,
}

/// Options of a run.
#[derive(Debug, Clone, Copy)]
pub struct RekeyOptions {
    /// Pages per transaction.
    pub chunk_pages: u32,
    /// Stop after this many chunks (tests: a run killed half way).
    pub max_chunks: Option<u64>,
    /// The least time between two progress reports (zero: after every
    /// chunk, which tests use to act between two chunks).
    pub progress_every: Duration,
    /// How long the switch waits for what keeps it from starting (writes
    /// holding their lock, a `forget` in flight, a DEFAULT-partition
    /// drain) before it gives up: [`SWITCH_PATIENCE`].
    pub switch_patience: Duration,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        Self {
            chunk_pages: DEFAULT_CHUNK_PAGES,
            max_chunks: None,
            progress_every: Duration::from_secs(2),
            switch_patience: SWITCH_PATIENCE,
        }
    }
}

/// Arms the rotations to every version `masker` holds past the
/// database's, as the tables' owner (the migrate role): records the check
/// values of each one's keys (`user_logins_rotation_arming`). The rotate
/// role's switch to a version is refused without its arming
/// (`login_etl_armed`). Returns the versions armed;
/// [`RekeyError::NothingToArm`] when the keys reach no further than the
/// database's version.
pub async fn arm(client: &Client, masker: &Masker) -> Result<Vec<u16>, RekeyError> {
    const VERSION: Statement = Statement::new(
        "SELECT version FROM login_etl_key_state()",
        &[],
        "reading the key's version",
    );
    let database: i16 = VERSION.value(client, &[]).await?;
    let mut armed = Vec::new();
    for to in (database as u16 + 1)..=masker.latest() {
        let next = masker.at(to).expect("a version the masker holds");
        let (mc, ec) = (next.check(), next.users().check());
        client
            .execute_typed(
                "INSERT INTO user_logins_rotation_arming (to_version, masking_check, erasure_check) \
                 VALUES ($1, $2, $3) ON CONFLICT (to_version) DO UPDATE \
                 SET masking_check = EXCLUDED.masking_check, erasure_check = EXCLUDED.erasure_check, \
                     armed_by = session_user, armed_at = now()",
                &[
                    (&(to as i16), Type::INT2),
                    (&mc.as_str(), Type::VARCHAR),
                    (&ec.as_str(), Type::VARCHAR),
                ],
            )
            .await
            .map_err(db(
                "arming the rotation (only the tables' owner may: run it as the migrate role)",
            ))?;
        armed.push(to);
    }
    if armed.is_empty() {
        return Err(RekeyError::NothingToArm {
            database: database as u16,
            held: masker.latest(),
        });
    }
    Ok(armed)
}

/// Re-keys everything to `masker`'s newest version: finishes a re-key under
/// way, then switches and re-keys one version at a time. `caller` names
/// who runs it in the audit trail; `progress` hears about the rows. A test
/// hook: `login-etl rotate-key` runs [`rotate_side_by_side`].
#[cfg(any(test, feature = "test-support"))]
pub async fn rotate(
    client: &mut Client,
    masker: &Masker,
    caller: &str,
    options: RekeyOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<RekeyReport, RekeyError> {
    rotate_side_by_side(client, Vec::new(), masker, caller, options, progress).await
}

/// `rotate`, with the chunks of the rows and of the vault re-keyed side
/// by side on `jobs`, connections of their own (`rotate-key --jobs N`; none:
/// one stream on `client`). `client` does the rest: the switch, the lists,
/// the erasure list, the audit trail, the end.
pub async fn rotate_side_by_side(
    client: &mut Client,
    jobs: Vec<Client>,
    masker: &Masker,
    caller: &str,
    options: RekeyOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<RekeyReport, RekeyError> {
    let mut run = Run {
        jobs: Jobs::new(jobs),
        caller,
        options,
        chunks_left: options.max_chunks,
        began: Instant::now(),
    };
    let first = state(client).await?;
    if first.version > masker.latest() {
        return Err(RekeyError::KeysBehind {
            database: first.version,
            held: masker.latest(),
        });
    }
    // The erasure list's user keys as the function computes them.
    let derived;
    let masker = if first.erasure_derived && !masker.users().is_derived() {
        derived = masker.with_derived_users();
        &derived
    } else {
        masker
    };
    // The keys given must be the ones everything is stored under now: a
    // replaced secret would re-key into tokens that match nothing.
    switch::check_keys(client, masker, first.version).await?;
    let mut report = RekeyReport {
        from: first.rekey_from.unwrap_or(first.version),
        to: first.version,
        ..RekeyReport::default()
    };
    loop {
        let now = state(client).await?;
        let to = match now.rekey_from {
            Some(_) => now.version,
            None if now.version < masker.latest() => {
                let to = now.version + 1;
                switch::ready_to_switch(client).await?;
                let t = Instant::now();
                switch::switch(client, masker, to, caller, options.switch_patience).await?;
                report.switch = report.switch.max(t.elapsed());
                info!(
                    from = to - 1,
                    to, "switched: every write from now on is masked at the new version"
                );
                to
            }
            None => return Ok(report),
        };
        report.to = to;
        if !run.rekey(client, masker, to, &mut report, progress).await? {
            return Ok(report);
        }
    }
}

/// One run of `rotate-key`: its jobs, its options and how far it may go.
struct Run<'c> {
    jobs: Jobs,
    caller: &'c str,
    options: RekeyOptions,
    chunks_left: Option<u64>,
    began: Instant,
}

impl Run<'_> {
    /// Steps 2 to 6 for version `to`, counted in `report`; false when the
    /// run stopped at `max_chunks` before the end.
    async fn rekey(
        &mut self,
        client: &mut Client,
        masker: &Masker,
        to: u16,
        report: &mut RekeyReport,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<bool, RekeyError> {
        report.erasures += lists::rekey_erasure_list(client, masker, to).await?;
        let t = Instant::now();
        let (jobs, options) = (&mut self.jobs, self.options);
        let left = &mut self.chunks_left;
        report.rows += rows::rekey_rows(client, jobs, masker, to, options, left, progress).await?;
        report.rows_time += t.elapsed();
        if self.chunks_left == Some(0) {
            return Ok(false);
        }
        let t = Instant::now();
        let pages = self.options.chunk_pages;
        report.vault_entries +=
            vault::rekey_vault(client, &mut self.jobs, masker, to, pages).await?;
        report.vault_time += t.elapsed();
        report.audit_records += lists::rekey_audit(client, masker, to).await?;
        const END: Statement = Statement::new(
            "SELECT login_etl_end_rekey($1, $2)",
            &[Type::TEXT, Type::FLOAT8],
            "ending the re-key",
        );
        let seconds = self.began.elapsed().as_secs_f64();
        END.rows(client, &[&self.caller, &seconds]).await?;
        info!(
            version = to,
            "re-key finished: nothing is stored under an older key"
        );
        Ok(true)
    }
}

/// Re-keys one chunk to version `to`: a partition's pages, or the vault's.
async fn rekey_one(
    client: &mut tokio_postgres::Client,
    masker: &Masker,
    to: u16,
    chunk: &jobs::Chunk,
) -> Result<u64, RekeyError> {
    match &chunk.rows_of {
        Some((segment, rel)) => {
            let of = (segment, rel.as_str());
            rows::rekey_chunk(client, masker, to, of, chunk.from, chunk.to).await
        }
        None => vault::rekey_vault_chunk(client, masker, to, chunk.from, chunk.to).await,
    }
}
