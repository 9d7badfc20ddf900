//! `login-etl rotate-key`: moves everything stored to the newest version of
//! the masking key, online, resumably (docs/operations.md, "The masking key
//! leaked").
//!
//! 1. **The switch** (`login_etl_switch_key`, one moment's lock, holding
//!    nothing that grows with the data): the database's key version moves
//!    from n-1 to n. From then on every write is checked against version
//!    n (`login_etl_refuse_erased`): a function still on n-1 is refused,
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

mod jobs;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tracing::info;

use crate::privacy::masking::Masker;
use crate::table::maintain::{Partition, Segment};
use jobs::{Chunk, Jobs};

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
        "{0}; nothing was changed. rotate-key needs the masking and erasure secrets with every version, the new one appended (docs/operations.md, \"The masking key leaked\")"
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
        "user_logins is not partitioned yet (migrate --prepare was run, not the cutover); nothing was changed. Run `login-etl migrate` first (docs/operations.md, \"Upgrading an existing table\")"
    )]
    NotPartitioned,
    /// The switch could not get its moment's lock.
    #[error(
        "for {seconds} s some transaction on user_logins always held its lock longer than {SWITCH_LOCK_TIMEOUT_MS} ms, so the key version was not switched; look for long-running transactions (pg_stat_activity) and run rotate-key again"
    )]
    SwitchLocked {
        /// How long it tried.
        seconds: u64,
    },
}

fn db(op: &'static str) -> impl Fn(tokio_postgres::Error) -> RekeyError {
    move |e| RekeyError::Db {
        op,
        conflict: is_conflict(&e),
        cause: crate::error::describe(&e),
    }
}

/// How often a chunk that met another transaction is tried again.
const CONFLICT_RETRIES: u32 = 5;

/// A failure that trying the chunk again resolves: a deadlock or a
/// serialization failure.
fn is_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

impl RekeyError {
    fn is_conflict(&self) -> bool {
        matches!(self, RekeyError::Db { conflict: true, .. })
    }
}

/// Where the key stands in the database (`rotate-key --status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
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

/// Reads [`KeyState`].
pub async fn state(client: &Client) -> Result<KeyState, RekeyError> {
    let row = client
        .query_typed_one(
            "SELECT version, rekey_from, rekey_rows, rekey_vault, erasure_derived FROM user_logins_key_state",
            &[],
        )
        .await
        .map_err(db("reading the key version (run login-etl migrate first)"))?;
    Ok(KeyState {
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

/// Re-keys everything to `masker`'s newest version: finishes a re-key under
/// way, then switches and re-keys one version at a time. `caller` names
/// who runs it in the audit trail; `progress` hears about the rows.
pub async fn rotate(
    client: &mut Client,
    masker: &Masker,
    caller: &str,
    options: RekeyOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<RekeyReport, RekeyError> {
    rotate_side_by_side(client, Vec::new(), masker, caller, options, progress).await
}

/// [`rotate`], with the chunks of the rows and of the vault re-keyed side
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
    let mut jobs = Jobs::new(jobs);
    let began = Instant::now();
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
    check_keys(client, masker, first.version).await?;
    let mut report = RekeyReport {
        from: first.rekey_from.unwrap_or(first.version),
        to: first.version,
        ..RekeyReport::default()
    };
    let mut chunks_left = options.max_chunks;
    loop {
        let now = state(client).await?;
        let to = match now.rekey_from {
            Some(_) => now.version,
            None if now.version < masker.latest() => {
                let to = now.version + 1;
                ready_to_switch(client).await?;
                let t = Instant::now();
                switch(client, masker, to, caller, options.switch_patience).await?;
                report.switch = report.switch.max(t.elapsed());
                info!(
                    from = to - 1,
                    to, "switched: every write from now on is masked at the new version"
                );
                to
            }
            None => break,
        };
        report.to = to;
        report.erasures += rekey_erasure_list(client, masker, to).await?;
        let t = Instant::now();
        let rows = rekey_rows(
            client,
            &mut jobs,
            masker,
            to,
            options,
            &mut chunks_left,
            progress,
        )
        .await?;
        report.rows += rows;
        report.rows_time += t.elapsed();
        if chunks_left == Some(0) {
            return Ok(report);
        }
        let t = Instant::now();
        report.vault_entries +=
            rekey_vault(client, &mut jobs, masker, to, options.chunk_pages).await?;
        report.vault_time += t.elapsed();
        report.audit_records += rekey_audit(client, masker, to).await?;
        client
            .query_typed(
                "SELECT login_etl_end_rekey($1, $2)",
                &[
                    (&caller, Type::TEXT),
                    (&began.elapsed().as_secs_f64(), Type::FLOAT8),
                ],
            )
            .await
            .map_err(db("ending the re-key"))?;
        info!(
            version = to,
            "re-key finished: nothing is stored under an older key"
        );
    }
    Ok(report)
}

/// Compares the keys of `version` with the check values the database
/// records (records them where it has none).
async fn check_keys(client: &Client, masker: &Masker, version: u16) -> Result<(), RekeyError> {
    let m = masker.at(version).expect("a version the masker holds");
    let (v, mc, ec) = (version as i16, m.check(), m.users().check());
    match client
        .query_typed(
            "SELECT login_etl_check_keys($1, $2, $3)",
            &[
                (&v, Type::INT2),
                (&mc.as_str(), Type::TEXT),
                (&ec.as_str(), Type::TEXT),
            ],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| c.code() == "LE004") => Err(RekeyError::KeyMismatch(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        )),
        Err(e) => Err(db("checking the keys against the database")(e)),
    }
}

/// Refuses a switch that would leave something behind: a server without
/// TID range scans, or an unpartitioned table (its rows are not walked).
async fn ready_to_switch(client: &Client) -> Result<(), RekeyError> {
    // Chunks are TID range scans (PostgreSQL 14): on 13 each would read the
    // whole partition.
    let version: i32 = client
        .query_typed_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(db("reading the server's version"))?
        .get(0);
    if version < 140_000 {
        return Err(RekeyError::ServerTooOld(version));
    }
    let partitioned = !crate::table::maintain::partitions(client)
        .await
        .map_err(db("listing the partitions"))?
        .is_empty();
    if !partitioned {
        return Err(RekeyError::NotPartitioned);
    }
    // Vault entries of the old form: the switch checks them under its locks
    // (SQLSTATE LE005), where none can arrive in between.
    Ok(())
}

/// The switch to version `to` (see the module docs), tried again while
/// writers hold their lock longer than [`SWITCH_LOCK_TIMEOUT_MS`].
async fn switch(
    client: &Client,
    masker: &Masker,
    to: u16,
    caller: &str,
    patience: Duration,
) -> Result<(), RekeyError> {
    let next = masker
        .at(to)
        .expect("rotate only switches to a version the masker holds");
    let (masking_check, erasure_check) = (next.check(), next.users().check());
    let since = Instant::now();
    let mut waited_for_forget = false;
    loop {
        let done = client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = {SWITCH_LOCK_TIMEOUT_MS}"
            ))
            .await;
        let switched = match done {
            Ok(()) => client
                .query_typed(
                    "SELECT login_etl_switch_key($1, $2, $3, $4)",
                    &[
                        (&(to as i16), Type::INT2),
                        (&caller, Type::TEXT),
                        (&masking_check.as_str(), Type::TEXT),
                        (&erasure_check.as_str(), Type::TEXT),
                    ],
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        let switched = match switched {
            Ok(()) => client.batch_execute("COMMIT").await,
            Err(e) => Err(e),
        };
        let Err(e) = switched else {
            return Ok(());
        };
        let _ = client.batch_execute("ROLLBACK").await;
        match e.code() {
            Some(c) if c.code() == "LE005" => {
                let legacy: i64 = client
                    .query_typed_one(
                        "SELECT count(*) FROM user_logins_pii_vault WHERE aad_version = 1",
                        &[],
                    )
                    .await
                    .map_err(db("counting vault entries of the old form"))?
                    .get(0);
                return Err(RekeyError::VaultNotUpgraded(legacy));
            }
            Some(c) if c.code() == "LE006" => return Err(RekeyError::VaultIndexMissing),
            // maintain drains a swapped-out DEFAULT partition: wait for it
            // (its rows would be out of the walk's sight).
            Some(c) if c.code() == "LE007" => {
                if since.elapsed() >= patience {
                    return Err(RekeyError::DrainUnderWay {
                        seconds: patience.as_secs(),
                    });
                }
                if since.elapsed().as_secs().is_multiple_of(30) {
                    info!(
                        "waiting for login-etl maintain to move a swapped-out DEFAULT partition's rows back"
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            // A forget between its deletes and its end holds tokens of the
            // current version: one in flight ends in seconds (erasure
            // requests go on during an incident), one that stopped never.
            Some(c) if c.code() == "LE003" => {
                let message = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                if since.elapsed() >= patience {
                    return Err(RekeyError::UnfinishedErasures {
                        message,
                        seconds: patience.as_secs(),
                    });
                }
                if !waited_for_forget {
                    waited_for_forget = true;
                    info!(
                        "{message}: waiting up to {} s for the forget runs in flight to finish (one that stopped must be run again)",
                        patience.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Some(c)
                if *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE => {}
            _ => return Err(db("switching the key version")(e)),
        }
        if since.elapsed() >= patience {
            return Err(RekeyError::SwitchLocked {
                seconds: patience.as_secs(),
            });
        }
        let jitter = u64::from(since.elapsed().subsec_nanos() % 100);
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
    }
}

/// Erasure-list entries (or audit records) re-keyed per transaction.
const LIST_CHUNK: i64 = 1_000;

/// Moves the erasure list's entries still at `to - 1` to `to`, a chunk of
/// user keys per transaction (the owner's `login_etl_rekey_erased_chunk`);
/// the entries it moved.
async fn rekey_erasure_list(client: &Client, masker: &Masker, to: u16) -> Result<u64, RekeyError> {
    let users = masker.users();
    let from = (to - 1) as i16;
    let mut done = 0u64;
    loop {
        let old: Vec<String> = client
            .query_typed(
                "SELECT user_key FROM user_logins_erased WHERE key_version = $1 LIMIT $2",
                &[(&from, Type::INT2), (&LIST_CHUNK, Type::INT8)],
            )
            .await
            .map_err(db("reading the erasure list"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if old.is_empty() {
            return Ok(done);
        }
        let new: Vec<String> = old
            .iter()
            .map(|k| users.rekey_text(k, to).as_str().to_owned())
            .collect();
        let moved: i64 = client
            .query_typed_one(
                "SELECT login_etl_rekey_erased_chunk($1, $2, $3)",
                &[
                    (&old, Type::TEXT_ARRAY),
                    (&new, Type::TEXT_ARRAY),
                    (&from, Type::INT2),
                ],
            )
            .await
            .map_err(db("re-keying a chunk of the erasure list"))?
            .get(0);
        done += moved as u64;
    }
}

/// Moves the audit trail's tokens and user keys to `to`: each record from
/// its own version, one step of the chain at a time (the owner's
/// `login_etl_audit_to_rekey` and `login_etl_rekey_audit_chunk`); the
/// records it moved.
async fn rekey_audit(client: &Client, masker: &Masker, to: u16) -> Result<u64, RekeyError> {
    let to_version = to as i16;
    let (mut after, mut done) = (0i64, 0u64);
    loop {
        let rows = client
            .query_typed(
                "SELECT id, token, user_key, key_version FROM login_etl_audit_to_rekey($1, $2, $3)",
                &[
                    (&to_version, Type::INT2),
                    (&after, Type::INT8),
                    (&(LIST_CHUNK as i32), Type::INT4),
                ],
            )
            .await
            .map_err(db("reading the audit records to re-key"))?;
        let Some(last) = rows.last() else {
            return Ok(done);
        };
        after = last.get(0);
        let mut ids = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        let mut user_keys = Vec::with_capacity(rows.len());
        for r in &rows {
            let from = r.get::<_, i16>(3).max(1) as u16;
            let step = |mut text: String, users: bool| {
                for v in from + 1..=to {
                    text = if users {
                        masker.users().rekey_text(&text, v)
                    } else {
                        masker.rekey_text(&text, v)
                    }
                    .as_str()
                    .to_owned();
                }
                text
            };
            ids.push(r.get::<_, i64>(0));
            tokens.push(r.get::<_, Option<String>>(1).map(|t| step(t, false)));
            user_keys.push(r.get::<_, Option<String>>(2).map(|k| step(k, true)));
        }
        let moved: i64 = client
            .query_typed_one(
                "SELECT login_etl_rekey_audit_chunk($1, $2, $3, $4)",
                &[
                    (&ids, Type::INT8_ARRAY),
                    (&tokens, Type::TEXT_ARRAY),
                    (&user_keys, Type::TEXT_ARRAY),
                    (&to_version, Type::INT2),
                ],
            )
            .await
            .map_err(db("re-keying a chunk of the audit trail"))?
            .get(0);
        done += moved as u64;
    }
}

/// A partition's segment (see [`Segment`]) and the relation holding it.
fn segments_of(partitions: &[Partition]) -> Vec<(Segment, String)> {
    let default = partitions
        .iter()
        .find(|p| p.is_default)
        .map(|p| p.name.clone());
    crate::table::maintain::segments(partitions)
        .into_iter()
        .filter_map(|s| {
            let rel = match s {
                Segment::Range(lo, hi) => partitions
                    .iter()
                    .find(|p| !p.is_default && p.lo == lo && p.hi == hi)
                    .map(|p| p.name.clone()),
                Segment::Gap(..) | Segment::Null => default.clone(),
            }?;
            Some((s, rel))
        })
        .collect()
}

/// Re-keys the rows still at `to - 1`, chunk by chunk; listing the
/// partitions again until a listing brings none it has not visited.
async fn rekey_rows(
    client: &mut Client,
    jobs: &mut Jobs,
    masker: &Masker,
    to: u16,
    options: RekeyOptions,
    chunks_left: &mut Option<u64>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<u64, RekeyError> {
    let began = Instant::now();
    let mut last_report = Instant::now();
    let mut visited: HashSet<(Segment, String)> = HashSet::new();
    let mut done = 0u64;
    loop {
        let partitions = crate::table::maintain::partitions(client)
            .await
            .map_err(db("listing the partitions"))?;
        let todo: Vec<(Segment, String)> = segments_of(&partitions)
            .into_iter()
            .filter(|s| !visited.contains(s))
            .collect();
        if todo.is_empty() {
            return Ok(done);
        }
        let estimate: i64 = client
            .query_typed_one(
                "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('user_logins')",
                &[],
            )
            .await
            .map_err(db("estimating the rows"))?
            .get(0);
        if jobs.side_by_side() {
            let mut chunks = VecDeque::new();
            for (segment, rel) in &todo {
                let Some(pages) = pages_of(client, rel).await? else {
                    continue;
                };
                let mut page = 0i64;
                while page < pages.max(1) {
                    let end = page + i64::from(options.chunk_pages);
                    let rows_of = Some((*segment, rel.clone()));
                    chunks.push_back(Chunk {
                        rows_of,
                        from: page,
                        to: end,
                    });
                    page = end;
                }
            }
            if let Some(n) = chunks_left.as_mut() {
                chunks.truncate(usize::try_from(*n).unwrap_or(usize::MAX));
                *n -= chunks.len() as u64;
            }
            let before = done;
            let mut tick = |moved: u64| progress(progress_at(before + moved, estimate, began));
            done += jobs
                .run(masker, to, chunks, options.progress_every, &mut tick)
                .await?;
            if *chunks_left == Some(0) {
                return Ok(done);
            }
            visited.extend(todo);
            continue;
        }
        for (segment, rel) in todo {
            let Some(pages) = pages_of(client, &rel).await? else {
                visited.insert((segment, rel));
                continue;
            };
            let mut page = 0i64;
            while page < pages.max(1) {
                if *chunks_left == Some(0) {
                    return Ok(done);
                }
                let end = page + i64::from(options.chunk_pages);
                let mut tries = 0;
                done += loop {
                    match rekey_chunk(client, masker, to, (&segment, &rel), page, end).await {
                        Err(e) if e.is_conflict() && tries < CONFLICT_RETRIES => tries += 1,
                        other => break other?,
                    }
                };
                page = end;
                if let Some(n) = chunks_left.as_mut() {
                    *n -= 1;
                }
                if last_report.elapsed() >= options.progress_every {
                    last_report = Instant::now();
                    progress(progress_at(done, estimate, began));
                }
            }
            visited.insert((segment, rel));
        }
    }
}

/// A partition's size in pages; `None` when retention dropped it since
/// the walk listed it.
async fn pages_of(client: &Client, rel: &str) -> Result<Option<i64>, RekeyError> {
    Ok(client
        .query_typed_one(
            "SELECT (pg_relation_size(to_regclass($1)) / current_setting('block_size')::int8)",
            &[(&rel, Type::TEXT)],
        )
        .await
        .map_err(db("reading a partition's size"))?
        .get(0))
}

/// Where the rows stand after `done` of about `estimate` since `began`.
fn progress_at(done: u64, estimate: i64, began: Instant) -> Progress {
    let rate = done as f64 / began.elapsed().as_secs_f64().max(1e-3);
    let left = (estimate as f64 - done as f64).max(0.0);
    Progress {
        done,
        estimate: estimate.max(0) as u64,
        rate,
        eta_seconds: if rate > 0.0 { left / rate } else { 0.0 },
    }
}

/// One chunk: pages `[from_page, to_page)` of `segment`'s partition `rel`,
/// in a transaction of its own; the rows it moved to version `to`. Only
/// `rel`'s rows: a page and line number (ctid) names a row within one
/// table, and the segment's range may also cover a partition `maintain`
/// made out of the DEFAULT one since the walk listed the partitions.
async fn rekey_chunk(
    client: &mut Client,
    masker: &Masker,
    to: u16,
    (segment, rel): (&Segment, &str),
    from_page: i64,
    to_page: i64,
) -> Result<u64, RekeyError> {
    let (cond, bounds) = segment.condition(5);
    let (lo, hi) = (format!("({from_page},0)"), format!("({to_page},0)"));
    let (old_version, new_version) = ((to - 1) as i16, to as i16);
    let tx = client.transaction().await.map_err(db("starting a chunk"))?;
    // The UPDATE below joins the chunk's rows with the list of their new
    // tokens. Trusting the statistics, the planner may take the rows still
    // at `to - 1` for almost none (they are not analyzed again after a
    // rotation: a rotation right after another) and re-scan the list for
    // each of them, quadratic in the chunk. Without nested loops it hashes
    // one side and reads the chunk's pages once, whatever they say.
    tx.batch_execute("SET LOCAL enable_nestloop = off")
        .await
        .map_err(db("starting a chunk"))?;
    if segment.in_default() {
        // maintain must not move these rows to a new partition under us.
        tx.query_typed(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[(&crate::table::schema::MIGRATION_LOCK_KEY, Type::INT8)],
        )
        .await
        .map_err(db("waiting for maintain's partition step"))?;
    }
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&lo, Type::TEXT),
        (&hi, Type::TEXT),
        (&old_version, Type::INT2),
        (&rel, Type::TEXT),
    ];
    params.extend(
        bounds
            .iter()
            .map(|d| (d as &(dyn ToSql + Sync), Type::DATE)),
    );
    // to_regclass: a partition retention dropped since the walk listed it
    // matches nothing (a cast would fail the run with 42P01).
    let rows = tx
        .query_typed(
            &format!(
                "SELECT ctid::text, masked_ip, masked_device_id FROM user_logins \
                 WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND key_version = $3 \
                 AND tableoid = to_regclass($4) AND {cond}"
            ),
            &params,
        )
        .await
        .map_err(db("reading a chunk of rows"))?;
    if rows.is_empty() {
        tx.commit().await.map_err(db("ending a chunk"))?;
        return Ok(0);
    }
    let rekey = |text: Option<&str>| text.map(|t| masker.rekey_text(t, to).as_str().to_owned());
    let mut tids = Vec::with_capacity(rows.len());
    let mut ips = Vec::with_capacity(rows.len());
    let mut devices = Vec::with_capacity(rows.len());
    for r in &rows {
        tids.push(r.get::<_, String>(0));
        ips.push(rekey(r.get(1)));
        devices.push(rekey(r.get(2)));
    }
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&tids, Type::TEXT_ARRAY),
        (&ips, Type::VARCHAR_ARRAY),
        (&devices, Type::VARCHAR_ARRAY),
        (&old_version, Type::INT2),
        (&new_version, Type::INT2),
        (&rel, Type::TEXT),
        (&lo, Type::TEXT),
        (&hi, Type::TEXT),
    ];
    let (cond, bounds) = segment.condition(9);
    params.extend(
        bounds
            .iter()
            .map(|d| (d as &(dyn ToSql + Sync), Type::DATE)),
    );
    let moved = tx
        .execute_typed(
            &format!(
                "UPDATE user_logins u SET masked_ip = m.ip, masked_device_id = m.dev, key_version = $5 \
                 FROM unnest($1::text[]::tid[], $2::varchar[], $3::varchar[]) AS m(t, ip, dev) \
                 WHERE u.ctid = m.t AND u.ctid >= $7::text::tid AND u.ctid < $8::text::tid \
                 AND u.tableoid = to_regclass($6) AND u.key_version = $4 AND {cond}"
            ),
            &params,
        )
        .await
        .map_err(db("re-keying a chunk of rows"))?;
    let n = moved as i64;
    tx.execute_typed(
        "UPDATE user_logins_key_state SET rekey_rows = rekey_rows + $1",
        &[(&n, Type::INT8)],
    )
    .await
    .map_err(db("counting a chunk"))?;
    tx.commit().await.map_err(db("committing a chunk"))?;
    Ok(moved)
}

/// Re-keys the vault's entries still at `to - 1`, chunk by chunk of pages
/// as the rows (an entry moved by its update lands past the pages listed,
/// already at `to`).
async fn rekey_vault(
    client: &mut Client,
    jobs: &mut Jobs,
    masker: &Masker,
    to: u16,
    chunk_pages: u32,
) -> Result<u64, RekeyError> {
    let pages: i64 = client
        .query_typed_one(
            "SELECT pg_relation_size('user_logins_pii_vault') / current_setting('block_size')::int8",
            &[],
        )
        .await
        .map_err(db("reading the vault's size"))?
        .get(0);
    if jobs.side_by_side() {
        let step = i64::from(chunk_pages);
        let chunks = (0..pages.max(1))
            .step_by(usize::try_from(step).unwrap_or(usize::MAX))
            .map(|from| Chunk {
                rows_of: None,
                from,
                to: from + step,
            })
            .collect();
        let every = Duration::from_secs(3600);
        return jobs.run(masker, to, chunks, every, &mut |_| {}).await;
    }
    let mut done = 0u64;
    let mut page = 0i64;
    while page < pages.max(1) {
        let end = page + i64::from(chunk_pages);
        let mut tries = 0;
        done += loop {
            match rekey_vault_chunk(client, masker, to, page, end).await {
                Err(e) if e.is_conflict() && tries < CONFLICT_RETRIES => tries += 1,
                other => break other?,
            }
        };
        page = end;
    }
    Ok(done)
}

/// One chunk of the vault: pages `[from_page, to_page)`, in a transaction
/// of its own. An entry a function stored under the new version meanwhile
/// is the same value's (its twin): the old one goes, the new one stays,
/// also when the twin arrives while the chunk is written
/// (`login_etl_rekey_vault_chunk`).
async fn rekey_vault_chunk(
    client: &mut Client,
    masker: &Masker,
    to: u16,
    from_page: i64,
    to_page: i64,
) -> Result<u64, RekeyError> {
    let old_version = (to - 1) as i16;
    let (lo, hi) = (format!("({from_page},0)"), format!("({to_page},0)"));
    let tx = client
        .transaction()
        .await
        .map_err(db("starting a chunk of the vault"))?;
    let rows = tx
        .query_typed(
            "SELECT ctid::text, kind, token FROM user_logins_pii_vault \
             WHERE ctid >= $1::text::tid AND ctid < $2::text::tid AND key_version = $3",
            &[
                (&lo, Type::TEXT),
                (&hi, Type::TEXT),
                (&old_version, Type::INT2),
            ],
        )
        .await
        .map_err(db("reading a chunk of the vault"))?;
    if rows.is_empty() {
        tx.commit()
            .await
            .map_err(db("ending a chunk of the vault"))?;
        return Ok(0);
    }
    let tids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let kinds: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let news: Vec<String> = rows
        .iter()
        .map(|r| masker.rekey_text(r.get(2), to).as_str().to_owned())
        .collect();
    // As the owner (migrations/0007): the entries move by a delete and an
    // insert that keeps a twin a function stored meanwhile.
    let moved: i64 = tx
        .query_typed_one(
            "SELECT login_etl_rekey_vault_chunk($1::text[]::tid[], $2, $3, $4)",
            &[
                (&tids, Type::TEXT_ARRAY),
                (&kinds, Type::TEXT_ARRAY),
                (&news, Type::TEXT_ARRAY),
                (&old_version, Type::INT2),
            ],
        )
        .await
        .map_err(db("re-keying a chunk of the vault"))?
        .get(0);
    tx.commit()
        .await
        .map_err(db("committing a chunk of the vault"))?;
    Ok(moved as u64)
}
