//! Helpers shared by the bench programs.
#![allow(dead_code)]

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

pub const KEY: &str = "8f2c7e4a1b9d3f6e0a5c8b2d7f4e1a9c3b6d0f8e2a5c7b9d1f4e6a8c0b2d4f6e";

/// True under `cargo bench`; under `cargo test --all-targets` the programs
/// run a small smoke pass instead, so they stay correct without costing CI time.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn admin_url() -> String {
    std::env::var("LOGIN_ETL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL for benchmarks (LOGIN_ETL_TEST_PG)");
    tokio::spawn(conn);
    client
}

/// A database for one bench run, dropped by `drop_db`.
pub async fn create_db(tag: &str) -> (String, String) {
    let name = format!("login_etl_bench_{tag}_{}", std::process::id());
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    (name, url)
}

pub async fn drop_db(name: &str) {
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
}

pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// A TCP port on 127.0.0.1 where nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
