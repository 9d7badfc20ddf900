//! No operation beside ingest holds a write up for more than a moment: each
//! test runs one beside a writer that times every batch, on the real
//! PostgreSQL, each program as its granted role. (The sizes here keep the
//! tests short; benches/stalls.rs measures the same on realistic sizes.)

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use login_etl::grants::Role;
use login_etl::synth::{self, Options};
use login_etl::table::schema::MigrateOptions;
use login_etl::{BatchHandler, Deadline, SqsBatch};
use tokio_postgres::Client;

/// The longest any backend of `role` was seen waiting on a lock (a
/// statement's age while `pg_stat_activity` says it waits on a `Lock`),
/// sampled every 5 ms until `stop`. Unlike a write's wall time, a busy
/// machine's scheduling does not lengthen it.
fn lock_waits(
    admin: Client,
    role: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut longest = Duration::ZERO;
        while !stop.load(Ordering::SeqCst) {
            let waited: f64 = admin
                .query_one(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8 \
                     FROM pg_stat_activity WHERE usename = $1 AND wait_event_type = 'Lock'",
                    &[&role],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            longest = longest.max(Duration::from_secs_f64(waited));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        longest
    })
}

/// Writes a batch of 5 logins every 20 ms until `stop`; the slowest batch
/// after the first.
fn writer(
    h: Arc<BatchHandler>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Duration, usize)> {
    tokio::spawn(async move {
        let (mut slowest, mut batches, mut seed) = (Duration::ZERO, 0, 10_000);
        while !stop.load(Ordering::SeqCst) {
            let event = synth::event(&Options {
                count: 5,
                seed,
                sent_timestamp_ms: Utc::now().timestamp_millis(),
                ..Options::default()
            });
            seed += 1;
            let t = Instant::now();
            let outcome = h.handle(&SqsBatch::from(&event), Deadline::NONE).await;
            // The first is a cold start (it connects and reads the whole
            // erasure list: 60,000 keys in the switch's test), not a wait.
            if batches > 0 {
                slowest = slowest.max(t.elapsed());
            }
            let failed = outcome
                .map(|o| o.response.batch_item_failures.len())
                .unwrap_or(5);
            assert_eq!(failed, 0, "a write failed beside the operation");
            batches += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, batches)
    })
}

/// `migrate --prepare` run again (a rerun, or the next version's) while a
/// long transaction reads the erasure list: its statements that change
/// nothing take no lock, and any that does waits at most a moment at a
/// time, so ingest, which reads the list in every write, is not queued
/// behind a migration that waits for the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_beside_a_long_reader_does_not_queue_ingest_behind_it() {
    let db = TestDb::create().await;
    let owner = db.client().await;
    owner
        .batch_execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
                masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date);",
        )
        .await
        .unwrap();
    let config = login_etl::database::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| db.url.clone())
    })
    .unwrap();
    let prepare = MigrateOptions {
        prepare_only: true,
        premake_days: 7,
        ..MigrateOptions::default()
    };
    login_etl::startup::migrate_with(&config, &prepare)
        .await
        .expect("migrate --prepare");
    let ingest = db.role_url(Role::Ingest).await;
    let h = Arc::new(handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(h, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A report reading the erasure list for 3 s.
    let reader = {
        let c = db.client().await;
        tokio::spawn(async move {
            c.batch_execute(
                "BEGIN; SELECT count(*) FROM user_logins_erased; SELECT pg_sleep(3); COMMIT",
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    login_etl::startup::migrate_with(&config, &prepare)
        .await
        .expect("migrate --prepare again");
    let migrate_took = t.elapsed();
    reader.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let (slowest, batches) = writes.await.unwrap();
    println!(
        "migrate --prepare beside a 3 s reader: {migrate_took:?}; {batches} batches, the slowest {slowest:?}"
    );
    assert!(batches > 20, "the writer kept writing ({batches} batches)");
    assert!(
        slowest < Duration::from_millis(400),
        "a write waited {slowest:?} behind the migration"
    );
}

/// Every owner's function made again from its files (a migrate that
/// installs a new version of them all) while the function writes, vault
/// on: `CREATE OR REPLACE FUNCTION` takes no lock a write waits on, and the
/// privileges step writes nothing that is already so. A migrate of an
/// unchanged schema re-creates nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_functions_made_again_beside_ingest_hold_no_write_up() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let admin = db.client().await;
    let h = Arc::new(
        handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
            .await
            .with_vault(
                login_etl::privacy::vault::DataKey::new(&[0x42; 32], vec![1], "local").unwrap(),
            ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(h, stop.clone());
    let waits = lock_waits(db.client().await, db.role_name(Role::Ingest), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut longest, mut remade) = (Duration::ZERO, 0i64);
    for _ in 0..5 {
        // As if the files had all changed: no function carries its tag.
        admin
            .batch_execute(
                "DO $$ DECLARE f regprocedure; BEGIN \
                 FOR f IN SELECT oid FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
                   AND proname LIKE 'login\\_etl\\_%' LOOP \
                   EXECUTE format('COMMENT ON FUNCTION %s IS NULL', f); END LOOP; END $$",
            )
            .await
            .unwrap();
        let before: i64 = admin
            .query_one("SELECT count(*) FROM pg_proc WHERE obj_description(oid, 'pg_proc') LIKE 'login-etl:%'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(before, 0);
        let t = Instant::now();
        db.migrate().await;
        longest = longest.max(t.elapsed());
        remade = admin
            .query_one("SELECT count(*) FROM pg_proc WHERE obj_description(oid, 'pg_proc') LIKE 'login-etl:%'", &[])
            .await
            .unwrap()
            .get(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a migrate of the schema as it is: nothing to make.
    let xmin = "SELECT string_agg(xmin::text, ',' ORDER BY oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace";
    let before: String = admin.query_one(xmin, &[]).await.unwrap().get(0);
    db.migrate().await;
    let after: String = admin.query_one(xmin, &[]).await.unwrap().get(0);
    assert_eq!(
        before, after,
        "a migrate of an unchanged schema rewrote a function"
    );
    stop.store(true, Ordering::SeqCst);
    let (slowest, batches) = writes.await.unwrap();
    let waited = waits.await.unwrap();
    println!(
        "{remade} functions made again 5 times beside ingest: migrate at most {longest:?}; {batches} batches, \
         the slowest {slowest:?}, the longest lock wait of a write {waited:?}"
    );
    assert!(remade >= 40, "{remade} functions made again");
    assert!(batches > 10, "the writer kept writing ({batches} batches)");
    assert!(
        waited < Duration::from_millis(50),
        "a write waited {waited:?} on a lock beside the functions made again"
    );
}

/// The key switch of `rotate-key` beside ingest, with a vault and an
/// erasure list of realistic proportions: the switch holds its lock (the
/// one every write waits for) only for what cannot happen apart from it,
/// never for a scan of the vault or a rewrite of the erasure list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_switch_holds_no_write_up_however_large_the_vault_and_the_erasure_list() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let owner = db.client().await;
    owner
        .batch_execute(
            "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version) \
               SELECT 'ip', md5(g::text) || md5((g + 1)::text), 'k', '\\x000102030405060708090a0b'::bytea, '\\x00'::bytea, 1, 2 \
               FROM generate_series(1, 600000) g; \
             INSERT INTO user_logins_erased (user_key, key_version) \
               SELECT md5(g::text || 'e') || md5(g::text || 'f'), 1 FROM generate_series(1, 60000) g; \
             ANALYZE user_logins_pii_vault; ANALYZE user_logins_erased;",
        )
        .await
        .unwrap();
    let h = Arc::new(
        handler_with(&[
            ("DATABASE_URL", &ingest),
            ("MASKING_KEY", &common::keys::doc(&common::keys::K, 2)),
            ("ERASURE_KEY", &common::keys::doc(&common::keys::E, 2)),
        ])
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(h, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    let options = login_etl::privacy::rekey::RekeyOptions {
        max_chunks: Some(1),
        ..Default::default()
    };
    login_etl::privacy::rekey::arm(&owner, &common::keys::masker(2))
        .await
        .unwrap();
    let report = login_etl::privacy::rekey::rotate(
        &mut rotate,
        &common::keys::masker(2),
        common::keys::CALLER,
        options,
        &mut |_| {},
    )
    .await
    .expect("the switch and a first chunk");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (slowest, batches) = writes.await.unwrap();
    println!(
        "the switch beside ingest (600,000 vault entries, 60,000 erasures): held {:?}; {batches} batches, the slowest {slowest:?}",
        report.switch
    );
    // The switch's own time is what grew with the vault (788 ms here
    // before its fix, and a write waited 610 ms).
    assert!(
        report.switch < Duration::from_millis(100),
        "the switch held every write for {:?}",
        report.switch
    );
    // The writer shares two cores with the rest of `make test` (152 ms once
    // in a CI run, with the switch itself at 15 ms): the bound tells the
    // fixed switch from the one before it (610 ms), not a busy machine's
    // scheduling from an idle one's.
    assert!(
        slowest < Duration::from_millis(300),
        "a write waited {slowest:?} for the switch"
    );
}

/// `maintain` after days of failed runs, today's rows in the DEFAULT
/// partition and more arriving: it gives today a partition and moves the
/// day's rows there without holding the DEFAULT partition (where today's
/// writes go until then) for the length of the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_moves_a_day_out_of_the_default_partition_without_holding_writes_up() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let owner = db.client().await;
    let today = Utc::now().date_naive();
    // Today's partition never made (maintain failed for longer than its
    // premade days): the day so far waits in the DEFAULT partition.
    owner
        .batch_execute(&format!(
            "ALTER TABLE user_logins DETACH PARTITION user_logins_p{0}; DROP TABLE user_logins_p{0};
             INSERT INTO user_logins_default (user_id, device_type, masked_ip, masked_device_id, app_version,
                 create_date, message_id, app_version_text, sent_at, key_version)
               SELECT 'u' || g, 'ios', md5(g::text) || md5(g::text), md5(g::text) || md5(g::text), 1001000,
                 current_date, 'earlier-' || g, '1.1', now() - (g || ' ms')::interval, 1
               FROM generate_series(1, 300000) g;
             ANALYZE user_logins_default;",
            today.format("%Y%m%d")
        ))
        .await
        .unwrap();
    let h = Arc::new(handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(h, stop.clone());
    let waits = lock_waits(db.client().await, db.role_name(Role::Ingest), stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let maintainer = connect(&db.role_url(Role::Maintain).await).await;
    let t = Instant::now();
    let report = login_etl::table::maintain::run(
        &maintainer,
        &login_etl::table::maintain::MaintainOptions::default(),
    )
    .await
    .expect("maintain");
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (slowest, batches) = writes.await.unwrap();
    let lock_wait = waits.await.unwrap();
    println!(
        "maintain with 300,000 of today's rows in DEFAULT: {took:?} ({} moved); {batches} batches beside it, the slowest {slowest:?}, the longest lock wait {lock_wait:?}",
        report.moved_from_default() + report.drained_from_default
    );
    let counts = owner
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM user_logins_default), (SELECT count(*) FROM user_logins_p{}), \
                 (SELECT count(*) FROM user_logins), (SELECT count(DISTINCT (sent_at, message_id)) FROM user_logins)",
                today.format("%Y%m%d")
            ),
            &[],
        )
        .await
        .unwrap();
    let (default, partition, all, distinct): (i64, i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2), counts.get(3));
    assert_eq!(default, 0, "the DEFAULT partition is empty");
    assert_eq!(partition, all, "every row in today's partition");
    assert_eq!(all, distinct, "no row twice");
    assert_eq!(all, 300_000 + 5 * batches as i64, "no row lost");
    // No lock held for the move (647 ms before the fix, waiting on one
    // ATTACH's lock): only the swap's moment, 0-20 ms alone, up to 45 ms
    // beside two other test binaries. The writes' own time is also the two
    // cores shared with the drain's inserts and the rest of `make test`
    // (40-170 ms seen, once 360 ms in a CI run): a bound for a gross stall.
    assert!(
        lock_wait < Duration::from_millis(250),
        "a write waited {lock_wait:?} on a lock beside maintain"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a write waited {slowest:?} beside maintain"
    );
}
