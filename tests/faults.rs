//! Faults against real PostgreSQL: every test checks the final table against
//! the input (exact row set, no duplicates, reported ids within the input).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::SqsEvent;
use common::pg_server::{PgServer, ServerOptions};
use common::proxy::{Cut, Proxy};
use common::*;
use login_etl::BatchHandler;
use login_etl::record::parse_body;
use login_etl::synth::{self, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Message ids of the records that are valid login events.
fn valid_ids(event: &SqsEvent) -> BTreeSet<String> {
    event
        .records
        .iter()
        .filter(|m| parse_body(m.body.as_deref().unwrap_or("")).is_ok())
        .map(|m| m.message_id.clone().unwrap())
        .collect()
}

fn all_ids(event: &SqsEvent) -> HashSet<String> {
    event
        .records
        .iter()
        .map(|m| m.message_id.clone().unwrap())
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
    handler(&db.url).await; // applies the schema over a direct connection
    let url = db.url.replace(":5432/", &format!(":{}/", proxy.port));
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

#[tokio::test]
async fn a_connection_cut_mid_insert_is_reopened_once_and_the_batch_completes() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(5432).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(3_000, 11);
    // The first connection dies halfway through sending the 3,000-row insert.
    proxy.plan(&[Cut::ClientToServerAfter(200_000)]);
    let (resp, summary) = h
        .handle_with_summary(&event)
        .await
        .expect("one reconnect recovers");
    assert_eq!(proxy.remaining(), 0, "the cut happened");
    assert_eq!(summary.inserted as usize, valid_ids(&event).len());
    let failed: HashSet<String> = failures(&resp).into_iter().collect();
    assert_eq!(failed.len() + valid_ids(&event).len(), event.records.len());
    assert_table_is(&db, &valid_ids(&event)).await;
}

#[tokio::test]
async fn two_cuts_fail_the_invocation_with_nothing_half_committed_and_redelivery_completes() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(5432).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(3_000, 12);
    proxy.plan(&[
        Cut::ClientToServerAfter(200_000),
        Cut::ClientToServerAfter(150_000),
    ]);
    let err = h
        .handle(&event)
        .await
        .expect_err("a second failure fails the invocation");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(
        count_rows(&db.client().await).await,
        0,
        "the statement in flight committed nothing"
    );
    // The event-source mapping redelivers the whole batch.
    let resp = h.handle(&event).await.expect("redelivery succeeds");
    assert!(
        failures(&resp)
            .iter()
            .all(|id| all_ids(&event).contains(id))
    );
    assert_table_is(&db, &valid_ids(&event)).await;
}

#[tokio::test]
async fn a_reply_lost_after_commit_is_retried_into_duplicates_not_new_rows() {
    let db = TestDb::create().await;
    let proxy = Proxy::start(5432).await;
    let h = proxied_handler(&db, &proxy, &[]).await;
    let event = batch(2_000, 13);
    // The server executes and commits; the client never sees the reply.
    proxy.plan(&[Cut::ReplyAfterRequest(100_000)]);
    let (_, summary) = h
        .handle_with_summary(&event)
        .await
        .expect("the retry succeeds");
    assert_eq!(
        summary.inserted, 0,
        "the retry found every row already committed"
    );
    assert_eq!(summary.duplicates as usize, valid_ids(&event).len());
    assert_table_is(&db, &valid_ids(&event)).await;
}

#[tokio::test]
async fn postgres_down_fails_fast_and_the_same_warm_handler_recovers_when_it_is_back() {
    let server = PgServer::start(ServerOptions::default());
    let url = server.url("127.0.0.1", None);
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", TEST_KEY),
        ("RUN_MIGRATIONS", "true"),
        ("DB_CONNECT_TIMEOUT_MS", "2000"),
    ])
    .await;
    let first = batch(200, 21);
    h.handle(&first).await.unwrap();
    server.stop();
    let second = batch(200, 22);
    let started = Instant::now();
    let err = h
        .handle(&second)
        .await
        .expect_err("no database, no success");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed in {:?}",
        started.elapsed()
    );
    assert!(
        err.is_retryable() && err.to_string().contains("cannot connect"),
        "{err}"
    );
    server.start_again();
    h.handle(&second)
        .await
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
    handler(&db.url).await;
    let pool = synth::event(&Options {
        count: 50_000,
        invalid_every: 50,
        seed: 31,
        ..Options::default()
    });
    let want = valid_ids(&pool);
    let records = std::sync::Arc::new(pool.records);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let records = records.clone();
        let url = db.url.clone();
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
            let mut reported = 0;
            for (a, b) in windows {
                let mut event = SqsEvent::default();
                event.records = records[a..b].to_vec();
                let resp = h.handle(&event).await.expect("batch succeeds");
                let ids: HashSet<&str> = event
                    .records
                    .iter()
                    .map(|m| m.message_id.as_deref().unwrap())
                    .collect();
                assert!(
                    resp.batch_item_failures
                        .iter()
                        .all(|f| ids.contains(f.item_identifier.as_str()))
                );
                reported += resp.batch_item_failures.len();
            }
            reported
        }));
    }
    let mut reported = 0;
    for t in tasks {
        reported += t.await.unwrap();
    }
    assert!(
        reported >= 50_000 - want.len(),
        "every invalid record was reported at least once"
    );
    assert_table_is(&db, &want).await;
}

#[tokio::test]
async fn refused_rows_are_isolated_in_about_k_log_n_statements() {
    let db = TestDb::create().await;
    let h = handler(&db.url).await;
    let client = db.client().await;
    let n = 1_024;
    let event = synth::event(&Options {
        count: n,
        seed: 41,
        ..Options::default()
    });
    let user = |i: usize| -> String {
        let body: serde_json::Value =
            serde_json::from_str(event.records[i].body.as_deref().unwrap()).unwrap();
        body["user_id"].as_str().unwrap().to_owned()
    };
    // Two refused by a CHECK constraint, one by a trigger that raises.
    client
        .batch_execute(&format!(
            "ALTER TABLE user_logins ADD CONSTRAINT not_these CHECK (user_id NOT IN ('{}', '{}'));
             CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.user_id = '{}' THEN RAISE EXCEPTION 'refused by trigger'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER refuse_one BEFORE INSERT ON user_logins FOR EACH ROW EXECUTE FUNCTION refuse_one();",
            user(3),
            user(500),
            user(1_000)
        ))
        .await
        .unwrap();
    let (resp, summary) = h.handle_with_summary(&event).await.unwrap();
    let ids: Vec<String> = [3, 500, 1_000]
        .iter()
        .map(|&i| event.records[i].message_id.clone().unwrap())
        .collect();
    assert_eq!(failures(&resp), ids);
    let k = 3;
    let bound = 1 + 2 * k * (n as f64).log2().ceil() as u32;
    assert!(
        summary.statements <= bound,
        "{} statements for k={k}, n={n} (bound {bound})",
        summary.statements
    );
    assert_eq!(count_rows(&client).await as usize, n - 3);
}

#[tokio::test]
async fn a_lock_held_by_another_transaction_ends_in_a_bounded_error_never_a_partial_success() {
    let db = TestDb::create().await;
    handler(&db.url).await;
    let h = handler_with(&[
        ("DATABASE_URL", &db.url),
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
    let started = Instant::now();
    let err = h
        .handle(&event)
        .await
        .expect_err("a locked table is no success");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "bounded by the statement timeout and one retry: {took:?}"
    );
    assert!(
        err.is_retryable()
            && (err.to_string().contains("55P03") || err.to_string().contains("57014")),
        "{err}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(count_rows(&db.client().await).await, 0);
    h.handle(&event)
        .await
        .expect("redelivery after the lock is gone");
    assert_table_is(&db, &valid_ids(&event)).await;
}
