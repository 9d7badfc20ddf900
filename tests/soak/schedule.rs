//! The schedule of one seed: every message (its body, user, values, day,
//! whether it is valid, whether it is a redriven copy) and every operation
//! (maintain, forget, rotate-key and its kill, outages, killed backends,
//! killed environments and consumers, reveals, DLQ redrives) with its time,
//! drawn from the seed alone. The same seed and duration give the same
//! schedule, so a failing seed replays it (`make soak SEED=…`); what the
//! processes and PostgreSQL then do in between is theirs.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The fields of a valid login, as sent (before any trimming or parsing).
#[derive(Debug, Clone)]
pub struct Login {
    pub user: usize,
    pub device_type: &'static str,
    /// The ip as written in the body (it may be an IPv6 form that
    /// canonicalises to another pool entry's text).
    pub ip: String,
    /// The device id as written (it may carry surrounding whitespace).
    pub device_id: String,
    pub locale: Option<&'static str>,
    pub app_version: &'static str,
}

/// One message a producer sends.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub body: String,
    /// The login, when the body is a valid one.
    pub login: Option<Login>,
    /// Days before the send that its `SentTimestamp` says it was sent.
    pub days_ago: u32,
    /// The original this is a DLQ-redriven copy of (new id, the original's
    /// id and `SentTimestamp` as message attributes).
    pub copy_of: Option<String>,
}

/// Why a user is erased at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgetWhen {
    /// Logins of theirs were sent well before.
    Stored,
    /// A login of theirs is sent in the same instant (in flight).
    InFlight,
    /// Their first login comes later.
    NotYetSent,
}

/// An operation of the schedule.
#[derive(Debug, Clone)]
pub enum Op {
    /// A producer sends these.
    Send(Vec<Outgoing>),
    /// `login-etl maintain` with RETENTION_DAYS, and DEFAULT_MOVE_LIMIT
    /// `move_limit` (small: the DEFAULT partition is swapped out and
    /// drained; large: its rows move under its lock).
    Maintain { move_limit: u64 },
    /// `login-etl forget --user-id`, rerun on exit 75.
    Forget { user: usize, when: ForgetWhen },
    /// A version appended to both key secrets and `login-etl rotate-key`
    /// run; killed (`kill -9`) after `kill_after_ms` and run again.
    Rotate { kill_after_ms: Option<u64> },
    /// The database server stopped (`immediate`: a crash, with recovery
    /// at the restart) for `ms`.
    Outage { ms: u64, immediate: bool },
    /// `pg_terminate_backend` of every client backend but the soak's own.
    KillBackends,
    /// `kill -9` of function environment `env`, a cold start `down_ms` later.
    KillEnv { env: usize, down_ms: u64 },
    /// `kill -9` of `login-etl poll`, started again `down_ms` later.
    KillPoll { down_ms: u64 },
    /// `login-etl reveal --user-id` (audited).
    Reveal { user: usize },
    /// An operator redrives the DLQ into the source queue.
    Redrive,
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Send(_) => "send",
            Op::Maintain { .. } => "maintain",
            Op::Forget { .. } => "forget",
            Op::Rotate { .. } => "rotate-key",
            Op::Outage { .. } => "outage",
            Op::KillBackends => "kill-backends",
            Op::KillEnv { .. } => "kill-env",
            Op::KillPoll { .. } => "kill-poll",
            Op::Reveal { .. } => "reveal",
            Op::Redrive => "redrive",
        }
    }
}

/// An operation at its time (milliseconds from the start).
#[derive(Debug, Clone)]
pub struct Event {
    pub at_ms: u64,
    pub op: Op,
}

/// The soak's knobs (the environment sets them, see main.rs).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub seconds: u64,
    /// Function environments (Lambda's concurrency).
    pub envs: usize,
    /// Messages per second the producers send, on average.
    pub rate: u32,
    /// RETENTION_DAYS of maintain.
    pub retention_days: u32,
}

/// Everything one seed does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub shape: Shape,
    pub users: Vec<String>,
    pub ips: Vec<String>,
    pub devices: Vec<String>,
    pub events: Vec<Event>,
}

const DEVICE_TYPES: [&str; 3] = ["ios", "android", "web"];
const LOCALES: [&str; 4] = ["RU", "en-US", "DE", "pt_BR"];
const VERSIONS: [&str; 7] = [
    "2.3.0",
    "0.96",
    "2.00",
    "1.1",
    "10.20.30",
    "999.999.999",
    "0.0.1",
];

impl Plan {
    /// The schedule of `seed` for `shape`.
    pub fn draw(seed: u64, shape: Shape) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let users: Vec<String> = (0..(shape.seconds as usize * 20).clamp(200, 20_000))
            .map(|i| {
                format!(
                    "{:08x}-soak-{i:04}-{:012x}",
                    rng.random::<u32>(),
                    rng.random::<u64>() >> 16
                )
            })
            .collect();
        // Values repeat across users (shared tokens, shared vault entries),
        // and are many enough for a vault of a few thousand entries.
        let ips: Vec<String> = (0..3_000).map(|_| draw_ip(&mut rng)).collect();
        let devices: Vec<String> = (0..3_000)
            .map(|_| {
                format!(
                    "{:03}-{:02}-{:04}",
                    rng.random_range(100..1000),
                    rng.random_range(10..100),
                    rng.random_range(1000..10_000)
                )
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut plan = Plan {
            seed,
            shape,
            users,
            ips,
            devices,
            events: Vec::new(),
        };
        plan.draw_sends(&mut rng);
        plan.draw_operations(&mut rng);
        plan.events.sort_by_key(|e| e.at_ms);
        plan
    }

    fn draw_sends(&mut self, rng: &mut StdRng) {
        let end = self.shape.seconds * 1000;
        let mut at = 0;
        let mut n = 0u64;
        let mut valid_sent: Vec<String> = Vec::new();
        while at < end {
            // Now and then a burst (a fleet of apps back online at once):
            // batches of 500 and more for the function, the COPY path.
            // No redriven copy in it: one copy of a stored login refuses
            // the whole COPY (the batch then takes the INSERT path), and
            // the COPY must commit beside the operations too.
            let burst = rng.random_bool(0.003);
            let size = if burst {
                rng.random_range(600..=1_000)
            } else {
                rng.random_range(1..=(self.shape.rate / 10).max(2))
            };
            let mut batch = Vec::new();
            for _ in 0..size {
                n += 1;
                let id = format!("soak-{}-{n:07}", self.seed);
                let copy_of = (rng.random_bool(0.02) && !burst && !valid_sent.is_empty())
                    .then(|| valid_sent.choose(rng).unwrap().clone());
                if let Some(original) = copy_of {
                    // The copy's body is the original's (found by the runner).
                    batch.push(Outgoing {
                        id,
                        body: String::new(),
                        login: None,
                        days_ago: 0,
                        copy_of: Some(original),
                    });
                    continue;
                }
                // Mostly today and yesterday; now and then a day with no
                // partition yet (the DEFAULT one), or past retention.
                let days_ago = match rng.random_range(0..100) {
                    0..75 => 0,
                    75..83 => 1,
                    83..95 => rng.random_range(2..self.shape.retention_days.max(3)),
                    _ => self.shape.retention_days + rng.random_range(0..3),
                };
                let out = if rng.random_bool(0.06) {
                    let body = self.invalid_body(rng);
                    Outgoing {
                        id,
                        body,
                        login: None,
                        days_ago,
                        copy_of: None,
                    }
                } else {
                    let login = self.login(rng, at);
                    valid_sent.push(id.clone());
                    Outgoing {
                        body: self.body(&login, rng),
                        id,
                        login: Some(login),
                        days_ago,
                        copy_of: None,
                    }
                };
                batch.push(out);
            }
            self.events.push(Event {
                at_ms: at,
                op: Op::Send(batch),
            });
            // Mean gap so that the mean rate is `rate`.
            let mean_gap = (1000.0 * f64::from(size) / f64::from(self.shape.rate)).max(1.0);
            at += rng.random_range(0.0..2.0 * mean_gap) as u64 + 1;
        }
    }

    /// A user at `at_ms`, skewed: a few users log in often, and users
    /// join over time (so that some are erased before their first login).
    fn user(&self, rng: &mut StdRng, at_ms: u64) -> usize {
        let n = self.users.len();
        let joined = (n as u64 * (at_ms + 1) / (self.shape.seconds * 1000).max(1))
            .clamp(n as u64 / 10, n as u64) as usize;
        if rng.random_bool(0.3) {
            rng.random_range(0..(n / 20).max(1))
        } else {
            rng.random_range(0..joined.max(1))
        }
    }

    fn login(&self, rng: &mut StdRng, at_ms: u64) -> Login {
        Login {
            user: self.user(rng, at_ms),
            device_type: DEVICE_TYPES.choose(rng).unwrap(),
            ip: self.ips.choose(rng).unwrap().clone(),
            device_id: {
                let d = self.devices.choose(rng).unwrap().clone();
                if rng.random_bool(0.05) {
                    format!("  {d}\t")
                } else {
                    d
                }
            },
            locale: if rng.random_bool(0.3) {
                None
            } else {
                Some(LOCALES.choose(rng).unwrap())
            },
            app_version: VERSIONS.choose(rng).unwrap(),
        }
    }

    fn body(&self, l: &Login, rng: &mut StdRng) -> String {
        let mut body = serde_json::json!({
            "user_id": self.users[l.user],
            "app_version": l.app_version,
            "device_type": l.device_type,
            "ip": l.ip,
            "locale": l.locale,
            "device_id": l.device_id,
        });
        if rng.random_bool(0.1) {
            body["extra_field"] = serde_json::json!({"ignored": true});
        }
        if l.locale.is_none() && rng.random_bool(0.5) {
            body.as_object_mut().unwrap().remove("locale");
        }
        body.to_string()
    }

    /// A body that is not a login (or whose user id is not usable: a reject
    /// under any contract), of one of the kinds real traffic brings.
    fn invalid_body(&self, rng: &mut StdRng) -> String {
        let mut login = self.login(rng, 0);
        let user = self.users[login.user].clone();
        let login_with = |changes: serde_json::Value| {
            let mut body = serde_json::json!({"user_id": user, "app_version": "1.1", "device_type": "ios",
                "ip": "10.1.2.3", "locale": null, "device_id": "123-45-6789"});
            for (k, v) in changes.as_object().unwrap() {
                if v.is_null() {
                    body.as_object_mut().unwrap().remove(k);
                } else {
                    body[k] = v.clone();
                }
            }
            body.to_string()
        };
        match rng.random_range(0..8) {
            0 => "{\"user_id\": ".into(),
            // SQS refuses an empty body; blank is as close as it gets.
            1 => "  ".into(),
            2 => r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.into(),
            3 => {
                login.ip = "999.1.2.3".into();
                let mut body: serde_json::Value =
                    serde_json::from_str(&self.body(&login, rng)).expect("a body");
                body.as_object_mut().expect("an object").remove("user_id");
                body.to_string()
            }
            4 => login_with(serde_json::json!({"user_id": ["u"], "app_version": "v2"})),
            5 => login_with(serde_json::json!({"user_id": "u".repeat(200)})),
            6 => login_with(serde_json::json!({"user_id": "  ", "device_type": null})),
            _ => login_with(serde_json::json!({"user_id": 1.5, "ip": 167772160})),
        }
    }

    fn draw_operations(&mut self, rng: &mut StdRng) {
        let end = self.shape.seconds * 1000;
        // Quiet at both ends: the first second lets the environments warm
        // up, the last ones leave room for what is under way.
        let window =
            |rng: &mut StdRng| rng.random_range(1_000..end.saturating_sub(1_500).max(1_001));
        let count = |per_minute: f64, rng: &mut StdRng| -> usize {
            let mean = per_minute * end as f64 / 60_000.0;
            // At least one of each, so that every short soak has them all.
            (mean.floor() as usize + usize::from(rng.random_bool(mean.fract()))).max(1)
        };
        let mut ops: Vec<Event> = Vec::new();
        for _ in 0..count(6.0, rng) {
            ops.push(Event {
                at_ms: window(rng),
                op: Op::Maintain {
                    move_limit: if rng.random_bool(0.5) { 50 } else { 100_000 },
                },
            });
        }
        let first_send = self.first_send_of_users();
        for _ in 0..count(8.0, rng) {
            let at_ms = window(rng);
            let (user, when) = match rng.random_range(0..3) {
                0 => (
                    self.user_sent_before(at_ms.saturating_sub(2_000), rng),
                    ForgetWhen::Stored,
                ),
                1 => (self.user_sent_near(at_ms, rng), ForgetWhen::InFlight),
                _ => (
                    first_send
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.is_some_and(|t| t > at_ms + 500))
                        .map(|(u, _)| u)
                        .collect::<Vec<_>>()
                        .choose(rng)
                        .copied(),
                    ForgetWhen::NotYetSent,
                ),
            };
            if let Some(user) = user {
                ops.push(Event {
                    at_ms,
                    op: Op::Forget { user, when },
                });
            }
        }
        // Rotations far enough apart that one finishes before the next.
        let rotations = count(1.0, rng);
        let slot = end / rotations as u64;
        for i in 0..rotations as u64 {
            let at_ms = (i * slot + rng.random_range(slot / 8..slot / 2)).max(1_500);
            let kill_after_ms = rng.random_bool(0.5).then(|| rng.random_range(30..600));
            ops.push(Event {
                at_ms,
                op: Op::Rotate { kill_after_ms },
            });
            // What the re-key meets most often in a day is more likely here
            // (as buggify does): maintain moving rows out of the DEFAULT
            // partition mid-walk, an erasure during the re-key.
            if rng.random_bool(0.5) {
                ops.push(Event {
                    at_ms: at_ms + rng.random_range(0..400),
                    op: Op::Maintain {
                        move_limit: if rng.random_bool(0.5) { 50 } else { 100_000 },
                    },
                });
            }
            if rng.random_bool(0.5)
                && let Some(user) = self.user_sent_before(at_ms, rng)
            {
                ops.push(Event {
                    at_ms: at_ms + rng.random_range(0..600),
                    op: Op::Forget {
                        user,
                        when: ForgetWhen::Stored,
                    },
                });
            }
        }
        for _ in 0..count(1.5, rng) {
            ops.push(Event {
                at_ms: window(rng),
                op: Op::Outage {
                    ms: rng.random_range(300..4_000),
                    immediate: rng.random_bool(0.5),
                },
            });
        }
        for _ in 0..count(3.0, rng) {
            ops.push(Event {
                at_ms: window(rng),
                op: Op::KillBackends,
            });
        }
        for _ in 0..count(3.0, rng) {
            let env = rng.random_range(0..self.shape.envs);
            ops.push(Event {
                at_ms: window(rng),
                op: Op::KillEnv {
                    env,
                    down_ms: rng.random_range(100..2_000),
                },
            });
        }
        for _ in 0..count(1.5, rng) {
            ops.push(Event {
                at_ms: window(rng),
                op: Op::KillPoll {
                    down_ms: rng.random_range(100..2_000),
                },
            });
        }
        for _ in 0..count(3.0, rng) {
            let at_ms = window(rng);
            if let Some(user) = self.user_sent_before(at_ms.saturating_sub(1_000), rng) {
                ops.push(Event {
                    at_ms,
                    op: Op::Reveal { user },
                });
            }
        }
        for _ in 0..count(2.0, rng) {
            ops.push(Event {
                at_ms: window(rng),
                op: Op::Redrive,
            });
        }
        self.events.extend(ops);
    }

    /// When each user's first valid login is sent (None: never).
    fn first_send_of_users(&self) -> Vec<Option<u64>> {
        let mut first = vec![None; self.users.len()];
        for e in &self.events {
            if let Op::Send(batch) = &e.op {
                for m in batch {
                    if let Some(l) = &m.login {
                        first[l.user].get_or_insert(e.at_ms);
                    }
                }
            }
        }
        first
    }

    fn logins_between(&self, from: u64, to: u64) -> Vec<usize> {
        self.events
            .iter()
            .filter(|e| e.at_ms >= from && e.at_ms <= to)
            .filter_map(|e| match &e.op {
                Op::Send(b) => Some(b),
                _ => None,
            })
            .flatten()
            .filter_map(|m| m.login.as_ref().map(|l| l.user))
            .collect()
    }

    fn user_sent_before(&self, before: u64, rng: &mut StdRng) -> Option<usize> {
        self.logins_between(0, before).choose(rng).copied()
    }

    fn user_sent_near(&self, at: u64, rng: &mut StdRng) -> Option<usize> {
        self.logins_between(at.saturating_sub(50), at + 50)
            .choose(rng)
            .copied()
    }

    /// Messages sent, valid ones, operations by kind.
    pub fn counts(
        &self,
    ) -> (
        usize,
        usize,
        std::collections::BTreeMap<&'static str, usize>,
    ) {
        let mut kinds = std::collections::BTreeMap::new();
        let (mut sent, mut valid) = (0, 0);
        for e in &self.events {
            if let Op::Send(b) = &e.op {
                sent += b.len();
                valid += b.iter().filter(|m| m.login.is_some()).count();
            } else {
                *kinds.entry(e.op.kind()).or_default() += 1;
            }
        }
        (sent, valid, kinds)
    }

    /// The operations (not the sends) one per line, for a failure report.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            let what = match &e.op {
                Op::Send(_) => continue,
                Op::Forget { user, when } => format!("forget user #{user} ({when:?})"),
                Op::Maintain { move_limit } => {
                    format!("maintain (DEFAULT_MOVE_LIMIT={move_limit})")
                }
                Op::Rotate { kill_after_ms } => match kill_after_ms {
                    Some(ms) => format!("rotate-key, kill -9 after {ms} ms, run again"),
                    None => "rotate-key".into(),
                },
                Op::Outage { ms, immediate } => format!(
                    "database {} for {ms} ms",
                    if *immediate {
                        "crashed (stop -m immediate)"
                    } else {
                        "stopped (-m fast)"
                    }
                ),
                Op::KillEnv { env, down_ms } => {
                    format!("kill -9 environment {env}, cold start after {down_ms} ms")
                }
                Op::KillPoll { down_ms } => {
                    format!("kill -9 login-etl poll, started after {down_ms} ms")
                }
                Op::Reveal { user } => format!("reveal --user-id of user #{user}"),
                other => other.kind().to_owned(),
            };
            let _ = writeln!(out, "  {:>7.3} s  {what}", e.at_ms as f64 / 1000.0);
        }
        out
    }
}

fn draw_ip(rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        // IPv6, in a form that is not the canonical one now and then.
        0 => {
            let groups: Vec<u16> = (0..8)
                .map(|i| if i % 3 == 1 { 0 } else { rng.random() })
                .collect();
            let text = groups
                .iter()
                .map(|g| format!("{g:x}"))
                .collect::<Vec<_>>()
                .join(":");
            if rng.random_bool(0.5) {
                text.to_uppercase()
            } else {
                text
            }
        }
        // Loopback (never the database's 127.0.0.1) and first octet >= 224.
        1 => format!(
            "127.{}.{}.{}",
            rng.random_range(1..255),
            rng.random_range(0..255),
            rng.random_range(2..255)
        ),
        2 => format!(
            "{}.{}.{}.{}",
            rng.random_range(224..256),
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        _ => format!(
            "{}.{}.{}.{}",
            rng.random_range(11..224),
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
    }
}
