//! One seed's run: a PostgreSQL server of its own, the schema made by the
//! migrate role and every other role granted exactly what `login-etl
//! grants` prints, the emulated AWS services, the function environments
//! and `login-etl poll` consuming one source queue, and the schedule's
//! operations run at their times, each as its own role. Then the drain
//! (faults over, every message handled, every erasure and re-key finished,
//! a last maintain) and the checks (check.rs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use login_etl::table::privileges::Role;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};

use super::aws::{self, Aws, Message};
use super::common::pg_server::{PgServer, ServerOptions};
use super::common::{connect, make_role, with_user};
use super::lambda::{self, Environment, Launch};
use super::output::{self, PiiSearch, Seen};
use super::schedule::{Op, Outgoing, Plan};

pub const SOURCE: &str = "soak-source";
pub const DLQ: &str = "soak-dlq";
/// How long the soak runs one `forget` again (on exit 75 or a failure
/// during a fault) before it calls it a violation.
const FORGET_PATIENCE: Duration = Duration::from_secs(20 * 60);

/// The source queue's visibility timeout: 6x the function's timeout and
/// the consumer's batch timeout, as the template sets it.
pub const VISIBILITY: u32 = 12;
/// maxReceiveCount of the source queue: above what the schedule's outages
/// cost a message (a few receives each, backed off up to 4 s).
pub const MAX_RECEIVES: u32 = 30;
const MASKING_SECRET: &str = "soak/masking-key";
const ERASURE_SECRET: &str = "soak/erasure-key";

/// A message as it was sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub out: Outgoing,
    /// For a redriven copy: the original's id (its key) and its sent time.
    pub key_id: String,
    pub key_sent_ms: i64,
    /// The body as sent (a copy's is its original's).
    pub body: String,
}

/// What an operation did, for the report and the checks.
#[derive(Debug, Default)]
pub struct Tally {
    pub runs: BTreeMap<&'static str, u64>,
    pub tempfail: u64,
    pub excused: u64,
    pub killed: u64,
}

/// One seed's world.
pub struct World {
    pub plan: Arc<Plan>,
    pub dir: PathBuf,
    pub pg: PgServer,
    pub db_url: String,
    pub urls: HashMap<&'static str, String>,
    pub aws: Aws,
    pub bin: PathBuf,
    pub pii: Arc<PiiSearch>,
    pub envs: Vec<Arc<Environment>>,
    poll: tokio::sync::Mutex<Option<Child>>,
    pub poll_seen: Arc<Mutex<Seen>>,
    pub ops_seen: Arc<Mutex<Seen>>,
    pub ledger: Mutex<BTreeMap<String, Sent>>,
    /// Fault windows (an open one has no end yet).
    faults: Mutex<Vec<(Instant, Option<Instant>)>>,
    pub violations: Mutex<Vec<String>>,
    pub erased: Mutex<BTreeSet<usize>>,
    pub masking_keys: Mutex<Vec<String>>,
    pub erasure_keys: Mutex<Vec<String>>,
    pub rotations: AtomicU64,
    rotating: tokio::sync::Mutex<()>,
    /// Successful reveals: (user, lines printed).
    pub reveals: Mutex<Vec<(usize, Vec<String>)>>,
    pub tally: Mutex<Tally>,
    pub started: Instant,
    db_up: tokio::sync::RwLock<()>,
    pub stop: Arc<AtomicBool>,
    pub sent: AtomicU64,
}

impl World {
    pub async fn build(plan: Plan, bin: PathBuf, dir: PathBuf) -> Arc<Self> {
        std::fs::create_dir_all(&dir).unwrap();
        let pg = tokio::task::spawn_blocking(|| PgServer::start(ServerOptions::default()))
            .await
            .unwrap();
        pg.psql("ALTER SYSTEM SET max_connections = 80");
        pg.stop();
        pg.start_again();
        pg.psql("CREATE DATABASE soak");
        let admin = pg.url("127.0.0.1", None);
        let db_url = format!("{}/soak", admin.rsplit_once('/').unwrap().0);
        let mut urls = HashMap::new();
        for role in [
            Role::Migrate,
            Role::Ingest,
            Role::Maintain,
            Role::Erase,
            Role::Rotate,
            Role::Reveal,
            Role::Audit,
        ] {
            let name = format!("soak_{}", role.as_str());
            if role == Role::Migrate {
                make_role(&db_url, &name, role, None).await;
            }
            urls.insert(role.as_str(), with_user(&db_url, &name));
        }
        let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x6b65_7973);
        let key = |rng: &mut StdRng| hex::encode(rng.random::<[u8; 32]>());
        let masking = vec![key(&mut rng)];
        let erasure = vec![key(&mut rng)];
        let aws = Aws::start().await;
        aws.create_queue(DLQ, 30, None);
        aws.create_queue(SOURCE, VISIBILITY, Some((DLQ, MAX_RECEIVES)));
        aws.put_secret(MASKING_SECRET, &doc(&masking));
        aws.put_secret(ERASURE_SECRET, &doc(&erasure));
        let pii = Arc::new(PiiSearch::new(
            plan.ips
                .iter()
                .chain(&plan.devices)
                .cloned()
                .chain(["10.1.2.3".into(), "123-45-6789".into()]),
        ));
        let world = Arc::new(Self {
            plan: Arc::new(plan),
            dir,
            pg,
            db_url,
            urls,
            aws,
            bin,
            pii,
            envs: Vec::new(),
            poll: tokio::sync::Mutex::new(None),
            poll_seen: Arc::default(),
            ops_seen: Arc::default(),
            ledger: Mutex::default(),
            faults: Mutex::default(),
            violations: Mutex::default(),
            erased: Mutex::default(),
            masking_keys: Mutex::new(masking),
            erasure_keys: Mutex::new(erasure),
            rotations: AtomicU64::new(0),
            rotating: tokio::sync::Mutex::new(()),
            reveals: Mutex::default(),
            tally: Mutex::default(),
            started: Instant::now(),
            db_up: tokio::sync::RwLock::new(()),
            stop: Arc::new(AtomicBool::new(false)),
            sent: AtomicU64::new(0),
        });
        // The schema, as the migrate role (the owner), then the others'
        // grants, exactly as `login-etl grants` prints them.
        // The deployment's retention recorded by the owner: maintain's
        // floor (RETENTION_DAYS, as the block exports it).
        let retention = world.plan.shape.retention_days.to_string();
        let out = world
            .command(
                &["migrate", "--profile", "full"],
                "migrate",
                &[("RETENTION_DAYS", retention)],
            )
            .await;
        assert!(out.0 == Some(0), "login-etl migrate failed: {}", out.2);
        // Days gone by: the partitions of the days just past retention,
        // made when they were within it, for maintain's retention to drop
        // (with the rows that land there until it does).
        let owner = connect(&world.urls["migrate"]).await;
        let today = chrono::Utc::now().date_naive();
        for back in 0..3 {
            let day =
                today - chrono::TimeDelta::days(i64::from(world.plan.shape.retention_days) + back);
            owner
                .execute("SELECT login_etl_ensure_partition($1)", &[&day])
                .await
                .expect("the owner makes a partition of a day past retention");
        }
        for role in [
            Role::Ingest,
            Role::Maintain,
            Role::Erase,
            Role::Rotate,
            Role::Reveal,
            Role::Audit,
        ] {
            make_role(
                &world.db_url,
                &format!("soak_{}", role.as_str()),
                role,
                None,
            )
            .await;
        }
        world
    }

    /// The environment every login-etl process of the soak shares.
    fn aws_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.aws.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "soak".into()),
            ("AWS_SECRET_ACCESS_KEY", "soak".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("PATH", std::env::var("PATH").unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The function's configuration (Lambda's and the template's).
    fn function_env(&self) -> Vec<(String, String)> {
        let mut env = self.aws_env();
        env.extend(
            [
                ("DATABASE_URL", self.urls["ingest"].clone()),
                ("MASKING_KEY_SECRET_ID", MASKING_SECRET.into()),
                ("ERASURE_KEY_SECRET_ID", ERASURE_SECRET.into()),
                ("VAULT_KMS_KEY_ID", aws::KMS_KEY_ARN.into()),
                ("DLQ_URL", self.aws.queue_url(DLQ)),
                ("BACKOFF_BASE_SECONDS", "1".into()),
                ("BACKOFF_MAX_SECONDS", "4".into()),
                ("DB_CONNECT_TIMEOUT_MS", "1000".into()),
                ("DB_STATEMENT_TIMEOUT_MS", "1500".into()),
                ("AWS_LAMBDA_FUNCTION_NAME", "login-etl".into()),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
                ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
                ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env
    }

    /// Starts the function environments (the first at TRACE: PII must stay
    /// out of every level; the others at WARN, as production filters) and
    /// `login-etl poll`, and their pollers.
    pub async fn start_ingest(self: &mut Arc<Self>) {
        let launch = Launch {
            bin: self.bin.clone(),
            env: self.function_env(),
            log_dir: self.dir.clone(),
            pii: self.pii.clone(),
        };
        let mut envs = Vec::new();
        for i in 0..self.plan.shape.envs {
            let level = if i == 0 { "TRACE" } else { "WARN" };
            envs.push(Environment::start(i, level, launch.clone()).await);
        }
        Arc::get_mut(self).expect("no other handle yet").envs = envs;
        for env in &self.envs {
            tokio::spawn(env.clone().poll(
                self.aws.clone(),
                SOURCE,
                VISIBILITY,
                self.plan.seed,
                self.stop.clone(),
            ));
        }
        self.start_poll().await;
    }

    async fn start_poll(&self) {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(
                self.function_env()
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("AWS_LAMBDA_") && k != "DLQ_URL"),
            )
            .env("RUST_LOG", "info")
            .args([
                "poll",
                "--queue-url",
                &self.aws.queue_url(SOURCE),
                "--concurrency",
                "2",
                "--batch-size",
                "50",
                "--batch-window",
                "1",
                "--visibility-timeout",
                &VISIBILITY.to_string(),
                "--batch-timeout",
                "2",
                "--grace-period",
                "3",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("login-etl poll starts");
        let log = self.dir.join("poll.log");
        output::collect(
            child.stdout.take().unwrap(),
            log.clone(),
            self.pii.clone(),
            "INFO",
            self.poll_seen.clone(),
        );
        output::collect(
            child.stderr.take().unwrap(),
            log,
            self.pii.clone(),
            "INFO",
            self.poll_seen.clone(),
        );
        *self.poll.lock().await = Some(child);
    }

    /// Runs `login-etl <args>` as `role` to its end, or kills it after
    /// `kill_after`; (exit code, stdout, stderr). Its stderr is searched for
    /// PII (stdout too, but for reveal's, which prints the values asked for).
    pub async fn command(
        &self,
        args: &[&str],
        role: &str,
        extra: &[(&str, String)],
    ) -> (Option<i32>, String, String) {
        self.command_killed(args, role, extra, None).await
    }

    async fn command_killed(
        &self,
        args: &[&str],
        role: &str,
        extra: &[(&str, String)],
        kill_after: Option<Duration>,
    ) -> (Option<i32>, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .envs(self.aws_env())
            .env("DATABASE_URL", &self.urls[role])
            .env("DB_CONNECT_TIMEOUT_MS", "2000")
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("the login-etl binary starts");
        let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let read = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut a, mut b) = (String::new(), String::new());
            let _ = tokio::join!(stdout.read_to_string(&mut a), stderr.read_to_string(&mut b));
            (a, b)
        });
        let status = match kill_after {
            Some(after) => match tokio::time::timeout(after, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    None
                }
            },
            None => child.wait().await.ok(),
        };
        let (out, err) = read.await.unwrap();
        let code = status.and_then(|s| s.code());
        {
            use std::io::Write as _;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("operations.log"))
                .unwrap();
            let _ = writeln!(
                log,
                "== {:.3} s: login-etl {} (as {role}) -> {code:?}",
                self.started.elapsed().as_secs_f64(),
                args.join(" ")
            );
            let _ = write!(log, "{err}");
            if args[0] != "reveal" {
                let _ = write!(log, "{out}");
            }
            let mut seen = self.ops_seen.lock().unwrap();
            let searched = if args[0] == "reveal" {
                err.clone()
            } else {
                format!("{out}\n{err}")
            };
            for (n, line) in searched.lines().enumerate() {
                if let Some(len) = self.pii.find(line) {
                    seen.pii
                        .push((format!("login-etl {}", args[0]), n + 1, len));
                }
            }
        }
        (code, out, err)
    }

    fn keys_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MASKING_KEY_SECRET_ID", MASKING_SECRET.into()),
            ("ERASURE_KEY_SECRET_ID", ERASURE_SECRET.into()),
        ]
    }

    fn fault_overlaps(&self, from: Instant, to: Instant) -> bool {
        let slack = Duration::from_millis(500);
        self.faults
            .lock()
            .unwrap()
            .iter()
            .any(|&(a, b)| a <= to + slack && b.is_none_or(|b| b + slack >= from))
    }

    /// Opens a fault window; [`Self::fault_over`] closes it.
    fn fault_begins(&self) -> usize {
        let mut faults = self.faults.lock().unwrap();
        faults.push((Instant::now(), None));
        faults.len() - 1
    }

    fn fault_over(&self, i: usize) {
        self.faults.lock().unwrap()[i].1 = Some(Instant::now());
    }

    /// A failed operation: excused when a fault overlapped it, else a violation.
    fn failed(&self, what: &str, from: Instant, code: Option<i32>, err: &str) -> bool {
        if self.fault_overlaps(from, Instant::now()) {
            self.tally.lock().unwrap().excused += 1;
            return true;
        }
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        self.violation(format!(
            "{what} failed with no fault beside it (exit {code:?}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
        false
    }

    pub fn violation(&self, text: String) {
        eprintln!("soak: VIOLATION: {text}");
        self.violations.lock().unwrap().push(text);
    }

    fn count(&self, kind: &'static str) {
        *self.tally.lock().unwrap().runs.entry(kind).or_default() += 1;
    }

    /// Runs the schedule's operations at their times, then waits for them.
    pub async fn run_schedule(self: &Arc<Self>) {
        let mut tasks = Vec::new();
        for (i, event) in self.plan.events.iter().enumerate() {
            let at = self.started + Duration::from_millis(event.at_ms);
            tokio::time::sleep_until(at.into()).await;
            let world = self.clone();
            match &event.op {
                Op::Send(_) => world.send(i),
                _ => tasks.push(tokio::spawn(async move { world.operate(i).await })),
            }
        }
        for t in tasks {
            t.await.expect("an operation task ends without panicking");
        }
    }

    fn send(&self, event: usize) {
        let Op::Send(batch) = &self.plan.events[event].op else {
            unreachable!()
        };
        let now = aws::now_ms();
        // An operator's redrive carries the copy's signed key; version 1 of
        // the masking key signs it, which every environment holds.
        let first_key = self.masking_keys.lock().unwrap()[0].clone();
        let signer = login_etl::privacy::masking::Masker::new(
            &login_etl::privacy::masking::MaskingKey::from_hex(&first_key, "soak").unwrap(),
        );
        let mut ledger = self.ledger.lock().unwrap();
        for out in batch {
            let (body, key_id, key_sent_ms, attributes) = match &out.copy_of {
                Some(original) => {
                    let o = &ledger[original];
                    let attrs = BTreeMap::from([
                        (
                            "source_message_id".to_owned(),
                            ("String".to_owned(), o.key_id.clone()),
                        ),
                        (
                            "source_sent_timestamp".to_owned(),
                            ("String".to_owned(), o.key_sent_ms.to_string()),
                        ),
                        (
                            "source_signature".to_owned(),
                            (
                                "String".to_owned(),
                                signer.redrive_signature(
                                    &o.key_id,
                                    &o.key_sent_ms.to_string(),
                                    &o.body,
                                ),
                            ),
                        ),
                        (
                            "rejection_code".to_owned(),
                            ("String".to_owned(), "soak.redrive".to_owned()),
                        ),
                    ]);
                    (o.body.clone(), o.key_id.clone(), o.key_sent_ms, attrs)
                }
                None => {
                    let sent = now - i64::from(out.days_ago) * 86_400_000;
                    (out.body.clone(), out.id.clone(), sent, BTreeMap::new())
                }
            };
            let sent_ms = if out.copy_of.is_some() {
                now
            } else {
                key_sent_ms
            };
            let mut m = Message::new(out.id.clone(), body.clone(), sent_ms);
            m.attributes = attributes;
            self.aws.send(SOURCE, m);
            ledger.insert(
                out.id.clone(),
                Sent {
                    out: out.clone(),
                    key_id,
                    key_sent_ms,
                    body,
                },
            );
        }
        self.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    async fn operate(self: Arc<Self>, event: usize) {
        let op = self.plan.events[event].op.clone();
        self.count(op.kind());
        match op {
            Op::Send(_) => unreachable!(),
            Op::Maintain { move_limit } => self.maintain(move_limit).await,
            Op::Forget { user, .. } => self.forget(user).await,
            Op::Rotate { kill_after_ms } => {
                self.rotate(kill_after_ms.map(Duration::from_millis)).await
            }
            Op::Outage { ms, immediate } => {
                let _held = self.db_up.write().await;
                let fault = self.fault_begins();
                let mode = if immediate { "immediate" } else { "fast" };
                self.pg_ctl(&["stop", "-m", mode, "-w", "-t", "30"]).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.pg_ctl(&["start", "-w", "-t", "30"]).await;
                self.fault_over(fault);
            }
            Op::KillBackends => {
                let _up = self.db_up.read().await;
                let fault = self.fault_begins();
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE datname = current_database() AND pid <> pg_backend_pid() \
                             AND backend_type = 'client backend' AND usename <> current_user",
                            &[],
                        )
                        .await;
                }
                self.fault_over(fault);
            }
            Op::KillEnv { env, down_ms } => {
                let env = &self.envs[env];
                env.kill().await;
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                env.restart().await;
            }
            Op::KillPoll { down_ms } => {
                if let Some(mut child) = self.poll.lock().await.take() {
                    let _ = child.kill().await;
                }
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                self.start_poll().await;
            }
            Op::Reveal { user } => {
                let user_id = self.plan.users[user].clone();
                let from = Instant::now();
                let (code, out, err) = self
                    .command(
                        &["reveal", "--user-id", &user_id],
                        "reveal",
                        &[("VAULT_KMS_KEY_ID", aws::KMS_KEY_ARN.into())],
                    )
                    .await;
                match code {
                    Some(0) => self
                        .reveals
                        .lock()
                        .unwrap()
                        .push((user, out.lines().map(str::to_owned).collect())),
                    // Nothing of theirs stored (yet, or any more).
                    Some(3) => {}
                    _ => {
                        self.failed("reveal", from, code, &err);
                    }
                }
            }
            Op::Redrive => {
                self.aws.redrive(DLQ, SOURCE);
            }
        }
    }

    pub async fn maintain(&self, move_limit: u64) {
        let from = Instant::now();
        let retention = self.plan.shape.retention_days.to_string();
        let (code, _, err) = self
            .command(
                &["maintain"],
                "maintain",
                &[
                    ("RETENTION_DAYS", retention),
                    ("DEFAULT_MOVE_LIMIT", move_limit.to_string()),
                ],
            )
            .await;
        if code != Some(0) {
            self.failed("maintain", from, code, &err);
        }
    }

    /// `forget` until it finishes (exit 75: run again, as the runbook says).
    /// Exit 75 lasts as long as a re-key, and a re-key killed by faults again
    /// and again reads its table from the first page each time: minutes on
    /// a long run's table, hence a deadline rather than a count.
    pub async fn forget(&self, user: usize) {
        let user_id = self.plan.users[user].clone();
        let env = vec![("ERASURE_KEY_SECRET_ID", ERASURE_SECRET.to_owned())];
        let until = Instant::now() + FORGET_PATIENCE;
        while Instant::now() < until {
            let from = Instant::now();
            let (code, _, err) = self
                .command(&["forget", "--user-id", &user_id], "erase", &env)
                .await;
            match code {
                Some(0) => {
                    self.erased.lock().unwrap().insert(user);
                    return;
                }
                Some(75) => self.tally.lock().unwrap().tempfail += 1,
                _ => {
                    self.failed("forget", from, code, &err);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.violation(format!(
            "forget of user #{user} never finished (exit 75 or failures for {} s)",
            FORGET_PATIENCE.as_secs()
        ));
    }

    /// A version appended to both secrets, then rotate-key (killed once,
    /// when the schedule says) until it finishes.
    async fn rotate(&self, kill_after: Option<Duration>) {
        let _one = self.rotating.lock().await;
        {
            let mut m = self.masking_keys.lock().unwrap();
            // A version per rotation that finished: one that did not (a
            // violation already) is run again, not stacked on. The keys
            // are drawn by version, never twice the same.
            if m.len() as u64 == 1 + self.rotations.load(Ordering::SeqCst) {
                let mut rng = StdRng::seed_from_u64(
                    self.plan.seed
                        ^ (m.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        ^ 0x726f_7461,
                );
                m.push(hex::encode(rng.random::<[u8; 32]>()));
                self.aws.put_secret(MASKING_SECRET, &doc(&m));
                let mut e = self.erasure_keys.lock().unwrap();
                e.push(hex::encode(rng.random::<[u8; 32]>()));
                self.aws.put_secret(ERASURE_SECRET, &doc(&e));
            }
        }
        // Small chunks, so that a re-key lasts long enough to meet the
        // other operations, growing with the table so that a long run's
        // re-key still ends between two faults (each rerun walks every
        // page again, skipping the rows already moved).
        let pages = (2 + self.sent.load(Ordering::Relaxed) / 10_000).to_string();
        // Every other version (the first included) in two jobs side by side
        // (`--jobs 2`), its reruns too; the schedule stays the seed's.
        let jobs = if self.rotations.load(Ordering::SeqCst).is_multiple_of(2) {
            "2"
        } else {
            "1"
        };
        // The owner arms it (the rotate role alone starts nothing); a
        // rerun of a rotation under way needs none.
        let (code, _, err) = self
            .command(&["rotate-key", "--arm"], "migrate", &self.keys_env())
            .await;
        if code != Some(0) && !err.contains("newest version is") {
            self.failed("rotate-key --arm", Instant::now(), code, &err);
        }
        let mut kill = kill_after;
        for _ in 0..60 {
            let from = Instant::now();
            let (code, _, err) = self
                .command_killed(
                    &["rotate-key", "--chunk-pages", &pages, "--jobs", jobs],
                    "rotate",
                    &self.keys_env(),
                    kill.take(),
                )
                .await;
            match code {
                Some(0) => {
                    self.rotations.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                // maintain drained a swapped-out DEFAULT partition: later.
                Some(75) => self.tally.lock().unwrap().tempfail += 1,
                None => self.tally.lock().unwrap().killed += 1,
                _ => {
                    self.failed("rotate-key", from, code, &err);
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.violation("rotate-key never finished".into());
    }

    /// Ends the faults' effects and lets every message be handled: the
    /// source queue empty (or `limit` over), then a last maintain.
    pub async fn drain(&self, limit: Duration) -> bool {
        for env in &self.envs {
            env.restart().await;
        }
        if self
            .poll
            .lock()
            .await
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            self.start_poll().await;
        }
        let until = Instant::now() + limit;
        let drained = loop {
            if self.aws.depth(SOURCE).0 == 0 {
                break true;
            }
            if Instant::now() >= until {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.maintain(100_000).await;
        drained
    }

    /// Stops the pollers, the environments and the consumer (SIGTERM: it
    /// finishes its batches).
    pub async fn stop_ingest(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(mut child) = self.poll.lock().await.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                self.violation("login-etl poll did not exit within 10 s of SIGTERM".into());
                let _ = child.kill().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        for env in &self.envs {
            env.kill().await;
        }
        // Let the output readers reach the end of what was written.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// `pg_ctl` on the soak's server, without blocking the runtime.
    async fn pg_ctl(&self, args: &[&str]) {
        let status = tokio::process::Command::from(self.pg.ctl_command(args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !status.as_ref().is_ok_and(|s| s.success()) {
            self.violation(format!("pg_ctl {} failed: {status:?}", args.join(" ")));
        }
    }

    pub async fn admin(&self) -> tokio_postgres::Client {
        connect(&self.db_url).await
    }

    pub fn progress(&self) -> String {
        let (depth, in_flight) = self.aws.depth(SOURCE);
        let dlq = self.aws.depth(DLQ).0;
        let t = self.tally.lock().unwrap();
        let ops: u64 = t.runs.values().sum();
        let invocations: u64 = self
            .envs
            .iter()
            .map(|e| e.counts.invocations.load(Ordering::Relaxed))
            .sum();
        format!(
            "{:>5.1} s: sent {}, queued {depth} ({in_flight} in flight), DLQ {dlq}, invocations {invocations}, operations {ops} (rotations done {}, forgets done {})",
            self.started.elapsed().as_secs_f64(),
            self.sent.load(Ordering::Relaxed),
            self.rotations.load(Ordering::Relaxed),
            self.erased.lock().unwrap().len(),
        )
    }

    /// Each environment's index, level, poller counts and batches written
    /// by COPY.
    pub fn lambda_env_counts(&self) -> Vec<(usize, &'static str, &lambda::Counts, usize)> {
        self.envs
            .iter()
            .map(|e| (e.index, e.level, &e.counts, e.seen.lock().unwrap().copied))
            .collect()
    }
}

/// A key secret's document.
fn doc(keys: &[String]) -> String {
    serde_json::json!({ "versions": keys }).to_string()
}
