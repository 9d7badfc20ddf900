//! Shared test helpers: throwaway databases, fixtures, independent HMAC.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lambda_events::event::sqs::SqsEvent;
use hmac::{Hmac, KeyInit, Mac};
use login_etl::database::settings::DbConfig;
use login_etl::table::privileges::Role;
use login_etl::{BatchHandler, Config, Deadline, SqsBatch, startup};
use sha2::Sha256;
use tokio_postgres::{Client, NoTls};

/// The masking key of the tests (32 bytes of hex).
pub const TEST_KEY: &str = "8f2c7e4a1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e";

/// Server the tests create their databases on; override with LOGIN_ETL_TEST_PG.
pub fn admin_url() -> String {
    std::env::var("LOGIN_ETL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The port of [`admin_url`]'s server (what a proxy or a pooler in front
/// of it forwards to), as tokio-postgres reads the URL.
pub fn admin_port() -> u16 {
    let config: tokio_postgres::Config = admin_url().parse().expect("LOGIN_ETL_TEST_PG parses");
    config.get_ports().first().copied().unwrap_or(5432)
}

/// `url` (a database of [`admin_url`]'s server) through `port` instead:
/// the proxy's or the pooler's in front of it.
pub fn through_port(url: &str, port: u16) -> String {
    let from = format!(":{}/", admin_port());
    assert!(
        url.contains(&from),
        "{url} does not name the server's port {from}: LOGIN_ETL_TEST_PG must be a URL with host:port"
    );
    url.replace(&from, &format!(":{port}/"))
}

/// The server's `server_version_num` (150000 and up for 15): what a test
/// that also runs on 13 and 14 (tests/pg-version) asks before a step the
/// older servers lack.
pub async fn server_version(client: &Client) -> i32 {
    client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0)
}

/// A database created for one test and dropped when this value is dropped,
/// with the login roles the test made on it (dropped with it).
///
/// `url` connects as the admin (a superuser): for setting up and checking,
/// never for running the function, which connects as the role
/// `login-etl grants --role ingest` describes ([`TestDb::ingest_url`]).
pub struct TestDb {
    pub name: String,
    pub url: String,
    roles: std::sync::Mutex<Vec<String>>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    pub async fn create() -> Self {
        let name = format!(
            "login_etl_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = admin_url();
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').expect("admin url has a database").0
        );
        Self {
            name,
            url,
            roles: Default::default(),
        }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Applies the schema as the admin, as `login-etl migrate` does.
    pub async fn migrate(&self) {
        let url = self.url.clone();
        let db = DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone()))
            .expect("a valid DATABASE_URL");
        startup::migrate(&db, login_etl::Profile::Full)
            .await
            .expect("the schema is applied");
    }

    /// The URL of a login role of this database holding exactly what
    /// `login-etl grants --role <role>` prints (created on first use; the
    /// schema must be migrated for the table grants).
    pub async fn role_url(&self, role: Role) -> String {
        let name = self.role_name(role);
        if make_role(&self.url, &name, role, None).await {
            self.roles.lock().unwrap().push(name.clone());
        }
        with_user(&self.url, &name)
    }

    /// The name of this database's login role for `role` (see [`Self::role_url`]).
    pub fn role_name(&self, role: Role) -> String {
        format!("{}_{}", self.name, role.as_str())
    }

    /// A login role with no privilege beyond connecting (dropped with the database).
    pub async fn bare_role_url(&self) -> String {
        let name = format!("{}_bare", self.name);
        self.client()
            .await
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN"))
            .await
            .expect("create the bare role");
        self.roles.lock().unwrap().push(name.clone());
        with_user(&self.url, &name)
    }

    /// A login role `name` with no privilege beyond connecting, dropped with
    /// the database (for a test that grants it what it wants).
    pub async fn bare_named_role(&self, name: &str) {
        self.client()
            .await
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN"))
            .await
            .expect("create the role");
        self.roles.lock().unwrap().push(name.to_owned());
    }

    /// Migrates (as the admin) and returns the URL of the ingest role: how
    /// the tests connect the function.
    pub async fn ingest_url(&self) -> String {
        self.migrate().await;
        self.role_url(Role::Ingest).await
    }
}

/// Applies the schema as `login-etl migrate` does, in one transaction
/// (without its lock or its partitions), on `client`'s database.
pub async fn apply_schema(client: &Client) {
    let schema = login_etl::table::schema::schema_sql(
        login_etl::table::schema::migration_sql(login_etl::Profile::Full),
        login_etl::Profile::Full,
    );
    client
        .batch_execute(&format!("BEGIN; {schema}; COMMIT"))
        .await
        .expect("the migration applies again");
}

/// Creates the login role `name` (unless it exists; true when created) on
/// the server of `admin_db_url` and applies, as that admin, exactly what
/// `login-etl grants --role <role>` prints.
pub async fn make_role(admin_db_url: &str, name: &str, role: Role, password: Option<&str>) -> bool {
    let admin = connect(admin_db_url).await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let password = password.map_or(String::new(), |p| format!(" PASSWORD '{p}'"));
        admin
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN{password}"))
            .await
            .expect("create the test role");
    }
    let grants = login_etl::grants::sql(role, name, "public", login_etl::Profile::Full).unwrap();
    admin
        .batch_execute(&grants)
        .await
        .unwrap_or_else(|e| panic!("the grants of {role:?} apply: {e}\n{grants}"));
    !exists
}

/// On a throwaway server (dropped with it): applies the schema as the admin
/// of `admin_db_url`, makes the ingest role `name`, and returns its URL.
pub async fn ingest_role_on(admin_db_url: &str, name: &str, password: Option<&str>) -> String {
    let url = admin_db_url.to_owned();
    let db = DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone()))
        .expect("a valid DATABASE_URL");
    startup::migrate(&db, login_etl::Profile::Full)
        .await
        .expect("the schema is applied");
    make_role(admin_db_url, name, Role::Ingest, password).await;
    let user = match password {
        Some(p) => format!("{name}:{p}"),
        None => name.to_owned(),
    };
    with_user(admin_db_url, &user)
}

/// `url` with its user replaced by `user` and no password (trust auth).
pub fn with_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap());
        // Drop runs inside a tokio runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = connect(&admin_url()).await;
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                for role in roles {
                    let _ = admin
                        .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
                        .await;
                }
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to the test PostgreSQL ({e}); is it running? set LOGIN_ETL_TEST_PG to reach it, see docs/testing.md")
        });
    tokio::spawn(conn);
    client
}

/// How long a wait on state may take before the test fails: a bound on a
/// hang, never a measure of speed (the state is polled every 10 ms and the
/// wait ends as soon as it holds).
pub const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until `holds` answers true (a lock waited on, a queue's count, a
/// log line): what a test observes instead of sleeping. Fails naming `what`
/// if it never does within [`STATE_WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !holds().await {
        assert!(
            started.elapsed() < STATE_WAIT,
            "never observed: {what} (waited {STATE_WAIT:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the boolean query `sql` (run on `client`, usually the admin's
/// over pg_locks or pg_stat_activity) answers true.
pub async fn wait_for_sql(client: &Client, sql: &str, what: &str) {
    wait_until(what, || async move {
        client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: {sql}: {e}"))
            .get::<_, bool>(0)
    })
    .await
}

/// A handler on `db` with the test key: the schema applied by the admin,
/// the function connected as the ingest role (`login-etl grants --role ingest`).
pub async fn handler(db: &TestDb) -> BatchHandler {
    let url = db.ingest_url().await;
    handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await
}

pub async fn handler_with(vars: &[(&str, &str)]) -> BatchHandler {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_lookup(|k| map.get(k).cloned()).expect("valid test config");
    startup::build(&config).await.expect("handler builds")
}

pub fn fixture_path(name: &str) -> String {
    format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub fn load_event(name: &str) -> SqsEvent {
    let text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture is an SQS event")
}

/// Each record's `expect` message attribute: `insert` or `reject:<code>`.
pub fn expectations(event: &SqsEvent) -> Vec<(String, String)> {
    event
        .records
        .iter()
        .map(|m| {
            let expect = m
                .message_attributes
                .get("expect")
                .and_then(|a| a.string_value.clone())
                .expect("fixture record has an expect attribute");
            (m.message_id.clone().unwrap(), expect)
        })
        .collect()
}

/// Message ids the fixture expects in `batchItemFailures`, in batch order, deduplicated.
pub fn expected_failures(event: &SqsEvent) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (id, e) in expectations(event) {
        if e.starts_with("reject:") && !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// Handles `event` and asserts that no record failed.
pub async fn handle_all_ok(h: &BatchHandler, event: &SqsEvent) {
    let resp = h
        .handle(&SqsBatch::from(event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect("the invocation succeeds");
    assert!(
        resp.batch_item_failures.is_empty(),
        "unexpected failures: {:?}",
        failures(&resp)
    );
}

pub fn failures(resp: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    resp.batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

/// Lowercase hex HMAC-SHA256, computed here independently of the crate's masking module.
pub fn hmac_hex(key_hex: &str, data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

pub async fn count_rows(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM user_logins", &[])
        .await
        .unwrap()
        .get(0)
}

/// The rows of one user.
pub async fn count_rows_of(client: &Client, user: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

pub async fn message_ids_in_table(client: &Client) -> Vec<String> {
    let mut ids: Vec<String> = client
        .query("SELECT message_id FROM user_logins", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    ids
}

/// EMF documents a handler wrote, in order (see [`captured_metrics`]).
pub type Captured = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// What a log subscriber writes, kept for the test to read
/// (`login_etl::logging::subscriber(move || capture.clone(), ...)`).
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Metrics (the default namespace and service, function name `login-etl`)
/// whose EMF lines go to a list the test reads instead of stdout: give them
/// to a handler with `BatchHandler::with_metrics`.
pub fn captured_metrics() -> (login_etl::ingest::metrics::Metrics, Captured) {
    use login_etl::emf::{DEFAULT_NAMESPACE, DEFAULT_SERVICE};
    use login_etl::ingest::metrics::Metrics;
    let docs: Captured = Default::default();
    let sink = docs.clone();
    let metrics = Metrics::new(DEFAULT_NAMESPACE, DEFAULT_SERVICE, "login-etl").with_output(
        move |line: &str| {
            let doc = serde_json::from_str(line).expect("each EMF line is one JSON document");
            sink.lock().unwrap().push(doc);
        },
    );
    (metrics, docs)
}

/// A TCP port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub mod keys;
pub mod moto;
pub mod oracle;
pub mod pg_server;
pub mod pgbouncer;
pub mod proxy;
pub mod runtime_api;
pub mod sqs;
pub mod turns;

/// Sets variables of this process's environment, which the SDK and the
/// configuration read. Safe only where this test is the process's one
/// (cargo-nextest runs each test in a process of its own: `make test`);
/// under a runner that shares a process between tests it refuses.
pub fn set_process_env<K: AsRef<str>, V: AsRef<str>>(vars: &[(K, V)]) {
    assert_eq!(
        std::env::var("NEXTEST_EXECUTION_MODE").as_deref(),
        Ok("process-per-test"),
        "this test sets the process environment: run it with cargo nextest (make test), which gives each test a process of its own"
    );
    for (k, v) in vars {
        // SAFETY: the process runs this one test (checked above), and the
        // test sets its variables before it starts the tasks that read them.
        unsafe { std::env::set_var(k.as_ref(), v.as_ref()) };
    }
}

/// Takes the message's `SentTimestamp` away and labels it as the function
/// must treat it: a valid body is rejected, since its day (part of the row
/// key) would be the day it was read; an invalid one keeps its reason (the
/// body is checked first).
pub fn without_sent_timestamp(m: &mut aws_lambda_events::event::sqs::SqsMessage) {
    m.attributes.remove("SentTimestamp");
    if let Some(expect) = m.message_attributes.get_mut("expect")
        && expect
            .string_value
            .as_deref()
            .is_some_and(|e| e.starts_with("insert"))
    {
        expect.string_value = Some("reject:no_sent_timestamp".into());
    }
}

/// Records, as the tables' owner (or an admin), that the deployment keeps
/// `days` days of logins (`login-etl migrate --retention-days`): the floor
/// the maintain role's functions hold their cutoff to.
pub async fn record_retention(owner: &tokio_postgres::Client, days: i32) {
    owner
        .execute("UPDATE user_logins_retention SET keep_days = $1", &[&days])
        .await
        .expect("the owner records the deployment's retention");
}

/// A gate inside every write of the rows: a statement trigger on
/// `user_logins_rows` that waits for the advisory lock `key`, which the
/// caller now holds, so a write is provably in flight (its locks taken)
/// until the caller releases it (`SELECT pg_advisory_unlock(key)`).
pub async fn install_write_gate(admin: &Client, key: i64) {
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_advisory_lock_shared({key}); PERFORM pg_advisory_unlock_shared({key}); RETURN NULL; END $$; \
             CREATE TRIGGER test_gate BEFORE INSERT ON user_logins_rows FOR EACH STATEMENT EXECUTE FUNCTION test_gate(); \
             SELECT pg_advisory_lock({key});"
        ))
        .await
        .unwrap();
}
