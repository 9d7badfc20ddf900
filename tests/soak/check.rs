//! The invariants after a seed's run, computed apart from the code under
//! test: what each valid message must have become is derived here from
//! what was sent (its text, `SentTimestamp`, the key versions the secrets
//! held) with the `hmac`/`sha2` crates and std's `IpAddr`; nothing of the
//! crate's parsing, masking or encoding is used. Each failed invariant is a
//! line naming what broke and how often, with one message id or user
//! number as an example, never a value.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::common::hmac_hex;
use super::common::oracle::app_version_number;
use super::schedule::Login;
use super::world::{DLQ, SOURCE, World};

/// The token of `value` at `version` of the chain `keys` (version n is
/// HMAC(kₙ, token of version n-1)).
fn chain(keys: &[String], value: &str, version: usize) -> String {
    let mut token = hmac_hex(&keys[0], value);
    for key in &keys[1..version] {
        token = hmac_hex(key, &token);
    }
    token
}

/// Tokens at one version, each value's chain computed once: a long run's
/// rows repeat a few thousand values, through up to 30 versions.
struct Tokens<'a> {
    keys: &'a [String],
    version: usize,
    memo: std::cell::RefCell<HashMap<String, String>>,
}

impl Tokens<'_> {
    fn of(&self, value: &str) -> String {
        if let Some(t) = self.memo.borrow().get(value) {
            return t.clone();
        }
        let t = chain(self.keys, value, self.version);
        self.memo.borrow_mut().insert(value.to_owned(), t.clone());
        t
    }
}

fn canonical_ip(raw: &str) -> String {
    raw.trim()
        .parse::<std::net::IpAddr>()
        .expect("a valid login's ip")
        .to_string()
}

fn day_of(ms: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .date_naive()
}

struct Violations(Vec<String>);

impl Violations {
    /// Records `what` when `count` > 0.
    fn count(&mut self, count: usize, what: &str, example: Option<&str>) {
        if count > 0 {
            let e = example.map(|e| format!(" (e.g. {e})")).unwrap_or_default();
            self.0.push(format!("{what}: {count}{e}"));
        }
    }
}

/// Every invariant; the violations found (empty: all hold).
pub async fn check(world: &World, cutoff: NaiveDate) -> Vec<String> {
    let mut v = Violations(Vec::new());
    let masking = world.masking_keys.lock().unwrap().clone();
    let erasure = world.erasure_keys.lock().unwrap().clone();
    let version = masking.len();
    let tokens = Tokens {
        keys: &masking,
        version,
        memo: Default::default(),
    };
    let erased: BTreeSet<usize> = world.erased.lock().unwrap().clone();
    let ledger = world.ledger.lock().unwrap().clone();
    let plan = &world.plan;
    let admin = world.admin().await;

    // What each key (the original message id) must be.
    let mut valid: BTreeMap<String, (Login, i64)> = BTreeMap::new();
    let mut invalid: BTreeSet<String> = BTreeSet::new();
    for sent in ledger.values() {
        let original = &ledger[&sent.key_id];
        match &original.out.login {
            Some(login) => {
                valid.insert(sent.key_id.clone(), (login.clone(), sent.key_sent_ms));
            }
            None => {
                invalid.insert(sent.key_id.clone());
            }
        }
    }
    let wanted: BTreeSet<&String> = valid
        .iter()
        .filter(|(_, (l, sent))| !erased.contains(&l.user) && day_of(*sent) >= cutoff)
        .map(|(id, _)| id)
        .collect();

    // 1. The table: exactly the wanted messages, once each, every column
    // as the oracle computes it, every token at the newest version.
    let rows = admin
        .query(
            "SELECT message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
             app_version_text, create_date, key_version, (extract(epoch FROM sent_at) * 1000)::int8 FROM user_logins",
            &[],
        )
        .await
        .expect("the table reads");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut differ: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut unknown = Vec::new();
    for r in &rows {
        let id: String = r.get(0);
        *seen.entry(id.clone()).or_default() += 1;
        let Some((login, sent)) = valid.get(&id) else {
            unknown.push(id);
            continue;
        };
        let key_version: i16 = r.get(9);
        let checks: [(&'static str, bool); 11] = [
            ("user_id", r.get::<_, String>(1) == plan.users[login.user]),
            ("device_type", r.get::<_, String>(2) == login.device_type),
            (
                "masked_ip",
                r.get::<_, String>(3) == tokens.of(&canonical_ip(&login.ip)),
            ),
            (
                "masked_device_id",
                r.get::<_, String>(4) == tokens.of(login.device_id.trim()),
            ),
            (
                "locale",
                r.get::<_, Option<String>>(5).as_deref() == login.locale,
            ),
            (
                "app_version",
                r.get::<_, i32>(6) == app_version_number(login.app_version),
            ),
            (
                "app_version_text",
                r.get::<_, String>(7) == login.app_version,
            ),
            ("create_date", r.get::<_, NaiveDate>(8) == day_of(*sent)),
            ("key_version", key_version as usize == version),
            ("sent_at", r.get::<_, i64>(10) == *sent),
            ("erased user", !erased.contains(&login.user)),
        ];
        for (column, ok) in checks {
            if !ok {
                differ.entry(column).or_insert((0, id.clone())).0 += 1;
            }
        }
    }
    for (column, (n, id)) in &differ {
        v.count(
            *n,
            &format!("rows whose {column} differs from the oracle"),
            Some(id),
        );
    }
    v.count(
        unknown.len(),
        "rows of no valid message sent",
        unknown.first().map(String::as_str),
    );
    let dups: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    v.count(
        dups.len(),
        "messages stored more than once",
        dups.first().map(|s| s.as_str()),
    );
    let missing: Vec<&&String> = wanted
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    v.count(
        missing.len(),
        "valid messages not stored (not erased, within retention)",
        missing.first().map(|s| s.as_str()),
    );
    let old: Vec<&String> = seen
        .keys()
        .filter(|id| {
            valid
                .get(*id)
                .is_some_and(|(_, sent)| day_of(*sent) < cutoff)
        })
        .collect();
    v.count(
        old.len(),
        "rows past retention still stored",
        old.first().map(|s| s.as_str()),
    );

    // 2. The queues: the source drained; the DLQ holds every reject, each
    // with its reason, and nothing valid.
    v.count(
        world.aws.depth(SOURCE).0,
        "messages left in the source queue",
        None,
    );
    let mut dead_keys = BTreeSet::new();
    let (mut valid_dead, mut no_reason) = (Vec::new(), 0);
    for m in world.aws.messages(DLQ) {
        let key = m
            .attributes
            .get("source_message_id")
            .map(|(_, v)| v.clone())
            .unwrap_or(m.id.clone());
        if valid.contains_key(&key) {
            valid_dead.push(key.clone());
        }
        if !m.attributes.contains_key("rejection_code") {
            no_reason += 1;
        }
        dead_keys.insert(key);
    }
    v.count(
        valid_dead.len(),
        "valid messages in the DLQ",
        valid_dead.first().map(String::as_str),
    );
    v.count(no_reason, "DLQ messages without a rejection_code", None);
    let lost: Vec<&String> = invalid
        .iter()
        .filter(|id| !dead_keys.contains(*id))
        .collect();
    v.count(
        lost.len(),
        "rejected messages not in the DLQ",
        lost.first().map(|s| s.as_str()),
    );

    // 3. The vault: an entry for every stored token, none under an older
    // version, none of an erased user's value nobody else sent.
    let vault: HashMap<(String, String), i16> = admin
        .query(
            "SELECT kind, token, key_version FROM user_logins_pii_vault",
            &[],
        )
        .await
        .expect("the vault reads")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let token_of = |kind: &str, login: &Login| match kind {
        "ip" => tokens.of(&canonical_ip(&login.ip)),
        _ => tokens.of(login.device_id.trim()),
    };
    let mut no_entry = 0;
    for id in &wanted {
        let (login, _) = &valid[*id];
        for kind in ["ip", "device_id"] {
            if seen.contains_key(id.as_str())
                && !vault.contains_key(&(kind.to_owned(), token_of(kind, login)))
            {
                no_entry += 1;
            }
        }
    }
    v.count(no_entry, "stored tokens without a vault entry", None);
    let stale = vault.values().filter(|&&kv| kv as usize != version).count();
    v.count(stale, "vault entries under an older key version", None);
    let others: BTreeSet<(String, String)> = valid
        .values()
        .filter(|(l, _)| !erased.contains(&l.user))
        .flat_map(|(l, _)| ["ip", "device_id"].map(|k| (k.to_owned(), token_of(k, l))))
        .collect();
    let leftover: BTreeMap<(String, String), bool> = valid
        .values()
        .filter(|(l, _)| erased.contains(&l.user))
        .flat_map(|(l, sent)| {
            ["ip", "device_id"].map(|k| ((k.to_owned(), token_of(k, l)), day_of(*sent) >= cutoff))
        })
        .filter(|(t, _)| !others.contains(t) && vault.contains_key(t))
        .fold(BTreeMap::new(), |mut m, (t, kept)| {
            *m.entry(t).or_insert(false) |= kept;
            m
        });
    let aged = leftover.values().filter(|kept| !**kept).count();
    // Retention covers the vault: an entry goes with the last row that
    // used it (whoever sent it, erased or not).
    let mut latest: HashMap<(String, String), NaiveDate> = HashMap::new();
    for (l, sent) in valid.values() {
        for kind in ["ip", "device_id"] {
            let day = latest
                .entry((kind.to_owned(), token_of(kind, l)))
                .or_insert(day_of(*sent));
            *day = (*day).max(day_of(*sent));
        }
    }
    let expired = vault
        .keys()
        .filter(|t| latest.get(*t).is_none_or(|day| *day < cutoff))
        .count();
    v.count(
        expired,
        "vault entries of values sent only on days past retention (or never sent)",
        None,
    );
    v.count(
        leftover.len(),
        "vault entries of erased users' values no one else sent",
        Some(&format!("{aged} of them sent only on days past retention")),
    );

    // 4. The erasure list: every erased user, at the newest version only.
    let user_key = |user: usize| chain(&erasure, &plan.users[user], version);
    let listed: BTreeMap<String, i16> = admin
        .query("SELECT user_key, key_version FROM user_logins_erased", &[])
        .await
        .expect("the erasure list reads")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let unlisted = erased
        .iter()
        .filter(|u| !listed.contains_key(&user_key(**u)))
        .count();
    v.count(
        unlisted,
        "erased users missing from the erasure list at the newest version",
        None,
    );
    v.count(
        listed
            .values()
            .filter(|&&kv| kv as usize != version)
            .count(),
        "erasure-list entries under an older key version",
        None,
    );

    // 5. The key and the partitions.
    let state = admin
        .query_one("SELECT version, rekey_from FROM user_logins_key_state", &[])
        .await
        .expect("the key state reads");
    if state.get::<_, i16>(0) as usize != version || state.get::<_, Option<i16>>(1).is_some() {
        v.0.push(format!(
            "the key state is version {} (re-keying from {:?}), not {version} with no re-key under way",
            state.get::<_, i16>(0),
            state.get::<_, Option<i16>>(1)
        ));
    }
    let default: i64 = admin
        .query_one("SELECT count(*) FROM user_logins_default", &[])
        .await
        .unwrap()
        .get(0);
    v.count(
        default as usize,
        "rows in the DEFAULT partition after the last maintain",
        None,
    );

    // 6. The audit: a record per erasure, re-key and reveal, and every
    // token and user key it keeps at the newest version.
    let audit = admin
        .query(
            "SELECT action, token, user_key, detail::text FROM user_logins_pii_audit",
            &[],
        )
        .await
        .expect("the audit reads");
    let forgets: BTreeSet<String> = audit
        .iter()
        .filter(|r| r.get::<_, String>(0) == "forget")
        .filter_map(|r| r.get::<_, Option<String>>(2))
        .collect();
    let unaudited = erased
        .iter()
        .filter(|u| !forgets.contains(&user_key(**u)))
        .count();
    v.count(
        unaudited,
        "erased users without a forget audit record (at the newest version)",
        None,
    );
    let rekeys = audit
        .iter()
        .filter(|r| r.get::<_, String>(0) == "rekey")
        .count();
    if rekeys != version - 1 {
        v.0.push(format!(
            "{rekeys} rekey audit records for {} rotations",
            version - 1
        ));
    }
    let reveals = world.reveals.lock().unwrap().clone();
    let reveal_records = audit
        .iter()
        .filter(|r| r.get::<_, String>(0) == "reveal")
        .count();
    let revealed_lines: usize = reveals.iter().map(|(_, lines)| lines.len()).sum();
    if reveal_records < revealed_lines {
        v.0.push(format!(
            "{reveal_records} reveal audit records for {revealed_lines} values revealed"
        ));
    }
    let current_tokens: BTreeSet<String> = valid
        .values()
        .flat_map(|(l, _)| [token_of("ip", l), token_of("device_id", l)])
        .collect();
    let user_keys: BTreeSet<String> = (0..plan.users.len()).map(user_key).collect();
    let stale_audit = audit
        .iter()
        .filter(|r| {
            let token_ok = r
                .get::<_, Option<String>>(1)
                .is_none_or(|t| current_tokens.contains(&t));
            let key_ok = r
                .get::<_, Option<String>>(2)
                .is_none_or(|k| user_keys.contains(&k));
            !(token_ok && key_ok)
        })
        .count();
    v.count(
        stale_audit,
        "audit records whose token or user key is not at the newest version",
        None,
    );

    // 7. What reveal printed: the value behind each token, as sent.
    let mut wrong = 0;
    for (user, lines) in &reveals {
        let sent: BTreeSet<(String, String)> = valid
            .values()
            .filter(|(l, _)| l.user == *user)
            .flat_map(|(l, _)| {
                [
                    ("ip".to_owned(), canonical_ip(&l.ip)),
                    ("device_id".to_owned(), l.device_id.trim().to_owned()),
                ]
            })
            .collect();
        for line in lines {
            let parts: Vec<&str> = line.split('\t').collect();
            let ok = parts.len() == 3 && sent.contains(&(parts[0].to_owned(), parts[2].to_owned()));
            if !ok {
                wrong += 1;
            }
        }
    }
    v.count(
        wrong,
        "revealed values that are not what the user sent",
        None,
    );

    // 8. What the processes printed: no PII at any level, and Lambda's
    // filter at WARN keeps a summary of every answered invocation.
    for env in &world.envs {
        let seen = env.seen.lock().unwrap();
        if let Some((file, line, len)) = seen.pii.first() {
            v.0.push(format!("{} PII values in function {}'s output (first: {file} line {line}, {len} characters)", seen.pii.len(), env.index));
        }
        let answered = env.counts.answered.load(Ordering::Relaxed) as usize;
        if seen.summaries < answered {
            v.0.push(format!(
                "function {} (at {}): {} summaries kept by Lambda's filter for {answered} answered invocations",
                env.index, env.level, seen.summaries
            ));
        }
        v.count(
            env.counts.bad_answers.load(Ordering::Relaxed) as usize,
            &format!(
                "answers of function {} naming no record of the batch",
                env.index
            ),
            None,
        );
        let init = env.init_errors();
        v.count(
            init.len(),
            &format!("init errors of function {}", env.index),
            init.first().map(String::as_str),
        );
    }
    for (name, seen) in [
        ("login-etl poll", &world.poll_seen),
        ("the operator commands", &world.ops_seen),
    ] {
        let seen = seen.lock().unwrap();
        if let Some((file, line, len)) = seen.pii.first() {
            v.0.push(format!(
                "{} PII values in {name}'s output (first: {file} line {line}, {len} characters)",
                seen.pii.len()
            ));
        }
    }
    v.0
}

/// The first day retention keeps at the moment of the last maintain.
pub fn cutoff(retention_days: u32) -> NaiveDate {
    Utc::now().date_naive() - TimeDelta::days(i64::from(retention_days) - 1)
}
