//! The keys a batch is masked with, and the erasure list it is filtered by
//! ([`ErasedUsers`]: looked up at every key version a key in memory may be
//! of): what the batch handler asks once per batch. The list and the key
//! state are read, and what this returns to record is recorded, by
//! [`crate::privacy::key_state`], on the connection the sink lends:
//! nothing here reads the database.
//!
//! A warm environment holds every key version it read at cold start. The
//! database says which version writes are at (`login-etl rotate-key` moves
//! it); when that is newer than any held, the keys are read again from
//! Secrets Manager ([`KeyReload`]), at most once per
//! [`KEY_RELOAD_INTERVAL`]. The keys are checked against the values the
//! database records before anything is written with them.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Once, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tracing::warn;

use crate::contract::LoginRow;
use crate::error::{DbError, Misconfiguration};
use crate::contract::Token;
use crate::privacy::masking::Masker;

/// Reads the masking and erasure keys again (from Secrets Manager): how a
/// warm function learns the version `login-etl rotate-key` moved to.
pub type KeyReload =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Masker, String>> + Send>> + Send + Sync>;

/// The least time between two key reloads: a database ahead of the secret
/// (an operator's mistake) costs one Secrets Manager call per this, not per batch.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// What a batch was prepared with, checked by each of its write
/// transactions (`login_etl_check_write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// The erasure list's version (its highest `seq`; 0 when empty).
    pub erased: i64,
    /// The masking key's version the batch's tokens are under.
    pub key: u16,
    /// The oldest key version the batch's users were checked against the
    /// erasure list at (`key` unless rotate-key was moving the list).
    pub checked_from: u16,
}

impl Versions {
    /// An empty erasure list's versions at key version `key`.
    pub fn at(key: u16) -> Self {
        Self {
            erased: 0,
            key,
            checked_from: key,
        }
    }
}

/// What the database records of the current version's keys (see
/// `login_etl_check_keys`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyChecks {
    /// The masking key's check value, once a program has recorded it.
    pub masking: Option<String>,
    /// The erasure key's.
    pub erasure: Option<String>,
    /// The erasure list predates erasure keys: user keys are derived from
    /// the masking key.
    pub erasure_derived: bool,
}

/// The erasure list as the function keeps it in memory, with the versions
/// each write checks and what the database records of the keys.
#[derive(Debug, Clone)]
pub struct ErasureList {
    /// The list's version and the key version.
    pub versions: Versions,
    /// The user keys of erased users.
    pub users: ErasedUsers,
    /// The keys' check values and kind.
    pub checks: Arc<KeyChecks>,
    /// The database keeps an erasure list (its full profile): the erasure
    /// key is checked. A masking-only database has none, and records no
    /// erasure key until it is given the full profile.
    pub erasure: bool,
    /// When the key version last changed (`None`: never, or not said).
    pub key_changed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// How long after a key version changes a redrive claim signed with the
/// previous one is still taken: the longest an SQS queue keeps a message
/// (the stack's dead-letter queue keeps 14 days), so every copy made
/// before the change can come back, and none signed with a retired key
/// after that.
pub const PREVIOUS_KEY_CLAIMS: chrono::TimeDelta = chrono::TimeDelta::days(14);

/// The oldest key version a redrive claim may be signed with at key
/// `version`, which took effect at `changed_at`, seen at `now`.
pub fn redrive_floor(
    version: u16,
    changed_at: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> u16 {
    match changed_at {
        Some(at) if now - at >= PREVIOUS_KEY_CLAIMS => version,
        _ => version.saturating_sub(1).max(1),
    }
}

/// The erasure key's mismatch explained by its usual causes, which are
/// settings, not a replaced secret (whose advice the database's refusal
/// gives): this environment has no erasure key where the list is keyed
/// with one, or the list was keyed first by an environment without one
/// (its user keys derived from the masking key) and this one has the key.
fn erasure_mismatch(list: &ErasureList, masker: &Masker, mine: &str) -> Option<DbError> {
    let recorded = list.checks.erasure.as_deref()?;
    if !list.erasure || list.checks.erasure_derived || recorded == mine {
        return None;
    }
    const OP: &str = "checking the erasure key against the database";
    if masker.users().is_derived() {
        return Some(DbError::Misconfigured {
            what: Misconfiguration::KeyMismatch,
            op: OP,
            cause: "this environment has no erasure key (ERASURE_KEY_SECRET_ID and ERASURE_KEY are unset), but the erasure list is keyed with one".into(),
            hint: "; nothing was written. Give it the erasure key's secret the other environments use (ERASURE_KEY_SECRET_ID; docs/configuration.md)".into(),
        });
    }
    if recorded == masker.clone().with_derived_users().users().check().as_str() {
        return Some(DbError::Misconfigured {
            what: Misconfiguration::KeyMismatch,
            op: OP,
            cause: "the erasure list was keyed first by an environment without an erasure key (user keys derived from the masking key), not with this environment's ERASURE_KEY_SECRET_ID".into(),
            hint: "; nothing was written. Give every environment the erasure key's secret (a function or `login-etl poll` started without ERASURE_KEY_SECRET_ID, or a forget or rotate-key run with only the masking key, keyed it), then follow docs/runbooks/erasure.md, \"Keyed first without the erasure key\"".into(),
        });
    }
    None
}

/// Check values of key `version` the database must record (or compare
/// with those it has: `Own::KeysDiffer` when they differ) before a batch writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksToRecord {
    /// The key version.
    pub version: u16,
    /// The masking key's check value.
    pub masking: String,
    /// The erasure key's, where the list is checked.
    pub erasure: Option<String>,
}

/// Every key version known to this environment, and how to read them again.
pub struct Keys {
    /// The versions held (at the newest).
    masker: RwLock<Arc<Masker>>,
    /// How to read the keys again, and when that was last tried.
    reload: Option<(KeyReload, Mutex<Option<Instant>>)>,
    /// The oldest key version a claim may be signed with, as the database
    /// last said ([`redrive_floor`]): [`Keys::unchecked`] keeps it, so a
    /// database that is down lets no retired key's claim through.
    floor: std::sync::atomic::AtomicU16,
    /// The database's key version as it last said it (0: not yet):
    /// [`Keys::unchecked`] masks and signs at it, not at a newer version
    /// the secret holds before rotate-key has moved the database there.
    stated: std::sync::atomic::AtomicU16,
}

/// What one batch is masked and filtered with: the erasure list and the
/// versions its write checks, and the masker at the database's key version.
pub struct BatchKeys {
    /// The erasure list's version and the key version, checked by the write.
    pub versions: Versions,
    /// The erased users, as the batch is filtered with them.
    pub erased: ErasedUsers,
    /// The masker at the database's key version.
    pub masker: Masker,
    /// The database keeps an erasure list (its full profile) and the user
    /// keys are the erasure key's: each row carries its user's tag
    /// ([`BatchKeys::admit`]).
    pub tags: bool,
}

impl Keys {
    /// The keys of `masker`, never read again (see [`Keys::with_reload`]).
    pub fn new(masker: Masker) -> Self {
        Self {
            masker: RwLock::new(Arc::new(masker)),
            reload: None,
            floor: std::sync::atomic::AtomicU16::new(1),
            stated: std::sync::atomic::AtomicU16::new(0),
        }
    }

    /// Reads the keys again with `reload` when the database's key version is
    /// newer than any held (a rotation began after the cold start). Without
    /// it such a batch fails as retryable.
    pub fn with_reload(mut self, reload: KeyReload) -> Self {
        self.reload = Some((reload, Mutex::new(None)));
        self
    }

    /// The keys at the database's version as it last said it (the newest
    /// held before it said any), with an empty erasure list: what a batch
    /// is still validated with when the database cannot say its version
    /// (its rejects reach the DLQ, their copies signed at that version,
    /// which the database still takes; nothing is written).
    pub fn unchecked(&self) -> BatchKeys {
        let held = self.held();
        let stated = self.stated.load(std::sync::atomic::Ordering::Relaxed);
        let masker = held.at(stated).unwrap_or_else(|| Masker::clone(&held));
        BatchKeys {
            versions: Versions::at(1),
            erased: ErasedUsers::default(),
            masker: masker
                .with_redrive_floor(self.floor.load(std::sync::atomic::Ordering::Relaxed)),
            tags: false,
        }
    }

    /// The batch's keys against `list` (the erasure list and what the
    /// database records of the keys): the masker at the database's key
    /// version, its check values compared with those recorded. A mismatch
    /// is refused, as it would write tokens or user keys that match nothing
    /// stored. The check values are returned for the caller to hand the
    /// database ([`ChecksToRecord`]) before it writes: with `record` (a
    /// batch's) where it lacks them or they differ; without (`login-etl
    /// poll`'s start) only where they differ, for the database to refuse,
    /// so that a database with no values yet passes and records nothing.
    pub async fn against(
        &self,
        list: ErasureList,
        record: bool,
    ) -> Result<(BatchKeys, Option<ChecksToRecord>), DbError> {
        let mut masker = self.at(list.versions.key).await?;
        if list.checks.erasure_derived && !masker.users().is_derived() {
            // The list predates erasure keys: its user keys are derived
            // from the masking key, whatever ERASURE_KEY_SECRET_ID holds.
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                warn!("the erasure list predates erasure keys: user keys are derived from the masking key, ERASURE_KEY_SECRET_ID is not used (docs/runbooks/leaked-key.md, \"The masking key leaked\")")
            });
            masker = masker.with_derived_users();
        }
        let (mine_m, mine_e) = (masker.check(), masker.users().check());
        if let Some(refused) = erasure_mismatch(&list, &masker, mine_e.as_str()) {
            return Err(refused);
        }
        let recorded = |r: &Option<String>, mine: &str| r.as_deref() == Some(mine);
        let differs = |r: &Option<String>, mine: &str| r.as_deref().is_some_and(|v| v != mine);
        let erasure = list.erasure.then_some(mine_e.as_str());
        let check = if record {
            !recorded(&list.checks.masking, mine_m.as_str())
                || erasure.is_some_and(|e| !recorded(&list.checks.erasure, e))
        } else {
            // Only a difference: the database refuses it, recording nothing.
            differs(&list.checks.masking, mine_m.as_str())
                || erasure.is_some_and(|e| differs(&list.checks.erasure, e))
        };
        // To record (the next batch reloads the list with them). The
        // batch keeps this list's versions, which its masker matches; a
        // rotation since is caught by the write's own check.
        let to_record = check.then(|| ChecksToRecord {
            version: list.versions.key,
            masking: mine_m.as_str().to_owned(),
            erasure: erasure.map(str::to_owned),
        });
        let floor = redrive_floor(list.versions.key, list.key_changed_at, chrono::Utc::now());
        self.floor.store(floor, std::sync::atomic::Ordering::Relaxed);
        self.stated
            .store(list.versions.key, std::sync::atomic::Ordering::Relaxed);
        let keys = BatchKeys {
            versions: list.versions,
            erased: list.users,
            // Tags only under the erasure key's user keys: user keys derived
            // from the masking key (a list from before erasure keys, or an
            // environment without the erasure key first to use a full
            // database: docs/runbooks/erasure.md) would leave tags that the
            // erasure key's forget takes for another user's once the list
            // moves to its own keys. rotate-key does the same.
            tags: list.erasure && !masker.users().is_derived(),
            masker: masker.with_redrive_floor(floor),
        };
        Ok((keys, to_record))
    }

    fn held(&self) -> Arc<Masker> {
        Arc::clone(&self.masker.read().expect("never poisoned"))
    }

    /// The masker at the database's key `version`, reading the keys again
    /// when none that new is held.
    async fn at(&self, version: u16) -> Result<Masker, DbError> {
        let held = self.held();
        if let Some(m) = held.at(version) {
            return Ok(m);
        }
        let Some((reload, last)) = &self.reload else {
            return Err(behind(version, held.latest(), ""));
        };
        let mut last = last.lock().await;
        // Another batch may have reloaded while this one waited.
        let current = self.held();
        if let Some(m) = current.at(version) {
            return Ok(m);
        }
        if last.is_some_and(|t| t.elapsed() < KEY_RELOAD_INTERVAL) {
            let detail = ", and the secret had no newer one moments ago";
            return Err(behind(version, current.latest(), detail));
        }
        *last = Some(Instant::now());
        let fresh = reload().await.map_err(|e| {
            let detail = format!("; reading the keys again failed: {e}");
            behind(version, current.latest(), &detail)
        })?;
        warn!(
            from = current.latest(),
            to = fresh.latest(),
            "masking keys read again: the database moved to a newer key version"
        );
        let found = fresh.at(version);
        let latest = fresh.latest();
        *self.masker.write().expect("never poisoned") = Arc::new(fresh);
        found.ok_or_else(|| behind(version, latest, " after reading the secret again"))
    }
}

/// The database is at key `version` and this environment holds versions
/// up to `latest`: a retryable refusal that names the secret to fix.
fn behind(version: u16, latest: u16, detail: &str) -> DbError {
    DbError::Misconfigured {
        what: Misconfiguration::KeyVersionBehind,
        op: "checking the masking keys against the database",
        cause: format!(
            "the database is at masking-key version {version} (login-etl rotate-key) and this environment holds versions up to {latest}{detail}"
        ),
        hint: "; nothing is written with the keys held: append the new version to the masking secret (docs/runbooks/leaked-key.md, \"The masking key leaked\")".into(),
    }
}

impl BatchKeys {
    /// Whether the user is on the erasure list (their records are handled,
    /// not stored).
    pub fn is_erased(&self, user_id: &str) -> bool {
        self.erased.contains(&self.masker, user_id)
    }

    /// Whether the row may be stored: its user is not on the erasure list.
    /// Where the database keeps one, the row gets its user's tag at its key
    /// version (the user key computed once for both): a forget deletes the
    /// row only under that user's key (`login_etl_forget_rows`).
    pub fn admit(&self, row: &mut LoginRow<'_>) -> bool {
        if !self.tags {
            return !self.is_erased(&row.user_id);
        }
        let users = self.masker.users();
        let key = users.user_key(&row.user_id);
        if self.erased.contains_key(&self.masker, &row.user_id, &key) {
            return false;
        }
        row.user_tag = Some(if row.key_version == users.version() {
            key.tag()
        } else {
            users
                .at(row.key_version)
                .map_or(key, |u| u.user_key(&row.user_id))
                .tag()
        });
        true
    }

    /// Moves a row's tokens to this batch's version, one step of the chain
    /// at a time (no original needed). A database whose version went down
    /// is refused: no step undoes a key.
    pub fn rekey(&self, row: &mut LoginRow<'_>) -> Result<(), DbError> {
        let masker = &self.masker;
        if row.key_version > masker.version() {
            return Err(DbError::Fatal {
                op: "masking the batch",
                cause: format!(
                    "the database's masking-key version went down from {} to {}",
                    row.key_version,
                    masker.version()
                ),
                hint: "; key versions only grow: check that user_logins_key_state was not restored from an older backup".into(),
            });
        }
        let from = row.key_version;
        masker.catch_up(
            &mut row.key_version,
            &mut row.masked_ip,
            &mut row.masked_device_id,
        );
        if row.user_tag.is_some() && row.key_version != from {
            row.user_tag = Some(masker.users().user_key(&row.user_id).tag());
        }
        Ok(())
    }
}

/// The erased users' keys, as a batch is filtered with them: the list as
/// first read, and what was added since, each a set of its own (an
/// erasure adds one key: reading it is one index range, not the list).
#[derive(Debug, Clone, Default)]
pub struct ErasedUsers {
    sets: Vec<Arc<HashSet<String>>>,
    /// The oldest key version a key in memory may be of: the database's
    /// (or the version a re-key moved from) when the list was first read.
    /// rotate-key re-keys the list in place, so a key read before keeps
    /// its version; a user is looked up at every version since.
    pub(crate) oldest: u16,
}

/// More sets than this are merged into one (a set per erasure since the
/// list was first read).
const MAX_ERASED_SETS: usize = 16;

impl ErasedUsers {
    /// The list `keys`, read at key version `oldest` or later.
    pub fn new(keys: HashSet<String>, oldest: u16) -> Self {
        Self {
            sets: vec![Arc::new(keys)],
            oldest,
        }
    }

    /// This list with `added` (keys listed since, at the current version).
    pub(crate) fn with(&self, added: HashSet<String>) -> Self {
        let mut sets = self.sets.clone();
        if !added.is_empty() {
            sets.push(Arc::new(added));
        }
        if sets.len() > MAX_ERASED_SETS {
            let all: HashSet<String> = sets.iter().flat_map(|s| s.iter().cloned()).collect();
            sets = vec![Arc::new(all)];
        }
        Self {
            sets,
            oldest: self.oldest,
        }
    }

    /// Nobody is erased.
    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.is_empty())
    }

    /// [`contains`](Self::contains), given the user key at `masker`'s version.
    pub fn contains_key(&self, masker: &Masker, user_id: &str, key: &Token) -> bool {
        if self.is_empty() {
            return false;
        }
        if self.oldest < masker.version() {
            return self.contains(masker, user_id);
        }
        self.sets.iter().any(|s| s.contains(key.as_str()))
    }

    /// Whether `user_id` is on the list, its user key computed by `masker`
    /// at the batch's version and at every older one a key in memory may
    /// be of (one chain computes them all).
    pub fn contains(&self, masker: &Masker, user_id: &str) -> bool {
        if self.is_empty() {
            return false;
        }
        let has = |k: &Token| self.sets.iter().any(|s| s.contains(k.as_str()));
        if self.oldest < masker.version() {
            masker
                .users()
                .user_keys_since(user_id, self.oldest)
                .iter()
                .any(has)
        } else {
            has(&masker.user_key(user_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::masking::KeyVersions;

    fn masker(keys: &[&str], version: u16) -> Masker {
        let doc = serde_json::json!({ "versions": keys }).to_string();
        let v = KeyVersions::parse(&doc, "test").unwrap();
        Masker::versions(&v, Some(&v)).unwrap().at(version).unwrap()
    }

    #[test]
    fn a_row_carries_its_users_tag_at_its_version_and_a_rekey_moves_it() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let (one, two) = (masker(&[&a, &b], 1), masker(&[&a, &b], 2));
        let body = r#"{"user_id":"u-1","device_type":"ios","ip":"10.0.0.1","device_id":"d-1","locale":"en","app_version":"1.0.0"}"#;
        let event = crate::contract::parse_body(body).unwrap();
        let mut row = LoginRow::new(
            event,
            crate::contract::RowKeyAndTokens {
                message_id: "m",
                sent_at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
                masked_ip: None,
                masked_device_id: None,
                key_version: 1,
            },
        );
        let keys = |masker: &Masker, erased: ErasedUsers, tags: bool| BatchKeys {
            versions: Versions::at(masker.version()),
            erased,
            masker: masker.clone(),
            tags,
        };
        // A masking-only database keeps no erasure list: no tag.
        assert!(keys(&one, ErasedUsers::default(), false).admit(&mut row));
        assert_eq!(row.user_tag, None);
        assert!(keys(&one, ErasedUsers::default(), true).admit(&mut row));
        let at_one = one.users().user_key("u-1").tag();
        assert_eq!(row.user_tag, Some(at_one));
        keys(&two, ErasedUsers::default(), true)
            .rekey(&mut row)
            .unwrap();
        assert_eq!(row.key_version, 2);
        let at_two = two.users().user_key("u-1").tag();
        assert_eq!(row.user_tag, Some(at_two));
        assert_ne!(at_one, at_two);
        // Listed: not admitted, with a tag or without.
        let listed = || ErasedUsers::new([two.user_key("u-1").as_str().to_owned()].into(), 2);
        assert!(!keys(&two, listed(), true).admit(&mut row));
        assert!(!keys(&two, listed(), false).admit(&mut row));
        // The tag is the first 8 bytes, big-endian, of the SHA-256 of the
        // key's text, as login_etl_forget_rows computes it: PostgreSQL gave
        // these two (the second's first bit set: a negative bigint).
        let tag = |pair: &str| crate::contract::Token::parse(&pair.repeat(32)).unwrap().tag();
        assert_eq!(tag("cd"), 4_144_959_589_210_620_228);
        assert_eq!(tag("ef"), 0x86ff_9fd5_71dc_3dde_u64 as i64);
    }

    #[tokio::test]
    async fn without_the_database_a_batch_is_masked_at_the_version_it_last_stated() {
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        // The secret holds version 2 before rotate-key moves the database.
        let keys = Keys::new(masker(&[&a, &b], 2));
        assert_eq!(keys.unchecked().masker.version(), 2, "nothing stated yet");
        let list = ErasureList {
            versions: Versions::at(1),
            users: ErasedUsers::default(),
            checks: Arc::new(KeyChecks::default()),
            erasure: false,
            key_changed_at: None,
        };
        keys.against(list, true).await.unwrap();
        assert_eq!(
            keys.unchecked().masker.version(),
            1,
            "a copy signed at version 2 would be no claim to the database at 1"
        );
    }

    #[test]
    fn a_user_is_found_at_every_version_a_key_in_memory_may_be_of_and_in_every_set() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let one = masker(&[&a], 1);
        let three = masker(&[&a, &b, &c], 3);
        let (early, late) = ("user-early", "user-late");
        // Read at version 1; the database then moved to 3 (two rotations)
        // and listed another user there.
        let list = ErasedUsers::new(
            [one.user_key(early).as_str().to_owned()]
                .into_iter()
                .collect(),
            1,
        );
        let list = list.with(
            [three.user_key(late).as_str().to_owned()]
                .into_iter()
                .collect(),
        );
        assert!(
            list.contains(&three, early),
            "its key of version 1, still in memory"
        );
        assert!(list.contains(&three, late));
        assert!(!list.contains(&three, "someone-else"));
        // Read at version 3: only version 3 is looked at.
        let fresh = ErasedUsers::new(
            [one.user_key(early).as_str().to_owned()]
                .into_iter()
                .collect(),
            3,
        );
        assert!(
            !fresh.contains(&three, early),
            "a key of version 1 is not looked for"
        );
        // Many additions are merged into one set, nothing lost.
        let mut many = ErasedUsers::new(HashSet::new(), 3);
        for i in 0..40 {
            many = many.with(
                [three.user_key(&format!("u{i}")).as_str().to_owned()]
                    .into_iter()
                    .collect(),
            );
        }
        assert!(many.sets.len() <= MAX_ERASED_SETS);
        assert!((0..40).all(|i| many.contains(&three, &format!("u{i}"))));
        assert!(ErasedUsers::default().is_empty());
    }
}
