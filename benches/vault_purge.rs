//! `make bench-scale` [2/2]: what `maintain`'s retention of the PII vault
//! costs as the vault grows, in one run on one CPU.
//!
//! For each size (`BENCH_VAULT_ENTRIES`, default `2000000,20000000`): a
//! vault of that many entries loaded by SQL `generate_series` (one in a
//! thousand past retention, the rest seen in the last three weeks), then
//! `maintain` with `RETENTION_DAYS=30`, timed, with the vault's heap and
//! index page accesses it made (pg_statio, before and after each run):
//! 1. the run that purges what is due, through the index on `last_seen`;
//! 2. the next run, with nothing newly due;
//! 3. the same with the index dropped: the page walk every hourly run made
//!    before it (and still makes where `migrate` has not built the index).
//!
//! Under `cargo test` it runs a smoke pass of 20,000 entries.

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use login_etl::database::settings::DbConfig;
use login_etl::table::maintain::{self, MaintainOptions};
use tokio_postgres::Client;

/// Entries loaded per statement (progress between them).
const LOAD_CHUNK: u64 = 1_000_000;

/// The vault's heap and index page accesses (hits and reads) so far, as
/// the statistics hold them.
async fn accesses(admin: &Client) -> (i64, i64) {
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let row = admin
        .query_one(
            "SELECT coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0), \
                    coalesce(idx_blks_read, 0) + coalesce(idx_blks_hit, 0) \
             FROM pg_statio_user_tables WHERE relid = 'user_logins_pii_vault'::regclass",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// One `maintain` run with 30 days' retention on a connection of its own:
/// its wall time, the entries it purged, its page accesses.
async fn maintain_run(admin: &Client, url: &str) -> (Duration, i64, (i64, i64)) {
    admin
        .batch_execute("UPDATE user_logins_retention SET keep_days = 30")
        .await
        .unwrap();
    let before = accesses(admin).await;
    let client = connect(url).await;
    let t = Instant::now();
    let report = maintain::run(
        &client,
        &MaintainOptions {
            retention_days: Some(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let took = t.elapsed();
    // Its counts reach the shared statistics when it goes idle after this.
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    let after = accesses(admin).await;
    (
        took,
        report.vault_entries_purged,
        (after.0 - before.0, after.1 - before.1),
    )
}

#[tokio::main]
async fn main() {
    let full = full_run();
    let sizes: Vec<u64> = if full {
        std::env::var("BENCH_VAULT_ENTRIES")
            .unwrap_or_else(|_| "2000000,20000000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        vec![20_000]
    };
    println!(
        "| vault entries | heap pages | run | entries purged | heap page accesses | index page accesses | seconds |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for entries in sizes {
        let (name, url) = create_db("vault_purge").await;
        let db = {
            let url = url.clone();
            DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap()
        };
        login_etl::startup::migrate(&db, login_etl::Profile::Full)
            .await
            .unwrap();
        let admin = connect(&url).await;
        admin
            .batch_execute("ALTER TABLE user_logins_pii_vault SET (autovacuum_enabled = false)")
            .await
            .unwrap();
        let t = Instant::now();
        let mut loaded = 0;
        while loaded < entries {
            let to = (loaded + LOAD_CHUNK).min(entries);
            admin
                .batch_execute(&format!(
                    "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen) \
                     SELECT CASE WHEN g % 2 = 0 THEN 'ip' ELSE 'device_id' END, encode(sha256(g::text::bytea), 'hex'), 'k', \
                            '\\x000102030405060708090a0b'::bytea, '\\x00112233445566778899aabbccddeeff0011223344'::bytea, 1, 2, \
                            CASE WHEN g % 1000 = 0 THEN current_date - 400 ELSE current_date - (g % 21)::int END \
                     FROM generate_series({}, {to}) g",
                    loaded + 1
                ))
                .await
                .unwrap();
            loaded = to;
            if full {
                eprintln!(
                    "   loaded {loaded} of {entries} vault entries ({:.0} s)",
                    t.elapsed().as_secs_f64()
                );
            }
        }
        admin
            .batch_execute("VACUUM ANALYZE user_logins_pii_vault")
            .await
            .unwrap();
        admin
            .batch_execute("CHECKPOINT; SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        admin.batch_execute("SELECT 1").await.unwrap();
        let pages: i64 = admin
            .query_one(
                "SELECT pg_relation_size('user_logins_pii_vault') / current_setting('block_size')::int8",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let row = |run: &str, (took, purged, (heap, index)): (Duration, i64, (i64, i64))| {
            println!(
                "| {entries} | {pages} | {run} | {purged} | {heap} | {index} | {:.2} |",
                took.as_secs_f64()
            );
        };
        let due = maintain_run(&admin, &url).await;
        assert_eq!(due.1 as u64, entries / 1000, "the entries due are purged");
        row("1. through the index: what is due", due);
        // What autovacuum does between two hourly runs.
        admin
            .batch_execute("VACUUM user_logins_pii_vault")
            .await
            .unwrap();
        let nothing = maintain_run(&admin, &url).await;
        assert_eq!(nothing.1, 0);
        row("2. through the index: nothing due", nothing);
        admin
            .batch_execute("DROP INDEX user_logins_pii_vault_last_seen")
            .await
            .unwrap();
        let walk = maintain_run(&admin, &url).await;
        assert_eq!(walk.1, 0);
        row("3. page walk (no index): nothing due", walk);
        drop(admin);
        drop_db(&name).await;
    }
}
