//! The partitioned `user_logins` against the real PostgreSQL, as the roles
//! `login-etl grants` creates: the function as the ingest role, `maintain`
//! as the maintain role, `forget` as the erase role.
//!
//! - rows land in their day's partition; a day without one in the DEFAULT
//!   partition, which `maintain` empties into a partition made for it;
//! - a redelivery and a DLQ copy redriven as a new message land on the
//!   row of the original;
//! - `maintain` premakes and drops by retention, twice at once;
//! - an unpartitioned table with rows is converted while its old writer
//!   writes, and messages stored before are found again after;
//! - `forget` beside running ingest does not stall it.

use crate::common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use chrono::{NaiveDate, TimeDelta, Utc};
use common::sqs::string_attribute;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::table::maintain::{MaintainOptions, MaintainReport};
use login_etl::table::privileges::Role;
use login_etl::table::schema::MigrateOptions;
use login_etl::{Deadline, Outcome, SqsBatch};

/// A batch of `count` valid logins sent at `sent_ms`, fresh ids per `seed`.
fn logins(count: usize, seed: u64, sent_ms: i64) -> SqsEvent {
    synth::event(&Options {
        count,
        seed,
        invalid_every: 0,
        sent_timestamp_ms: sent_ms,
        ..Options::default()
    })
}

fn ms(day: NaiveDate) -> i64 {
    day.and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Rows per partition, by name.
async fn homes(db: &TestDb) -> Vec<(String, i64)> {
    db.client()
        .await
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM user_logins_rows GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn maintain_as(url: &str, options: MaintainOptions) -> MaintainReport {
    let client = connect(url).await;
    login_etl::table::maintain::run(&client, &options)
        .await
        .expect("maintain as the maintain role")
}

async fn partition_names(db: &TestDb) -> BTreeSet<String> {
    login_etl::table::partitions::partitions(&db.client().await)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect()
}

fn partition_of(day: NaiveDate) -> String {
    format!("user_logins_p{}", day.format("%Y%m%d"))
}

async fn handle(h: &login_etl::BatchHandler, event: &SqsEvent) -> login_etl::BatchSummary {
    let (resp, summary) = h
        .handle(&SqsBatch::from(event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .expect("the batch is handled");
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    summary
}

#[tokio::test]
async fn rows_land_in_their_days_partition_and_the_default_one_until_maintain_moves_them() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let maintainer = db.role_url(Role::Maintain).await;
    // migrate made yesterday to a week ahead.
    let names = partition_names(&db).await;
    for offset in -1..=7 {
        assert!(
            names.contains(&partition_of(today() + TimeDelta::days(offset))),
            "{names:?}"
        );
    }

    let now = logins(40, 1, Utc::now().timestamp_millis());
    assert_eq!(handle(&h, &now).await.inserted, 40);
    assert_eq!(homes(&db).await, [(partition_of(today()), 40)]);

    // A day nobody made a partition for (a past one: maintain makes none
    // past its premake horizon, insiders' far_dated_rows_...): caught by
    // the DEFAULT partition.
    let far = today() - TimeDelta::days(20);
    let late = logins(25, 2, ms(far));
    assert_eq!(handle(&h, &late).await.inserted, 25);
    assert!(
        homes(&db)
            .await
            .contains(&("user_logins_default".into(), 25))
    );

    let report = maintain_as(&maintainer, MaintainOptions::default()).await;
    assert_eq!(report.moved_from_default(), 25, "{report:?}");
    assert_eq!(report.default_rows, 0);
    assert!(report.created.iter().any(|m| m.name == partition_of(far)));
    let emf = report.emf("LoginEtl", "login-etl", "INFO", 0);
    assert_eq!(emf["RowsMovedFromDefault"], 25);
    assert_eq!(
        homes(&db).await,
        [(partition_of(far), 25), (partition_of(today()), 40)]
    );
    // Delivered again after the move: the key is found in the new partition.
    let again = handle(&h, &late).await;
    assert_eq!((again.inserted, again.duplicates), (0, 25));
    assert_eq!(count_rows(&db.client().await).await, 65);

    // The function's own write transaction, held open by a gate (a
    // statement trigger that waits for an advisory lock the test holds),
    // has locked the parent alone before it writes, not every partition: a
    // plain LOCK TABLE in sink::tx::begin_sql would lock all ten.
    let client = db.client().await;
    install_write_gate(&client, 4343).await;
    let writer = {
        let url = db.ingest_url().await;
        let event = logins(10, 4, Utc::now().timestamp_millis());
        tokio::spawn(async move {
            let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
            handle(&h, &event).await.inserted
        })
    };
    wait_for_sql(
        &client,
        "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND NOT granted",
        "the writer waiting on the advisory lock",
    )
    .await;
    let tables: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             WHERE (c.oid = 'user_logins_rows'::regclass OR c.relispartition) AND l.granted \
             AND l.pid = (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4343 AND NOT granted) \
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (The statement trigger fires before rows are routed: no partition yet.)
    assert_eq!(
        tables,
        ["user_logins_rows"],
        "the parent alone, whatever the number of partitions"
    );
    client
        .batch_execute("SELECT pg_advisory_unlock(4343)")
        .await
        .unwrap();
    assert_eq!(writer.await.unwrap(), 10);
}

#[tokio::test]
async fn a_redelivery_and_a_redriven_dlq_copy_land_on_the_originals_row() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    // Sent just before midnight, so that the copy arrives the next day.
    let sent = ms(today()) + 11 * 3_600_000 + 3_599_000;
    let original = logins(30, 3, sent);
    assert_eq!(handle(&h, &original).await.inserted, 30);
    let again = handle(&h, &original).await;
    assert_eq!((again.inserted, again.duplicates), (0, 30));

    // What a DLQ redrive delivers: new ids, a new SentTimestamp (the next
    // day), the original's id and time in the attributes the function put
    // on the copy, signed (src/ingest/dlq.rs).
    let masker = common::keys::test_masker();
    let mut redriven = original.clone();
    for (i, m) in redriven.records.iter_mut().enumerate() {
        let id = m.message_id.clone().unwrap();
        let ts = m.attributes["SentTimestamp"].clone();
        m.message_id = Some(format!("redriven-{i}"));
        m.attributes
            .insert("SentTimestamp".into(), (sent + 86_400_000).to_string());
        m.message_attributes
            .insert("source_message_id".into(), string_attribute(&id));
        m.message_attributes.insert(
            "source_signature".into(),
            string_attribute(&masker.redrive_signature(&id, &ts, m.body.as_deref().unwrap())),
        );
        m.message_attributes
            .insert("source_sent_timestamp".into(), string_attribute(&ts));
    }
    let copy = handle(&h, &redriven).await;
    assert_eq!((copy.inserted, copy.duplicates), (0, 30));
    assert_eq!(count_rows(&db.client().await).await, 30);
    // Without the signature it would have been new rows on the next day.
    for m in &mut redriven.records {
        m.message_attributes.remove("source_signature");
    }
    assert_eq!(
        handle(&h, &redriven).await.inserted,
        30,
        "the check above can fail"
    );
}

#[tokio::test]
async fn maintain_premakes_and_drops_by_retention_and_two_runs_at_once_agree() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let maintainer = db.role_url(Role::Maintain).await;
    let owner = db.client().await;
    // Forty days of history, a day each, with rows.
    for back in 1..=40 {
        let day = today() - TimeDelta::days(back);
        login_etl::table::partitions::ensure_partition(&owner, day)
            .await
            .unwrap();
        handle(&h, &logins(3, 100 + back as u64, ms(day))).await;
    }
    // Rows past retention waiting in the DEFAULT partition are expired too.
    owner
        .batch_execute(
            "INSERT INTO user_logins_default (user_id_text, message_id_text, sent_at) \
             VALUES ('x', 'old', TIMESTAMPTZ '2001-01-01 12:00Z')",
        )
        .await
        .unwrap();
    let before = count_rows(&owner).await;
    record_retention(&owner, 30).await;
    let options = MaintainOptions {
        premake_days: 10,
        retention_days: Some(30),
        ..MaintainOptions::default()
    };
    let (a, b) = tokio::join!(
        maintain_as(&maintainer, options),
        maintain_as(&maintainer, options)
    );
    let dropped: Vec<&String> = a.dropped.iter().chain(&b.dropped).map(|(n, _)| n).collect();
    let unique: BTreeSet<&String> = dropped.iter().copied().collect();
    assert_eq!(
        dropped.len(),
        11,
        "each of days 30..=40 back dropped once: {dropped:?}"
    );
    assert_eq!(unique.len(), 11);
    assert_eq!(a.purged_from_default + b.purged_from_default, 1);
    let made: Vec<&String> = a
        .created
        .iter()
        .chain(&b.created)
        .map(|m| &m.name)
        .collect();
    assert_eq!(made.len(), 3, "days 8..=10 ahead, once each: {made:?}");
    let names = partition_names(&db).await;
    assert!(!names.contains(&partition_of(today() - TimeDelta::days(30))));
    assert!(names.contains(&partition_of(today() - TimeDelta::days(29))));
    assert!(names.contains(&partition_of(today() + TimeDelta::days(10))));
    assert_eq!(count_rows(&owner).await, before - 11 * 3 - 1);
    // Idempotent: a third run finds nothing to do.
    let c = maintain_as(&maintainer, options).await;
    assert!(c.created.is_empty() && c.dropped.is_empty(), "{c:?}");
    // The maintain role can do nothing but call the functions, and through
    // them drop nothing of today or later, nor borrow the owner's rights.
    let m = connect(&maintainer).await;
    let e = m
        .batch_execute("SELECT login_etl_drop_partition('user_logins_default', '9999-12-31')")
        .await
        .expect_err("a cutoff after today");
    assert_eq!(e.code().map(|c| c.code()), Some("LE010"), "{e}");
    // Nor inside the retention the owner recorded (30 days), though the
    // role asks for less (a stolen credential deleting all but today).
    let e = m
        .batch_execute(
            "SELECT login_etl_drop_partition(name, current_date) FROM login_etl_partitions()",
        )
        .await
        .expect_err("a cutoff inside the recorded retention");
    assert_eq!(e.code().map(|c| c.code()), Some("LE010"), "{e}");
    let said = e.as_db_error().unwrap().message();
    assert!(said.contains("RETENTION_DAYS"), "{said}");
    connect(&maintainer)
        .await
        .batch_execute(
            "CREATE TEMP TABLE user_logins_default (create_date point); \
             SELECT login_etl_purge_default(current_date - 30)",
        )
        .await
        // A `point` column makes `create_date < cutoff` fail if the function
        // ever resolved the name to this table.
        .expect("the owner's functions ignore the caller's temporary tables");
    for sql in [
        "DROP TABLE user_logins_default",
        "DELETE FROM user_logins",
        "CREATE TABLE x (a int)",
        "ALTER TABLE user_logins_rows DETACH PARTITION user_logins_default",
    ] {
        let e = m.batch_execute(sql).await.expect_err(sql);
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e}");
    }
}

/// One retention: where `RETENTION_DAYS` and the owner's record disagree,
/// maintain applies the longer, says which won and the command that makes
/// them one, and never fails for it (the hourly run used to raise LE010);
/// doctor reports the same. Agreeing again, the warning goes.
#[tokio::test]
async fn a_retention_that_disagrees_with_the_record_applies_the_longer_and_fails_no_run() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let maintainer = db.role_url(Role::Maintain).await;
    let owner = db.client().await;
    for back in 1..=12 {
        let day = today() - TimeDelta::days(back);
        login_etl::table::partitions::ensure_partition(&owner, day)
            .await
            .unwrap();
        handle(&h, &logins(2, 900 + back as u64, ms(day))).await;
    }
    let kept = |back: i64| partition_of(today() - TimeDelta::days(back));
    let examine = || async {
        login_etl::table::doctor::examine(
            &owner,
            today(),
            Some(5),
            login_etl::table::maintain::DEFAULT_PREMAKE_DAYS,
        )
        .await
        .expect("doctor runs")
        .findings
        .into_iter()
        .filter(|f| f.check == "retention")
        .map(|f| format!("{}: {}", f.problem, f.fix))
        .collect::<Vec<_>>()
    };
    // A new database records "every login": RETENTION_DAYS=5 deletes nothing.
    let options = |days| MaintainOptions {
        retention_days: days,
        ..MaintainOptions::default()
    };
    let run = maintain_as(&maintainer, options(Some(5))).await;
    assert!(run.dropped.is_empty(), "{run:?}");
    let said = run.retention_disagrees.expect("the disagreement reported");
    for part in [
        "RETENTION_DAYS=5",
        "(every login)",
        "RETENTION_DAYS=5 login-etl migrate",
    ] {
        assert!(said.contains(part), "{part} in: {said}");
    }
    assert!(partition_names(&db).await.contains(&kept(12)));
    let found = examine().await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("RETENTION_DAYS=5 login-etl migrate"),
        "{found:?}"
    );
    // The owner keeps 10 days: RETENTION_DAYS=5 deletes only past 10.
    record_retention(&owner, 10).await;
    let run = maintain_as(&maintainer, options(Some(5))).await;
    let dropped: BTreeSet<String> = run.dropped.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        dropped,
        [kept(10), kept(11), kept(12)].into(),
        "past 10 days only"
    );
    assert!(
        run.retention_disagrees
            .unwrap()
            .contains("the longer, 10 days, is applied")
    );
    // Unset keeps everything, which is longer: nothing more goes.
    let run = maintain_as(&maintainer, options(None)).await;
    assert!(run.dropped.is_empty(), "{run:?}");
    assert!(
        run.retention_disagrees
            .unwrap()
            .contains("RETENTION_DAYS is unset")
    );
    // Agreeing: nothing said, and the next day past them goes.
    record_retention(&owner, 5).await;
    let run = maintain_as(&maintainer, options(Some(5))).await;
    assert_eq!(run.retention_disagrees, None);
    assert_eq!(run.dropped.len(), 5, "days 5 to 9 back: {run:?}");
    assert!(partition_names(&db).await.contains(&kept(4)));
    assert_eq!(examine().await, Vec::<String>::new());
}

/// Retention is never held off silently: a session that keeps a lock on a
/// partition past retention (a reader's transaction left open) makes
/// maintain's detach give up after its tries, and the error names that
/// session (pid, role, the lock, since when where the maintain role may see
/// it) and the statements that end it and keep it from coming back.
#[tokio::test]
async fn a_session_holding_off_retention_is_named_with_its_fix() {
    let db = TestDb::create().await;
    db.ingest_url().await; // migrated
    let owner = db.client().await;
    let maintainer = db.role_url(Role::Maintain).await;
    let day = today() - TimeDelta::days(40);
    login_etl::table::partitions::ensure_partition(&owner, day)
        .await
        .unwrap();
    record_retention(&owner, 30).await;
    let reader = connect(&db.role_url(Role::Reader).await).await;
    let pid: i32 = reader
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    reader
        .batch_execute(&format!(
            "BEGIN; SELECT count(*) FROM user_logins WHERE create_date = '{day}'"
        ))
        .await
        .unwrap();
    let options = MaintainOptions {
        retention_days: Some(30),
        ..MaintainOptions::default()
    };
    let err = login_etl::table::maintain::run(&connect(&maintainer).await, &options)
        .await
        .expect_err("the detach waits for the reader's lock");
    let said = err.to_string();
    // Another role's transaction start is hidden from the maintain role:
    // the holders are listed, and the fix says how to find the oldest.
    for part in [
        format!("held now by pid {pid} (role {}", db.role_name(Role::Reader)),
        format!("AccessShareLock on {}", partition_of(day)),
        "its transaction's start not visible to this role".to_owned(),
        "SELECT pg_terminate_backend(<its pid>)".to_owned(),
        format!(
            "IN DATABASE \"{}\" SET idle_in_transaction_session_timeout",
            db.name
        ),
    ] {
        assert!(said.contains(&part), "{part} in: {said}");
    }
    // Ended, the next run detaches it.
    reader.batch_execute("ROLLBACK").await.unwrap();
    let run = maintain_as(&maintainer, options).await;
    assert_eq!(run.dropped.len(), 1, "{run:?}");
}

/// The upgrade an existing deployment walks (docs/deploy.md, "Upgrading an
/// existing table"): its unpartitioned table with rows (from before
/// login-etl, and from a login-etl of before partitions), `migrate
/// --prepare` (the rows copied, the triggers mirroring the old writer's
/// inserts), then `migrate` for the cutover while the old writer writes,
/// each write in a transaction with a 2 s lock timeout and none tried
/// again; then this version's function, which finds the messages stored
/// before as duplicates.
#[tokio::test]
async fn an_unpartitioned_table_is_converted_while_the_old_writer_writes_and_redeliveries_stay_single()
 {
    let db = TestDb::create().await;
    let owner = db.client().await;
    // The table as an early version left it, with 5,000 rows from before it.
    owner
        .batch_execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), masked_ip varchar(256),
                masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date,
                message_id varchar(128), app_version_text varchar(32), sent_at timestamptz);
             INSERT INTO user_logins (user_id, create_date)
               SELECT 'old-' || g, DATE '2026-01-01' + (g % 300) FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    // Messages that version wrote a minute ago, to be delivered again later.
    let now = Utc::now().timestamp_millis();
    let written_before = logins(50, 7, now - 60_000);
    for m in &written_before.records {
        let sent: i64 = m.attributes["SentTimestamp"].parse().unwrap();
        let sent = chrono::DateTime::from_timestamp_millis(sent).unwrap();
        owner
            .execute(
                "INSERT INTO user_logins (user_id, create_date, message_id, sent_at) VALUES ('before', $1, $2, $3)",
                &[&sent.date_naive(), &m.message_id.as_deref().unwrap(), &sent],
            )
            .await
            .unwrap();
    }
    let config = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
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
    let copied: i64 = owner
        .query_one("SELECT count(*) FROM user_logins_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, 5_050, "--prepare copied every row");

    // The old writer runs through the cutover.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds_done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, rounds_done) = (Arc::clone(&stop), Arc::clone(&rounds_done));
        let mut client = db.client().await;
        tokio::spawn(async move {
            let mut inserted = 0;
            while !stop.load(Ordering::SeqCst) {
                let tx = client.transaction().await.unwrap();
                tx.batch_execute("SET LOCAL lock_timeout = '2s'")
                    .await
                    .unwrap();
                let round = rounds_done.load(Ordering::SeqCst);
                inserted += tx
                    .execute(
                        "INSERT INTO user_logins (user_id, create_date, message_id, sent_at)
                         VALUES ('writer', current_date, 'writer-' || $1::text, now())",
                        &[&(round as i64).to_string()],
                    )
                    .await
                    .expect("no write waits on the cutover past its lock timeout");
                tx.commit().await.unwrap();
                rounds_done.fetch_add(1, Ordering::SeqCst);
            }
            inserted
        })
    };
    let rounds = |n: usize| {
        let (done, w) = (Arc::clone(&rounds_done), &writer);
        move || {
            let done = Arc::clone(&done);
            async move { w.is_finished() || done.load(Ordering::SeqCst) >= n }
        }
    };
    wait_until("a write before the cutover", rounds(1)).await;
    let target = login_etl::startup::migrate(&config, login_etl::Profile::Full)
        .await
        .expect("the cutover");
    assert!(target.contains("(applied)"), "{target}");
    let after = rounds_done.load(Ordering::SeqCst) + 2;
    wait_until("a write wholly after the cutover", rounds(after)).await;
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    let rounds = rounds_done.load(Ordering::SeqCst) as u64;
    assert_eq!(
        inserted, rounds,
        "every write of the old writer landed once"
    );

    // Nothing lost; the rows of before in one partition up to the bound.
    assert_eq!(count_rows(&owner).await, 5_000 + 50 + rounds as i64);
    let legacy: i64 = owner
        .query_one(
            "SELECT count(*) FROM user_logins_legacy WHERE user_id_text LIKE 'old-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy, 5_000);
    // This version's function: the messages stored before are found again.
    let h = handler(&db).await;
    let again = handle(&h, &written_before).await;
    assert_eq!((again.inserted, again.duplicates), (0, 50));
    assert_eq!(handle(&h, &logins(5, 9, now)).await.inserted, 5);
}

/// `forget` beside running ingest: no write waits on the erasure's
/// transaction while it deletes. The user's deletes are slowed to 1 s in
/// all by a trigger, which at each deleted row records how many sessions
/// wait on a lock that transaction holds (`pg_blocking_pids`): when forget
/// held its lock across the delete, as it once did, every write then
/// waited on it, and the record shows them.
#[tokio::test]
async fn forget_beside_running_ingest_holds_no_write_for_more_than_a_moment() {
    let db = TestDb::create().await;
    let h = Arc::new(handler(&db).await);
    let owner = db.client().await;
    let user = "user-to-forget";
    owner
        .batch_execute(&format!(
            "INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, app_version, \
               app_version_text, create_date, message_id, sent_at) \
             SELECT CASE WHEN g % 1500 = 0 THEN '{user}' ELSE 'u' || g END, 'ios', md5(g::text) || md5(g::text), \
               md5((-g)::text) || md5((-g)::text), 1001000, '1.1', current_date, 'preload-' || g, \
               now() - interval '2 hours' + g * interval '1 ms' \
             FROM generate_series(1, 30000) g;
             CREATE TABLE waits_during_delete (blocked bigint NOT NULL);
             CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog, public AS $$
               BEGIN
                 PERFORM pg_sleep(0.05);
                 INSERT INTO public.waits_during_delete SELECT count(*) FROM pg_stat_activity
                   WHERE pg_backend_pid() = ANY (pg_blocking_pids(pid));
                 RETURN OLD;
               END $$;
             CREATE TRIGGER slow_delete BEFORE DELETE ON user_logins_rows
               FOR EACH ROW WHEN (OLD.user_id_text = '{user}') EXECUTE FUNCTION slow_delete();"
        ))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (h, stop, batches) = (Arc::clone(&h), Arc::clone(&stop), Arc::clone(&batches));
        tokio::spawn(async move {
            let mut seed = 500;
            while !stop.load(Ordering::SeqCst) {
                let done = handle(&h, &logins(20, seed, Utc::now().timestamp_millis())).await;
                assert_eq!(done.inserted, 20);
                batches.fetch_add(1, Ordering::SeqCst);
                seed += 1;
            }
        })
    };
    // Ingest is running before forget starts.
    while batches.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let masker = login_etl::privacy::masking::Masker::new(
        &login_etl::privacy::masking::MaskingKey::from_hex(TEST_KEY, "test").unwrap(),
    );
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let before = batches.load(Ordering::SeqCst);
    let done = login_etl::privacy::forget::forget(
        &mut eraser,
        user,
        masker.users(),
        "arn:aws:sts::123456789012:assumed-role/erasers/test",
    )
    .await
    .expect("forget as the erase role");
    let beside = batches.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(done.rows, 20);
    assert!(beside >= 3, "ingest ran beside forget: {beside} batches");
    let waits: Vec<i64> = owner
        .query("SELECT blocked FROM waits_during_delete", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(waits.len(), 20, "one record per deleted row");
    assert!(
        waits.iter().all(|&w| w == 0),
        "writes waited on forget's transaction while it deleted: {waits:?}"
    );
    let left = count_rows_of(&owner, user).await;
    assert_eq!(left, 0);
}

/// The partition an upgrade of an unpartitioned table made
/// (`user_logins_legacy`, every day from MINVALUE up to its bound) goes by retention as a whole, like any
/// partition: detached and then dropped, so that its rows are neither kept
/// out of sight of `forget` and `rotate-key` nor reported dropped while
/// they stay on disk.
#[tokio::test]
async fn the_converted_table_past_retention_is_detached_and_dropped() {
    let db = TestDb::create().await;
    db.migrate().await;
    let owner = db.client().await;
    // What the upgrade leaves (src/table/schema/narrow.rs), its history ending
    // 2026-06-01: a partition from MINVALUE.
    owner
        .batch_execute(
            "CREATE TABLE user_logins_legacy (LIKE user_logins_rows INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
             ALTER TABLE user_logins_legacy ADD CONSTRAINT user_logins_legacy_bounds
                 CHECK (sent_at < '2026-06-01 00:00+00');
             INSERT INTO user_logins_legacy SELECT n.* FROM generate_series(1, 500) g CROSS JOIN LATERAL
                 login_etl_narrow_row('old-msg-' || g, 'old-' || g, NULL, NULL, NULL, NULL, NULL, NULL,
                     DATE '2026-01-01' + (g % 150), NULL, NULL, NULL, NULL, NULL) AS n;
             ALTER TABLE user_logins_rows ATTACH PARTITION user_logins_legacy
                 FOR VALUES FROM (MINVALUE) TO ('2026-06-01 00:00+00');",
        )
        .await
        .unwrap();
    record_retention(&db.client().await, 30).await;
    let report = maintain_as(
        &db.role_url(Role::Maintain).await,
        MaintainOptions {
            retention_days: Some(30),
            ..MaintainOptions::default()
        },
    )
    .await;
    assert!(
        report
            .dropped
            .iter()
            .any(|(name, _)| name == "user_logins_legacy"),
        "reported dropped: {:?}",
        report.dropped
    );
    let left: Option<String> = owner
        .query_one("SELECT to_regclass('user_logins_legacy')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, None,
        "the converted table is gone from disk, not only detached"
    );
    assert_eq!(count_rows(&owner).await, 0);
}

/// A DEFAULT partition too large to move under its lock is swapped out and
/// drained back; until the drain ends its rows are out of sight, so
/// `forget` during it puts the user on the list and exits "not yet" (75)
/// instead of reporting an erasure that missed rows, and the rerun after
/// the drain deletes them all.
#[tokio::test]
async fn forget_during_a_drain_of_the_default_partition_finishes_after_it() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let maintainer = db.role_url(Role::Maintain).await;
    let user = "5f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b";
    // Two days without a partition, one in four of the rows the user's.
    let mut old = logins(400, 61, ms(today() - TimeDelta::days(3)));
    for m in old.records.iter_mut().step_by(4) {
        let mut body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["user_id"] = user.into();
        m.body = Some(body.to_string());
    }
    handle(&h, &old).await;
    handle(&h, &logins(300, 62, ms(today() - TimeDelta::days(4)))).await;
    let owner = db.client().await;
    assert_eq!(count_rows_of(&owner, user).await, 100);

    // maintain swaps the DEFAULT partition out (700 rows > a limit of 50)
    // and stops before its drain, as a run cut short would.
    let m = connect(&maintainer).await;
    let swapped: bool = m
        .query_one("SELECT login_etl_swap_default('{}')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(swapped);
    assert_eq!(
        count_rows_of(&owner, user).await,
        0,
        "the drained rows are out of sight"
    );

    let masker = login_etl::privacy::masking::Masker::new(
        &login_etl::privacy::masking::MaskingKey::from_hex(TEST_KEY, "test").unwrap(),
    );
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let caller = "arn:aws:sts::123456789012:assumed-role/erasers/test";
    let e = login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), caller)
        .await
        .expect_err("not finished while the drain is under way");
    assert!(
        matches!(e, login_etl::privacy::reveal::RevealError::DrainUnderWay),
        "{e}"
    );
    // Listed already: a new login of theirs is not stored.
    let mut again = logins(4, 63, Utc::now().timestamp_millis());
    for m in &mut again.records {
        let mut body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["user_id"] = user.into();
        m.body = Some(body.to_string());
    }
    assert_eq!(handle(&h, &again).await.erased, 4);

    // The next maintain drains; the rows come back; forget then erases them.
    let report = maintain_as(
        &maintainer,
        MaintainOptions {
            default_move_limit: 50,
            ..MaintainOptions::default()
        },
    )
    .await;
    assert_eq!(report.drained_from_default, 700, "{report:?}");
    assert_eq!(
        count_rows_of(&owner, user).await,
        100,
        "back in their partitions"
    );
    let done = login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), caller)
        .await
        .expect("forget after the drain");
    assert_eq!(done.rows, 100);
    assert_eq!(count_rows_of(&owner, user).await, 0);
    assert_eq!(count_rows(&owner).await, 600);
    let left: Option<String> = owner
        .query_one("SELECT to_regclass('user_logins_drain')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, None, "the drained table is dropped");
}

/// A DEFAULT partition swapped out beside a key switch: the switch
/// committing while the swap checks (found by review; the soak's schedule
/// rarely lines them up) left the drained rows out of the re-key's walk.
/// The swap now waits for the switch's lock and then refuses (LE007), so
/// the rows stay where the walk sees them.
#[tokio::test]
async fn a_swap_beside_a_key_switch_waits_for_it_and_then_refuses() {
    let db = TestDb::create().await;
    let _ = handler(&db).await;
    let mut owner = db.client().await;
    let switch = owner.transaction().await.unwrap();
    // What login_etl_switch_key does, held open: its lock, then the state.
    switch
        .batch_execute(
            "SELECT 1 FROM user_logins_locks WHERE name = 'key_version' FOR UPDATE; \
             UPDATE user_logins_key_state SET version = 2, rekey_from = 1",
        )
        .await
        .unwrap();
    let m = connect(&db.role_url(Role::Maintain).await).await;
    let swap = tokio::spawn(async move {
        // As maintain does: a lock wait past lock_timeout (55P03) is retried.
        loop {
            match m
                .query_one("SELECT login_etl_swap_default('{}')", &[])
                .await
            {
                Err(e) if e.code().is_some_and(|c| c.code() == "55P03") => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other.map(|r| r.get::<_, bool>(0)),
            }
        }
    });
    // The swap asks for the lock the switch holds (again after each
    // lock_timeout), or ends: it must be the former.
    let admin = db.client().await;
    let (sw, o) = (&swap, &admin);
    let maintain_role = db.role_name(Role::Maintain);
    let waiting = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE NOT l.granted AND a.usename = '{maintain_role}' AND a.datname = current_database())"
    );
    let waiting = &waiting;
    wait_until("the swap waiting for the switch's lock", || async move {
        sw.is_finished()
            || o.query_one(waiting.as_str(), &[])
                .await
                .unwrap()
                .get::<_, bool>(0)
    })
    .await;
    assert!(!swap.is_finished(), "the swap waits for the switch");
    switch.commit().await.unwrap();
    let e = swap
        .await
        .unwrap()
        .expect_err("a re-key under way keeps the DEFAULT partition");
    assert_eq!(e.code().map(|c| c.code()), Some("LE007"), "{e}");
    let drained: Option<String> = owner
        .query_one("SELECT to_regclass('user_logins_drain')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(drained, None, "nothing swapped out");
}
