//! Helpers shared by the bench programs.
#![allow(dead_code)]

use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use login_etl::contract::LoginRow;
use login_etl::ingest::record;
use login_etl::ingest::sink::{CHUNK, COPY_HEADER, COPY_SQL, encode_row};
use login_etl::privacy::masking::Masker;
use login_etl::synth::{self, Options};
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

/// The rows by binary COPY, encoded and sent in chunks as the function's
/// COPY sends them (`login_etl::ingest::sink::encode_row`, `CHUNK`).
pub async fn copy_rows(client: &tokio_postgres::Client, rows: &[LoginRow<'_>]) {
    copy_rows_into(client, "user_logins_rows", rows).await
}

/// [`copy_rows`] into `table`, a table of `user_logins_rows`'s columns.
pub async fn copy_rows_into(client: &tokio_postgres::Client, table: &str, rows: &[LoginRow<'_>]) {
    let sql = COPY_SQL.replacen("user_logins_rows", table, 1);
    let sink = client.copy_in_unnamed::<Bytes>(sql.as_str()).await.unwrap();
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(CHUNK + 4096);
    buf.put_slice(COPY_HEADER);
    for r in rows {
        encode_row(&mut buf, r).unwrap();
        if buf.len() >= CHUNK {
            sink.send(buf.split().freeze()).await.unwrap();
        }
    }
    buf.put_i16(-1);
    sink.send(buf.split().freeze()).await.unwrap();
    sink.as_mut().finish().await.unwrap();
}

/// A generated batch as SQS delivers it: without the `expect` attribute the
/// generator adds for tests.
pub fn bench_event(count: usize, seed: u64) -> SqsEvent {
    bench_event_with_defects(count, seed, 0)
}

/// [`bench_event`] with every `defective_every`-th record a login with a
/// defect real apps send (0: none).
pub fn bench_event_with_defects(count: usize, seed: u64, defective_every: usize) -> SqsEvent {
    let mut event = synth::event(&Options {
        count,
        seed,
        defective_every,
        ..Options::default()
    });
    event
        .records
        .iter_mut()
        .for_each(|m| m.message_attributes.clear());
    event
}

/// The rows of a batch of valid records; with `BENCH_FULL=1` each carries
/// its user's tag, as a full-profile function writes it
/// (`BatchKeys::admit`, with an empty erasure list).
pub fn rows_of<'b>(batch: &'b login_etl::SqsBatch, masker: &Masker) -> Vec<LoginRow<'b>> {
    let keys = login_etl::privacy::keys::BatchKeys {
        versions: login_etl::privacy::keys::Versions::at(masker.version()),
        erased: Default::default(),
        masker: masker.clone(),
        tags: std::env::var("BENCH_FULL").is_ok_and(|v| v == "1"),
    };
    batch
        .records()
        .map(|m| {
            let mut row = record::transform(m.message_id.as_deref().unwrap(), m, masker).unwrap();
            assert!(keys.admit(&mut row), "nobody is erased");
            row
        })
        .collect()
}

/// `BEGIN; INSERT INTO user_logins_rows (...) VALUES (...), ...; COMMIT`
/// with the rows as literals, as the function stores them (the contract's
/// column list): one simple query, one round trip, three statements.
pub fn bare_insert(rows: &[LoginRow<'_>]) -> String {
    use login_etl::contract::columns::{canonical_uuid, message_uuid, uuid_text, version_text};
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let opt = |s: Option<&str>| s.map_or("NULL".into(), lit);
    let uuid = |u: [u8; 16]| {
        let h = hex::encode(u);
        format!(
            "'{}-{}-{}-{}-{}'",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    };
    let token = |t: Option<&login_etl::contract::Token>| {
        t.map_or("NULL".into(), |t| format!("'\\x{}'", t.as_str()))
    };
    let values: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "('{}', {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                r.sent_at.to_rfc3339(),
                r.user_tag.map_or("NULL".into(), |t| t.to_string()),
                r.app_version.map_or("NULL".into(), |v| v.to_string()),
                r.key_version,
                uuid(message_uuid(r.message_id).0),
                canonical_uuid(&r.user_id).map_or("NULL".into(), |u| uuid(u.0)),
                token(r.masked_ip.as_ref()),
                token(r.masked_device_id.as_ref()),
                opt(r.device_type.as_deref()),
                opt(r.locale.as_deref()),
                opt(version_text(r)),
                opt(uuid_text(&r.user_id)),
                opt(uuid_text(r.message_id)),
            )
        })
        .collect();
    format!(
        "BEGIN; INSERT INTO user_logins_rows (sent_at, user_tag, app_version, key_version, message_id, user_id, \
         masked_ip, masked_device_id, device_type, locale, app_version_text, user_id_text, message_id_text) \
         VALUES {}; COMMIT",
        values.join(", ")
    )
}
