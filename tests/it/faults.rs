//! Faults against real PostgreSQL: every test checks the final table against
//! the input (exact row set, no duplicates, reported ids within the input).
//! The oracle for "valid" is the generator's own `expect` label, not the
//! crate's parser.

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use common::pg_server::{PgServer, ServerOptions};
use common::proxy::{Cut, Proxy};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{BatchHandler, Deadline, Outcome, SqsBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Message ids the generator labelled `insert`.
fn valid_ids(event: &SqsEvent) -> BTreeSet<String> {
    expectations(event)
        .into_iter()
        .filter(|(_, e)| e.starts_with("insert"))
        .map(|(id, _)| id)
        .collect()
}

/// Message ids the generator labelled `reject:...`.
fn invalid_ids(event: &SqsEvent) -> BTreeSet<String> {
    expectations(event)
        .into_iter()
        .filter(|(_, e)| e.starts_with("reject:"))
        .map(|(id, _)| id)
        .collect()
}

/// The table holds exactly `want`, once each.
async fn assert_table_is(db: &TestDb, want: &BTreeSet<String>) {
    let client = db.client().await;
    let ids = message_ids_in_table(&client).await;
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "no duplicate rows");
    assert_eq!(&distinct, want, "exactly the valid messages");
}

async fn proxied_handler(db: &TestDb, proxy: &Proxy, extra: &[(&str, &str)]) -> BatchHandler {
    // The schema applied by the admin; the function connects as the ingest role.
    let url = through_port(&db.ingest_url().await, proxy.port);
    let mut vars = vec![("DATABASE_URL", url.as_str()), ("MASKING_KEY", TEST_KEY)];
    vars.extend_from_slice(extra);
    handler_with(&vars).await
}

fn batch(count: usize, seed: u64) -> SqsEvent {
    synth::event(&Options {
        count,
        invalid_every: 17,
        seed,
        ..Options::default()
    })
}

/// Handles `event` and checks the partial-batch answer: exactly the invalid
/// records are reported, no refusal, and the table holds the valid ones.
async fn handle_and_check(
    h: &BatchHandler,
    db: &TestDb,
    event: &SqsEvent,
) -> login_etl::BatchSummary {
    let (resp, summary) = h
        .handle(&SqsBatch::from(event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .expect("the batch succeeds");
    let reported: BTreeSet<String> = failures(&resp).into_iter().collect();
    assert_eq!(
        reported,
        invalid_ids(event),
        "exactly the invalid records are reported"
    );
    assert_eq!(summary.refused, 0, "no row was refused");
    assert_table_is(db, &valid_ids(event)).await;
    summary
}

async fn cut_mid_statement_reconnects_once(count: usize, seed: u64, limit: u64) {
    let db = TestDb::create().await;
    let proxy = Proxy::start(admin_port()).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(count, seed);
    proxy.plan(&[Cut::ClientToServerAfter(limit)]);
    let summary = handle_and_check(&h, &db, &event).await;
    assert_eq!(
        proxy.cuts(),
        vec![limit],
        "one cut, {limit} bytes into the connection"
    );
    assert_eq!(
        proxy.accepted(),
        2,
        "the first connection and exactly one reconnect"
    );
    assert_eq!(summary.inserted as usize, valid_ids(&event).len());
    assert_eq!(summary.duplicates, 0, "the cut statement committed nothing");
}

#[tokio::test]
async fn a_cut_mid_copy_reconnects_exactly_once_and_the_batch_completes() {
    // 3,000 rows take the COPY path (about 750 kB); the cut falls inside it.
    cut_mid_statement_reconnects_once(3_000, 11, 200_000).await;
}

#[tokio::test]
async fn a_cut_mid_insert_reconnects_exactly_once_and_the_batch_completes() {
    // A batch below COPY_MIN_ROWS takes the INSERT path (199 rows, about
    // 50 kB in one pipeline).
    let rows = login_etl::ingest::sink::COPY_MIN_ROWS - 1;
    cut_mid_statement_reconnects_once(rows, 14, 30_000).await;
}

#[tokio::test]
async fn two_cuts_fail_the_invocation_with_nothing_half_committed_and_redelivery_completes() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(admin_port()).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(3_000, 12);
    proxy.plan(&[
        Cut::ClientToServerAfter(200_000),
        Cut::ClientToServerAfter(150_000),
    ]);
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect_err("a second failure fails the invocation");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(proxy.cuts(), vec![200_000, 150_000], "both cuts fired");
    assert_eq!(proxy.accepted(), 2, "one reconnect, no more");
    assert_eq!(
        count_rows(&db.client().await).await,
        0,
        "the statements in flight committed nothing"
    );
    // The event-source mapping redelivers the whole batch.
    handle_and_check(&h, &db, &event).await;
    assert_eq!(proxy.accepted(), 3);
}

/// The write `cut` names reaches the server and commits (the INSERT
/// path's one statement, or the COPY's COMMIT); its answer never comes back.
/// `earlier` records of the batch were committed by an earlier delivery.
/// The INSERT path's one-statement write (`login_etl_write_tx`), which its
/// Sync commits: its call, not the schema check's look-up of the function.
const WRITE_ALONE: &str = ".login_etl_write_tx($1";

async fn reply_lost_after_commit(
    count: usize,
    seed: u64,
    earlier: usize,
    cut: Cut,
) -> (TestDb, Proxy) {
    let db = TestDb::create().await;
    let event = batch(count, seed);
    // Those stay duplicates; the rest were committed by this invocation's
    // lost attempt.
    let mut committed_before = event.clone();
    committed_before.records.truncate(earlier);
    let before = valid_ids(&committed_before).len();
    if earlier > 0 {
        handle_and_check(&handler(&db).await, &db, &committed_before).await;
    }
    let proxy = Proxy::start(admin_port()).await;
    proxy.plan(&[cut]);
    let h = proxied_handler(&db, &proxy, &[]).await;
    let summary = handle_and_check(&h, &db, &event).await;
    assert_eq!(proxy.cuts().len(), 1, "the reply to the write was cut");
    assert_eq!(proxy.accepted(), 2, "one reconnect");
    assert_eq!(
        summary.inserted as usize,
        valid_ids(&event).len() - before,
        "rows the lost attempt committed count as inserted by this invocation"
    );
    assert_eq!(
        summary.duplicates as usize, before,
        "earlier rows stay duplicates"
    );
    (db, proxy)
}

/// A lost reply to the INSERT path's write: its rows count as inserted.
#[tokio::test]
async fn a_reply_lost_after_an_insert_commit_counts_its_rows_as_inserted() {
    let rows = login_etl::ingest::sink::COPY_MIN_ROWS - 1;
    reply_lost_after_commit(rows, 13, rows / 3, Cut::ReplyAfterReady(WRITE_ALONE)).await;
}

/// A COPY-sized batch, a third of it committed before: the COPY aborts on
/// the first duplicate (the COMMIT sent with its end answers ROLLBACK), so
/// the cut hits the COMMIT of the INSERT path it falls back to (framed: a
/// range of a COPY's size); that attempt's rows count as inserted, the earlier ones
/// as duplicates.
#[tokio::test]
async fn a_reply_lost_after_a_copy_commit_counts_its_rows_as_inserted() {
    reply_lost_after_commit(2_000, 15, 2_000 / 3, Cut::ReplyAfterText("COMMIT;")).await;
}

/// The COPY's own COMMIT commits on the server and its reply is lost (a
/// fresh table: nothing makes the COPY abort first). After the reconnect
/// the recount from the floor before the COPY must find the rows as this
/// invocation's own: inserted, not duplicates. One transaction wrote every
/// row (one `xmin`), after all of the COPY's data had gone through: the COPY.
#[tokio::test]
async fn a_reply_lost_after_the_copys_own_commit_counts_its_rows_as_inserted() {
    let (db, proxy) = reply_lost_after_commit(2_000, 19, 0, Cut::ReplyAfterText("COMMIT;")).await;
    let cuts = proxy.cuts();
    assert!(
        cuts[0] > 300_000,
        "the cut came after the COPY data: {cuts:?}"
    );
    let writers: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM user_logins_rows",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        writers, 1,
        "every row was committed by the COPY's transaction"
    );
}

#[tokio::test]
async fn a_cut_before_the_copy_commit_arrives_rolls_back_and_the_retry_writes_everything() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(admin_port()).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(1_500, 16);
    // "COMMIT;": the statement, not the BEGIN's ISOLATION LEVEL READ COMMITTED.
    proxy.plan(&[Cut::BeforeText("COMMIT;")]);
    let summary = handle_and_check(&h, &db, &event).await;
    let cuts = proxy.cuts();
    assert_eq!(cuts.len(), 1);
    assert!(
        cuts[0] > 220_000,
        "the cut came after the COPY data: {cuts:?}"
    );
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(summary.inserted as usize, valid_ids(&event).len());
    assert_eq!(
        summary.duplicates, 0,
        "the COPY without its COMMIT wrote nothing"
    );
}

#[tokio::test]
async fn postgres_down_fails_fast_and_the_same_warm_handler_recovers_when_it_is_back() {
    let server = PgServer::start(ServerOptions::default());
    let url = server.url("127.0.0.1", None);
    let ingest = ingest_role_on(&url, "login_etl_ingest", None).await;
    let h = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", TEST_KEY),
        ("DB_CONNECT_TIMEOUT_MS", "2000"),
    ])
    .await;
    let first = batch(200, 21);
    h.handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap();
    server.stop();
    let second = batch(200, 22);
    // Bounded by the connect timeout; the minute is a hang guard.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        h.handle(&SqsBatch::from(&second), Deadline::NONE),
    )
    .await
    .expect("a batch with the database gone fails, it does not hang")
    .map(|o| o.response)
    .expect_err("no database, no success");
    assert!(
        err.is_retryable() && err.to_string().contains("cannot connect"),
        "{err}"
    );
    server.start_again();
    h.handle(&SqsBatch::from(&second), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect("reconnects without a cold start");
    let client = connect(&url).await;
    let mut want = valid_ids(&first);
    want.extend(valid_ids(&second));
    let ids: BTreeSet<String> = message_ids_in_table(&client).await.into_iter().collect();
    assert_eq!(ids, want);
    assert_eq!(count_rows(&client).await as usize, want.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_from_16_concurrent_invocations_give_one_row_per_message() {
    let db = TestDb::create().await;
    handler(&db).await;
    let pool = synth::event(&Options {
        count: 50_000,
        invalid_every: 50,
        seed: 31,
        ..Options::default()
    });
    let (want, invalid) = (valid_ids(&pool), invalid_ids(&pool));
    let records = std::sync::Arc::new(pool.records);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let records = records.clone();
        let url = db.ingest_url().await;
        tasks.push(tokio::spawn(async move {
            // One handler per task: separate execution environments, separate connections.
            let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
            let mut rng = StdRng::seed_from_u64(t);
            let n = records.len();
            // Every record is covered by its own slice, plus random overlapping windows.
            let mut windows: Vec<(usize, usize)> = (t as usize * n / 16..(t as usize + 1) * n / 16)
                .step_by(1_000)
                .map(|s| (s, (s + 1_000).min((t as usize + 1) * n / 16)))
                .collect();
            for _ in 0..3 {
                let start = rng.random_range(0..n - 2_000);
                windows.push((start, start + rng.random_range(100..2_000)));
            }
            let mut reported = HashSet::new();
            for (a, b) in windows {
                let mut event = SqsEvent::default();
                event.records = records[a..b].to_vec();
                let resp = h
                    .handle(&SqsBatch::from(&event), Deadline::NONE)
                    .await
                    .map(|o| o.response)
                    .expect("batch succeeds");
                reported.extend(failures(&resp));
            }
            reported
        }));
    }
    let mut reported = BTreeSet::new();
    for t in tasks {
        reported.extend(t.await.unwrap());
    }
    assert!(
        reported.is_disjoint(&want),
        "no valid record is ever reported"
    );
    assert_eq!(reported, invalid, "every invalid record was reported");
    assert_table_is(&db, &want).await;
}

fn user_of(event: &SqsEvent, i: usize) -> String {
    let body: serde_json::Value =
        serde_json::from_str(event.records[i].body.as_deref().unwrap()).unwrap();
    body["user_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn refused_rows_are_isolated_in_about_k_log_n_statements() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let n = 1_024;
    let event = synth::event(&Options {
        count: n,
        seed: 41,
        ..Options::default()
    });
    // Two refused by a CHECK constraint, one by a trigger that raises.
    client
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT not_these CHECK (coalesce(user_id_text, user_id::text) NOT IN ('{}', '{}'));
             CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF coalesce(NEW.user_id_text, NEW.user_id::text) = '{}' THEN RAISE EXCEPTION 'refused by trigger'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER refuse_one BEFORE INSERT ON user_logins_rows FOR EACH ROW EXECUTE FUNCTION refuse_one();",
            user_of(&event, 3),
            user_of(&event, 500),
            user_of(&event, 1_000)
        ))
        .await
        .unwrap();
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let ids: Vec<String> = [3, 500, 1_000]
        .iter()
        .map(|&i| event.records[i].message_id.clone().unwrap())
        .collect();
    assert_eq!(failures(&resp), ids);
    let k = 3;
    // +1: the COPY tried first (n >= COPY_MIN_ROWS).
    let bound = 2 + 2 * k * (n as f64).log2().ceil() as u32;
    assert!(
        summary.statements <= bound,
        "{} statements for k={k}, n={n} (bound {bound})",
        summary.statements
    );
    assert_eq!(count_rows(&client).await as usize, n - 3);
}

#[tokio::test]
async fn a_refusal_raised_at_commit_is_isolated_and_every_other_row_is_committed_once() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let client = db.client().await;
    let event = batch(1_200, 42);
    let bad = (0..event.records.len())
        .find(|&i| {
            i > 600 && valid_ids(&event).contains(event.records[i].message_id.as_deref().unwrap())
        })
        .unwrap();
    // A deferred constraint trigger: the row goes in, the COMMIT fails.
    client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF coalesce(NEW.user_id_text, NEW.user_id::text) = '{}' THEN RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON user_logins_rows
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();",
            user_of(&event, bad)
        ))
        .await
        .unwrap();
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    let bad_id = event.records[bad].message_id.clone().unwrap();
    let mut want_reported = invalid_ids(&event);
    want_reported.insert(bad_id.clone());
    let reported: BTreeSet<String> = failures(&resp).into_iter().collect();
    assert_eq!(reported, want_reported);
    assert_eq!(summary.refused, 1);
    let mut want = valid_ids(&event);
    want.remove(&bad_id);
    assert_eq!(summary.inserted as usize, want.len());
    assert_table_is(&db, &want).await;
}

#[tokio::test]
async fn a_lock_held_by_another_transaction_ends_in_a_bounded_error_never_a_partial_success() {
    let db = TestDb::create().await;
    let h = handler_with(&[
        ("DATABASE_URL", &db.ingest_url().await),
        ("MASKING_KEY", TEST_KEY),
        ("DB_STATEMENT_TIMEOUT_MS", "800"),
    ])
    .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let event = batch(500, 51);
    // Bounded by the lock timeout and the conflict retries while the
    // table stays locked (the test releases it only after); the minute is
    // a hang guard.
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        h.handle(&SqsBatch::from(&event), Deadline::NONE),
    )
    .await
    .expect("a write to a locked table gives up, it does not wait for the lock")
    .map(|o| o.response)
    .expect_err("a locked table is no success");
    assert!(
        err.is_retryable()
            && (err.to_string().contains("55P03") || err.to_string().contains("57014")),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count_rows(&db.client().await).await, 0);
    handle_and_check(&h, &db, &event).await;
}

#[tokio::test]
async fn a_lock_timeout_is_retried_on_the_same_connection_without_using_the_reconnect() {
    lock_timeout_retried_on_the_same_connection(100, 52).await;
}

/// The COPY path's BEGIN times out on the lock, its COPY is refused before
/// it began (vendor/tokio-postgres: no second ReadyForQuery), the ROLLBACK
/// and the INSERT path's retry run on the same connection.
#[tokio::test]
async fn a_copy_sized_batch_whose_lock_times_out_is_retried_on_the_same_connection() {
    lock_timeout_retried_on_the_same_connection(login_etl::ingest::sink::COPY_MIN_ROWS, 54).await;
}

async fn lock_timeout_retried_on_the_same_connection(rows: usize, seed: u64) {
    let db = TestDb::create().await;
    let proxy = Proxy::start(admin_port()).await;
    let h = proxied_handler(&db, &proxy, &[("DB_STATEMENT_TIMEOUT_MS", "400")]).await;
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let url = db.url.clone();
    // Released after the first attempt timed out, before the retries run
    // out: held until the handler's retry waits on it (not for a fixed time:
    // on a loaded machine the handler may reach its write later than a
    // fixed hold lasts).
    let release = tokio::spawn(async move {
        let monitor = connect(&url).await;
        let mut locker = connect(&url).await;
        let tx = locker.transaction().await.unwrap();
        tx.batch_execute("LOCK TABLE user_logins_rows IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        locked.send(()).unwrap();
        // The first attempt's statement waits, times out, and the retry, a
        // new statement on the same backend (another query_start), waits
        // again: released then, by what the server shows, not by a time.
        let waiting = "SELECT a.pid, a.query_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                       WHERE NOT l.granted AND l.relation = to_regclass('user_logins_rows')";
        let mut first: Option<(i32, std::time::SystemTime)> = None;
        let since = Instant::now();
        loop {
            assert!(
                since.elapsed() < STATE_WAIT,
                "never observed: a retry waiting"
            );
            let now = monitor
                .query_opt(waiting, &[])
                .await
                .unwrap()
                .map(|r| (r.get::<_, i32>(0), r.get::<_, std::time::SystemTime>(1)));
            match (first, now) {
                (Some(a), Some(b)) if a.0 == b.0 && a.1 != b.1 => break,
                (None, now) => first = now,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.rollback().await.unwrap();
    });
    is_locked.await.unwrap();
    let event = batch(rows, seed);
    let summary = handle_and_check(&h, &db, &event).await;
    release.await.unwrap();
    // The lock monitor above saw the retry wait; this only says a retry ran.
    assert!(
        summary.statements >= 2,
        "the first attempt timed out on the lock"
    );
    assert_eq!(proxy.accepted(), 1, "retried on the same connection");
}

#[tokio::test]
async fn the_invocation_deadline_ends_retries_early_enough_to_report() {
    let db = TestDb::create().await;
    let h = handler(&db).await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let event = batch(100, 53);
    let deadline = Instant::now() + Duration::from_millis(3_000);
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::at(deadline))
        .await
        .map(Outcome::into_parts)
        .expect_err("the table stays locked");
    // It gave up on its own, before the deadline, the table still locked.
    assert!(Instant::now() < deadline, "returned past the deadline");
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("ms of the invocation left"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count_rows(&db.client().await).await, 0);
}

#[tokio::test]
async fn no_such_database_and_permission_denied_are_not_retryable_and_name_the_cause() {
    let db = TestDb::create().await;
    handler(&db).await;
    let proxy = Proxy::start(admin_port()).await;
    // The ingest role (which exists) on a database that does not.
    let ingest = db
        .role_url(login_etl::table::privileges::Role::Ingest)
        .await;
    let role = ingest
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let missing = format!(
        "postgres://{role}@127.0.0.1:{}/login_etl_no_such_db_{}",
        proxy.port,
        std::process::id()
    );
    let h = handler_with(&[("DATABASE_URL", &missing), ("MASKING_KEY", TEST_KEY)]).await;
    let err = h
        .handle(&SqsBatch::from(&batch(20, 61)), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect_err("no database");
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains("3D000") && err.to_string().contains("does not exist"),
        "{err}"
    );
    assert_eq!(proxy.accepted(), 1, "no silent retry");

    let client = db.client().await;
    let role = format!("login_etl_reader_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; GRANT SELECT ON user_logins, user_logins_erased, user_logins_key_state TO {role}; GRANT EXECUTE ON FUNCTION login_etl_check_keys(smallint, text, text), login_etl_key_state(), login_etl_key_changed_at() TO {role}"
        ))
        .await
        .unwrap();
    let url = db.url.replace("postgres@", &format!("{role}@"));
    let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
    let err = h
        .handle(&SqsBatch::from(&batch(20, 62)), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect_err("no INSERT privilege");
    assert!(!err.is_retryable(), "{err}");
    // The error names the table, the privilege and the command that prints the fix.
    let text = err.to_string();
    assert!(
        text.contains("42501")
            && text.contains("lacks INSERT and SELECT (message_id, sent_at, xmin)")
            && text.contains("on table user_logins_rows")
            && text.contains("login-etl grants --role ingest"),
        "{err}"
    );
    drop(h);
    // The role owns nothing; drop it after the database is gone.
    drop(db);
    let admin = connect(&admin_url()).await;
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
        .await
        .unwrap();
}

/// A role granted what 0.2.0's `login-etl grants` printed, not registered
/// for `migrate` to grant it more, may not execute the one-statement write:
/// its batches are written framed, every row once, rather than failing.
#[tokio::test]
async fn a_role_without_execute_on_the_one_statement_write_writes_framed() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    db.client()
        .await
        .batch_execute(&format!(
            "REVOKE EXECUTE ON FUNCTION login_etl_write_tx(integer, bigint, integer, integer, {}) FROM \"{}\"",
            login_etl::contract::columns::array_types(),
            db.role_name(login_etl::table::privileges::Role::Ingest)
        ))
        .await
        .unwrap();
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;
    let event = batch(20, 63);
    let summary = handle_and_check(&h, &db, &event).await;
    assert_eq!(summary.inserted as usize, valid_ids(&event).len());
}

#[tokio::test]
async fn an_invalid_unique_index_stops_every_write_until_migrate_rebuilds_it() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let client = db.client().await;
    // A key index that arbitrates nothing: made ON ONLY the parent and
    // never completed (as a failed build on a partition leaves it), over
    // rows that the key would refuse.
    client
        .batch_execute(
            "DROP INDEX user_logins_rows_key;
             INSERT INTO user_logins (message_id, user_id, sent_at, create_date)
               VALUES ('dup', 'a', now(), current_date), ('dup', 'b', now(), current_date);
             CREATE UNIQUE INDEX user_logins_rows_key ON ONLY user_logins_rows (sent_at, message_id);",
        )
        .await
        .unwrap();
    let invalid: bool = client
        .query_one(
            "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'user_logins_rows_key'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(invalid, "an INVALID index is left under the expected name");
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;
    let event = batch(50, 71);
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect_err("no valid unique index, no write");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("login-etl migrate"), "{err}");
    assert_eq!(count_rows(&client).await, 2, "nothing was written");

    client
        .batch_execute("DELETE FROM user_logins WHERE user_id = 'b'")
        .await
        .unwrap();
    let target = login_etl::startup::migrate(
        &login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
            (k == "DATABASE_URL").then(|| db.url.clone())
        })
        .unwrap(),
        login_etl::Profile::Full,
    )
    .await
    .unwrap();
    assert!(target.contains("(applied)"), "{target}");
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;
    let mut want = valid_ids(&event);
    want.insert("dup".into());
    h.handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .expect("a valid index again");
    assert_table_is(&db, &want).await;
}

#[tokio::test]
async fn migrate_on_a_current_schema_takes_no_table_lock() {
    let db = TestDb::create().await;
    handler(&db).await;
    let mut reader = db.client().await;
    let tx = reader.transaction().await.unwrap();
    // Blocks any ACCESS EXCLUSIVE lock (ALTER TABLE, CREATE INDEX) until it ends.
    tx.batch_execute("LOCK TABLE user_logins IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let config = login_etl::database::settings::DbConfig::from_lookup(&|k: &str| {
        (k == "DATABASE_URL").then(|| db.url.clone())
    })
    .unwrap();
    let target = tokio::time::timeout(
        Duration::from_secs(5),
        login_etl::startup::migrate(&config, login_etl::Profile::Full),
    )
    .await
    .expect("migrate did not wait for a table lock")
    .unwrap();
    assert!(target.contains("already current"), "{target}");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_lost_reply_recount_needs_select_on_xmin_and_without_it_counts_duplicates() {
    for (grant, counted_as_inserted) in [
        ("message_id, sent_at", false),
        ("message_id, sent_at, xmin", true),
    ] {
        let db = TestDb::create().await;
        // The ingest role, without SELECT on xmin in the first round.
        let ingest = db.ingest_url().await;
        let role = ingest
            .split("://")
            .nth(1)
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .to_owned();
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "REVOKE SELECT ON user_logins_rows FROM \"{role}\"; GRANT SELECT ({grant}) ON user_logins_rows TO \"{role}\";"
            ))
            .await
            .unwrap();
        let proxy = Proxy::start(admin_port()).await;
        proxy.plan(&[Cut::ReplyAfterReady(WRITE_ALONE)]);
        let url = through_port(&ingest, proxy.port);
        let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
        // The INSERT path's own recount (a COPY-sized batch falls back to it).
        let event = batch(login_etl::ingest::sink::COPY_MIN_ROWS - 1, 17);
        let summary = handle_and_check(&h, &db, &event).await;
        assert_eq!(proxy.cuts().len(), 1);
        let valid = valid_ids(&event).len() as u64;
        if counted_as_inserted {
            assert_eq!(
                (summary.inserted, summary.duplicates),
                (valid, 0),
                "{grant}"
            );
        } else {
            assert_eq!(
                (summary.inserted, summary.duplicates),
                (0, valid),
                "{grant}"
            );
        }
        drop(h);
        drop(db);
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("DROP ROLE IF EXISTS {role}"))
            .await
            .unwrap();
    }
}

/// Every row has both its vault entries, and every entry belongs to a row.
async fn assert_vault_matches_rows(db: &TestDb) {
    let client = db.client().await;
    let orphans: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins u WHERE NOT EXISTS (SELECT 1 FROM user_logins_pii_vault v WHERE v.kind = 'ip' AND v.token = u.masked_ip) \
             OR NOT EXISTS (SELECT 1 FROM user_logins_pii_vault v WHERE v.kind = 'device_id' AND v.token = u.masked_device_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "no row without its vault entries");
    let strays: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins_pii_vault v WHERE NOT EXISTS (SELECT 1 FROM user_logins u \
             WHERE (v.kind = 'ip' AND u.masked_ip = v.token) OR (v.kind = 'device_id' AND u.masked_device_id = v.token))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(strays, 0, "no vault entry without its row");
}

#[tokio::test]
async fn vault_entries_commit_with_their_rows_through_a_cut_and_a_refused_row() {
    let local_key =
        || login_etl::privacy::vault::DataKey::new(&[7; 32], vec![1, 2, 3], "local").unwrap();
    // The INSERT path's size, then the COPY path's.
    for count in [login_etl::ingest::sink::COPY_MIN_ROWS - 1, 1_500] {
        let db = TestDb::create().await;
        let proxy = Proxy::start(admin_port()).await;
        let h = proxied_handler(&db, &proxy, &[])
            .await
            .with_vault(local_key());
        let event = batch(count, 18);
        // One refused row: its vault entries must not stay behind.
        let bad = (0..count)
            .find(|&i| valid_ids(&event).contains(event.records[i].message_id.as_deref().unwrap()))
            .unwrap();
        db.client()
            .await
            .batch_execute(&format!(
                "ALTER TABLE user_logins_rows ADD CONSTRAINT not_this CHECK (coalesce(user_id_text, user_id::text) <> '{}')",
                user_of(&event, bad)
            ))
            .await
            .unwrap();
        // And the first connection dies in the middle of the batch.
        proxy.plan(&[Cut::ClientToServerAfter(
            if count >= login_etl::ingest::sink::COPY_MIN_ROWS {
                200_000
            } else {
                40_000
            },
        )]);
        let (resp, summary) = h
            .handle(&SqsBatch::from(&event), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        assert_eq!(proxy.cuts().len(), 1, "the cut fired");
        assert_eq!(summary.refused, 1);
        let bad_id = event.records[bad].message_id.clone().unwrap();
        assert!(failures(&resp).contains(&bad_id));
        let mut want = valid_ids(&event);
        want.remove(&bad_id);
        assert_table_is(&db, &want).await;
        assert_vault_matches_rows(&db).await;
    }
}
