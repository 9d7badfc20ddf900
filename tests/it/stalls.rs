//! No operation beside ingest holds a write up: each test holds the
//! operation where a write would have to wait behind it (an open
//! transaction, a lock it waits for, a move under way) and shows writes
//! committing while it is held, on the real PostgreSQL, each program as its
//! granted role. No wall-clock bound: a write that queued behind the
//! operation would wait until the test lets go of it, which it does only
//! after the writes; a timeout of a minute turns that hang into a failure.
//! How long each operation and each write takes is measured by
//! `benches/stalls.rs` at the sizes of a 200 M-a-day deployment.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::table::schema::MigrateOptions;
use login_etl::{BatchHandler, Deadline, SqsBatch};

/// The most a write may take before the test calls it queued behind the
/// operation (which is held until after the writes): a hang guard, not a
/// performance bound.
const HANG: Duration = Duration::from_secs(60);

/// One batch of 5 logins, every record committed.
async fn write(h: &BatchHandler, seed: u64, what: &str) {
    let event = synth::event(&Options {
        count: 5,
        seed,
        sent_timestamp_ms: Utc::now().timestamp_millis(),
        ..Options::default()
    });
    let outcome = tokio::time::timeout(HANG, h.handle(&SqsBatch::from(&event), Deadline::NONE))
        .await
        .unwrap_or_else(|_| panic!("a write queued behind {what}"))
        .expect("the batch");
    assert_eq!(
        outcome.response.batch_item_failures.len(),
        0,
        "a write failed beside {what}"
    );
}

/// `migrate` run again (a rerun, or the next version's) while a long
/// transaction reads the erasure list: its statements that change nothing
/// take no lock, and any that does waits at most a moment at a time, so
/// ingest, which reads the list in every write, is not queued behind a
/// migration that waits for the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_beside_a_long_reader_does_not_queue_ingest_behind_it() {
    let db = TestDb::create().await;
    db.migrate().await;
    let owner = db.client().await;
    let config = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| db.url.clone())
    })
    .unwrap();
    let options = MigrateOptions {
        premake_days: 7,
        ..MigrateOptions::default()
    };
    let ingest = db.role_url(Role::Ingest).await;
    let h = Arc::new(handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await);

    write(&h, 1, "nothing (the cold start)").await;
    // Something for the migration to mend that takes ACCESS EXCLUSIVE on
    // the erasure list (a default, as an older version would lack it).
    // (A function's recorded tag changed: the schema is not current, so
    // migrate applies it all again.)
    owner
        .batch_execute(
            "ALTER TABLE user_logins_erased ALTER COLUMN begun_in DROP DEFAULT;
             COMMENT ON FUNCTION login_etl_drop_detached() IS 'changed'",
        )
        .await
        .unwrap();
    // A report reading the erasure list, its transaction open until the
    // test ends it.
    let reader = db.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM user_logins_erased")
        .await
        .unwrap();
    let migrating =
        tokio::spawn(async move { login_etl::startup::migrate_with(&config, &options).await });
    // Until the migration has asked for a lock the reader holds.
    let admin = db.client().await;
    let asked = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE NOT l.granted AND a.datname = current_database()";
    tokio::time::timeout(HANG, async {
        while admin.query_one(asked, &[]).await.unwrap().get::<_, i64>(0) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the migration waits for the reader's lock");
    // Writes commit while the migration waits for the reader: it waits a
    // moment at a time (lock_timeout), never queued ahead of them for good.
    for seed in 2..12 {
        write(&h, seed, "migrate waiting for a reader").await;
    }
    assert!(
        !migrating.is_finished(),
        "the migration still waits for the reader"
    );
    reader.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(HANG, migrating)
        .await
        .expect("migrate ends once the reader does")
        .unwrap()
        .expect("migrate again");
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
    write(&h, 1, "nothing (the cold start)").await;
    // Every function made again, as a migrate that installs a new version
    // of them all does, in a transaction the test holds open.
    admin
        .batch_execute(
            "BEGIN; DO $$ DECLARE f regprocedure; BEGIN \
             FOR f IN SELECT oid FROM pg_proc WHERE pronamespace = 'public'::regnamespace \
               AND proname LIKE 'login\\_etl\\_%' LOOP \
               EXECUTE format('COMMENT ON FUNCTION %s IS NULL', f); END LOOP; END $$",
        )
        .await
        .unwrap();
    admin
        .batch_execute(&login_etl::table::schema::schema_sql(
            login_etl::table::schema::migration_sql(login_etl::Profile::Full),
            login_etl::Profile::Full,
        ))
        .await
        .unwrap();
    let remade: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE obj_description(oid, 'pg_proc') LIKE 'login-etl:%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(remade >= 40, "{remade} functions made again");
    // Writes commit while that transaction is open: it holds no lock a
    // write waits on.
    for seed in 2..12 {
        write(&h, seed, "the functions made again").await;
    }
    admin.batch_execute("COMMIT").await.unwrap();
    // And a migrate of the schema as it is: nothing to make.
    let xmin = "SELECT string_agg(xmin::text, ',' ORDER BY oid) FROM pg_proc WHERE pronamespace = 'public'::regnamespace";
    let before: String = admin.query_one(xmin, &[]).await.unwrap().get(0);
    db.migrate().await;
    let after: String = admin.query_one(xmin, &[]).await.unwrap().get(0);
    assert_eq!(
        before, after,
        "a migrate of an unchanged schema rewrote a function"
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
               FROM generate_series(1, 100000) g; \
             INSERT INTO user_logins_erased (user_key, key_version) \
               SELECT md5(g::text || 'e') || md5(g::text || 'f'), 1 FROM generate_series(1, 10000) g; \
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
    // The first write is the cold start: it reads the whole erasure list.
    write(&h, 1, "nothing (the cold start)").await;
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    let options = login_etl::privacy::rekey::RekeyOptions {
        max_chunks: Some(1),
        ..Default::default()
    };
    login_etl::privacy::rekey::arm(&owner, &common::keys::masker(2))
        .await
        .unwrap();
    // The switch and a first chunk, with writes going on beside them.
    let rotating = tokio::spawn(async move {
        login_etl::privacy::rekey::rotate(
            &mut rotate,
            &common::keys::masker(2),
            common::keys::CALLER,
            options,
            &mut |_| {},
        )
        .await
    });
    let mut seed = 2;
    while !rotating.is_finished() {
        write(&h, seed, "the key switch").await;
        seed += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = rotating
        .await
        .unwrap()
        .expect("the switch and a first chunk");
    // Under the new key, the next writes too (their keys re-read).
    for seed in seed..seed + 3 {
        write(&h, seed, "the key switch, after it").await;
    }
    // How long the switch holds its lock is the benchmark's to show
    // (benches/stalls.rs, the switch at 600,000 entries: ms, not the 788 ms
    // of its scan before the fix).
    println!(
        "the switch beside ingest (100,000 vault entries, 10,000 erasures): {:?}; {} writes beside the rotation",
        report.switch,
        seed - 2
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
            "ALTER TABLE user_logins_rows DETACH PARTITION user_logins_p{0}; DROP TABLE user_logins_p{0};
             INSERT INTO user_logins_default (user_id_text, device_type, masked_ip, masked_device_id, app_version,
                 message_id, message_id_text, app_version_text, sent_at, key_version)
               SELECT 'u' || g, 'ios', decode(md5(g::text) || md5(g::text), 'hex'),
                 decode(md5(g::text) || md5(g::text), 'hex'), 1001000, md5('earlier-' || g)::uuid, 'earlier-' || g,
                 '1.1', now() - (g || ' ms')::interval, 1
               FROM generate_series(1, 100000) g;
             ANALYZE user_logins_default;",
            today.format("%Y%m%d")
        ))
        .await
        .unwrap();
    let h = Arc::new(handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await);
    write(&h, 1, "nothing (the cold start)").await;
    let maintainer = connect(&db.role_url(Role::Maintain).await).await;
    // A gate in the move: maintain's own statements that insert into
    // user_logins_rows (the drain's chunks) wait for a lock the test holds
    // (without the drain's own 100 ms lock_timeout, or it would give up), so
    // the move is provably under way, holding what it holds, while the
    // day's writes go on; theirs pass the gate untouched.
    let maintain_pid: i32 = maintainer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    owner
        .batch_execute(&format!(
            "CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql SET lock_timeout = 0 AS $$ BEGIN \
               IF pg_backend_pid() = {maintain_pid} THEN PERFORM pg_advisory_lock_shared(4343); \
                 PERFORM pg_advisory_unlock_shared(4343); END IF; RETURN NULL; END $$; \
             CREATE TRIGGER test_gate BEFORE INSERT ON user_logins_rows FOR EACH STATEMENT EXECUTE FUNCTION test_gate(); \
             SELECT pg_advisory_lock(4343);"
        ))
        .await
        .unwrap();
    let maintaining = tokio::spawn(async move {
        login_etl::table::maintain::run(
            &maintainer,
            &login_etl::table::maintain::MaintainOptions::default(),
        )
        .await
    });
    let (m, o) = (&maintaining, &owner);
    wait_until("maintain's move waiting at the gate", || async move {
        m.is_finished()
            || o.query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted)",
                &[&maintain_pid],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    assert!(
        !maintaining.is_finished(),
        "maintain ended without moving a row through user_logins_rows"
    );
    // Today's writes while the move is held: each commits (before the fix,
    // one ATTACH held them all until the move ended; a write queued behind
    // the move waits until HANG and fails).
    let mut seed = 2u64;
    for _ in 0..3 {
        write(&h, seed, "maintain's move").await;
        seed += 1;
    }
    owner
        .batch_execute(
            "SELECT pg_advisory_unlock(4343); DROP TRIGGER test_gate ON user_logins_rows",
        )
        .await
        .unwrap();
    let report = maintaining.await.unwrap().expect("maintain");
    let batches = seed - 1;
    println!(
        "maintain with 100,000 of today's rows in DEFAULT ({} moved): 3 writes committed while its move was held",
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
    assert_eq!(all, 100_000 + 5 * batches as i64, "no row lost");
}
