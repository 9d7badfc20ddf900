//! Shared test helpers: throwaway databases, fixtures, independent HMAC.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lambda_events::event::sqs::SqsEvent;
use hmac::{Hmac, KeyInit, Mac};
use login_etl::{BatchHandler, Config, startup};
use sha2::Sha256;
use tokio_postgres::{Client, NoTls};

/// The masking key of the tests (32 bytes of hex).
pub const TEST_KEY: &str = "8f2c7e4a1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e";

/// Server the tests create their databases on; override with LOGIN_ETL_TEST_PG.
pub fn admin_url() -> String {
    std::env::var("LOGIN_ETL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database created for one test and dropped when this value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
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
        Self { name, url }
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
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
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to the test PostgreSQL ({e}); is it running? see README")
        });
    tokio::spawn(conn);
    client
}

/// A handler on `url` with the test key, schema applied.
pub async fn handler(url: &str) -> BatchHandler {
    handler_with(&[
        ("DATABASE_URL", url),
        ("MASKING_KEY", TEST_KEY),
        ("RUN_MIGRATIONS", "true"),
    ])
    .await
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
    let resp = h.handle(event).await.expect("the invocation succeeds");
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

/// A TCP port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub mod moto;
pub mod pg_server;
pub mod pgbouncer;
pub mod proxy;
pub mod runtime_api;
