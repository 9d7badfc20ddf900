//! Behind a transaction-mode connection pooler, as in production (RDS
//! Proxy, PgBouncer): the real binary, through the Lambda Runtime API, in
//! six concurrent processes sharing two server connections.

use crate::common;

use std::collections::BTreeSet;
use std::process::{Child, Command};
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use common::pgbouncer::PgBouncer;
use common::runtime_api::{Outcome, RuntimeApi};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{Deadline, SqsBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Startup parameters that PgBouncer and RDS Proxy accept from a client.
const ACCEPTED_STARTUP_PARAMETERS: [&str; 6] = [
    "user",
    "database",
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
];

#[tokio::test]
async fn the_startup_packet_carries_only_parameters_poolers_accept() {
    // A fake server that records the startup packet and refuses the login.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let len = socket.read_i32().await.unwrap() as usize;
        let mut body = vec![0u8; len - 4];
        socket.read_exact(&mut body).await.unwrap();
        assert_eq!(
            &body[..4],
            &196_608i32.to_be_bytes(),
            "protocol 3.0, no SSLRequest"
        );
        let fields: Vec<String> = body[4..]
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let keys: Vec<String> = fields
            .chunks(2)
            .filter(|kv| kv.len() == 2 && !kv[0].is_empty())
            .map(|kv| kv[0].to_lowercase())
            .collect();
        // ErrorResponse: FATAL 28000, so the client stops here.
        let mut msg = Vec::new();
        for (t, v) in [(b'S', "FATAL"), (b'C', "28000"), (b'M', "test server")] {
            msg.push(t);
            msg.extend_from_slice(v.as_bytes());
            msg.push(0);
        }
        msg.push(0);
        let mut frame = vec![b'E'];
        frame.extend_from_slice(&((msg.len() + 4) as i32).to_be_bytes());
        frame.extend_from_slice(&msg);
        let _ = socket.write_all(&frame).await;
        keys
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/login_etl");
    let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
    let err = h
        .handle(
            &SqsBatch::from(&load_event("sqs-valid.json")),
            Deadline::NONE,
        )
        .await
        .map(|o| o.response)
        .unwrap_err();
    assert!(err.to_string().contains("28000"), "{err}");
    let keys = server.await.unwrap();
    assert!(keys.contains(&"user".to_owned()) && keys.contains(&"database".to_owned()));
    for key in &keys {
        assert!(
            ACCEPTED_STARTUP_PARAMETERS.contains(&key.as_str()),
            "startup parameter {key:?} would be refused by PgBouncer or RDS Proxy (sent: {keys:?})"
        );
    }
}

/// Stops the function processes on drop, also when the test fails.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_function(runtime_port: u16, db_url: &str, log: &std::path::Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_login-etl"))
        .env_clear()
        .env(
            "AWS_LAMBDA_RUNTIME_API",
            format!("127.0.0.1:{runtime_port}"),
        )
        .env("AWS_LAMBDA_FUNCTION_NAME", "login-etl")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("DATABASE_URL", db_url)
        .env("MASKING_KEY", TEST_KEY)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the function binary runs")
}

fn window(pool: &SqsEvent, start: usize, len: usize) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = pool.records[start..(start + len).min(pool.records.len())].to_vec();
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_function_processes_through_pgbouncer_in_transaction_mode_write_the_exact_row_set() {
    let db = TestDb::create().await;
    handler(&db).await; // the schema, over a direct connection
    let client = db.client().await;
    let pool = synth::event(&Options {
        count: 3_000,
        invalid_every: 13,
        seed: 81,
        ..Options::default()
    });
    let labels = expectations(&pool);
    let user = |i: usize| -> String {
        let body: serde_json::Value =
            serde_json::from_str(pool.records[i].body.as_deref().unwrap()).unwrap();
        body["user_id"].as_str().unwrap().to_owned()
    };
    // Refused rows, one in a small batch and two in COPY-sized ones.
    let refused_at = [20usize, 700, 2_500];
    assert!(
        refused_at
            .iter()
            .all(|&i| labels[i].1.starts_with("insert"))
    );
    client
        .batch_execute(&format!(
            "ALTER TABLE user_logins_rows ADD CONSTRAINT not_these CHECK (coalesce(user_id_text, user_id::text) NOT IN ('{}', '{}', '{}'))",
            user(refused_at[0]),
            user(refused_at[1]),
            user(refused_at[2])
        ))
        .await
        .unwrap();
    let refused: BTreeSet<String> = refused_at.iter().map(|&i| labels[i].0.clone()).collect();
    let rejected: BTreeSet<String> = labels
        .iter()
        .filter(|(_, e)| e.starts_with("reject:"))
        .map(|(id, _)| id.clone())
        .collect();
    let want: BTreeSet<String> = labels
        .iter()
        .filter(|(id, e)| e.starts_with("insert") && !refused.contains(id))
        .map(|(id, _)| id.clone())
        .collect();

    // COPY-sized batches over the pool, small ones over its first part, and
    // redeliveries of both sizes.
    let mut batches: Vec<SqsEvent> = (0..3_000)
        .step_by(600)
        .map(|s| window(&pool, s, 600))
        .collect();
    batches.extend((0..1_000).step_by(50).map(|s| window(&pool, s, 50)));
    batches.extend([window(&pool, 0, 600), window(&pool, 1_800, 600)]);
    batches.extend([
        window(&pool, 10, 50),
        window(&pool, 690, 50),
        window(&pool, 2_480, 50),
    ]);

    // The function connects as the ingest role (login-etl grants), through the pooler.
    let ingest = db.role_url(Role::Ingest).await;
    let role = ingest
        .split("://")
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let bouncer = PgBouncer::start_for(admin_port(), 2, &[&role]);
    let url = through_port(&ingest, bouncer.port);
    let api = RuntimeApi::start().await;
    for (i, event) in batches.iter().enumerate() {
        api.push(&format!("req-{i}"), event);
    }
    let logs: Vec<std::path::PathBuf> = (0..6)
        .map(|i| {
            std::env::temp_dir().join(format!("login-etl-pooler-{}-{i}.log", std::process::id()))
        })
        .collect();
    let mut processes = Processes(
        logs.iter()
            .map(|log| spawn_function(api.port, &url, log))
            .collect(),
    );
    let outcomes = api
        .wait_for(batches.len(), Duration::from_secs(180), || {
            for (child, log) in processes.0.iter_mut().zip(&logs) {
                if let Ok(Some(status)) = child.try_wait() {
                    let tail = std::fs::read_to_string(log).unwrap_or_default();
                    return Err(format!(
                        "a function process exited ({status}) at cold start: {tail}"
                    ));
                }
            }
            Ok(())
        })
        .await;
    drop(processes);
    logs.iter().for_each(|log| drop(std::fs::remove_file(log)));

    for (i, event) in batches.iter().enumerate() {
        let ids: BTreeSet<String> = event
            .records
            .iter()
            .map(|m| m.message_id.clone().unwrap())
            .collect();
        let reported: BTreeSet<String> = match &outcomes[&format!("req-{i}")] {
            Outcome::Response(r) => r["batchItemFailures"]
                .as_array()
                .expect("a partial-batch response")
                .iter()
                .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
                .collect(),
            Outcome::Error(e) => panic!(
                "batch {i} failed as a whole through PgBouncer: {e}\n{}",
                bouncer.log()
            ),
        };
        let expected: BTreeSet<String> = ids
            .iter()
            .filter(|id| rejected.contains(*id) || refused.contains(*id))
            .cloned()
            .collect();
        assert_eq!(
            reported, expected,
            "batch {i}: exactly its rejected and refused records"
        );
    }
    let ids = message_ids_in_table(&client).await;
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "no duplicate rows");
    assert_eq!(distinct, want, "exactly the valid, unrefused messages");
}

/// An isolation level the ingest role stores after the function connected
/// reaches the pooler's next server connection, where no connect check
/// runs. The one-statement write refuses it before reading anything
/// (LE016), and the batch is written in the framed transaction, which pins
/// READ COMMITTED: a waiting write still sees what `forget` committed.
#[tokio::test]
async fn an_isolation_level_stored_after_connecting_sends_the_write_to_the_framed_transaction() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let role = db.role_name(Role::Ingest);
    let admin = db.client().await;
    // Each row's transaction: the session's default level and its own.
    admin
        .batch_execute(
            "CREATE TABLE seen (default_level text, level text); \
             CREATE FUNCTION seen() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN \
               INSERT INTO seen VALUES (current_setting('default_transaction_isolation'), \
                                        current_setting('transaction_isolation')); RETURN NULL; END $$; \
             CREATE TRIGGER seen AFTER INSERT ON user_logins_rows FOR EACH ROW EXECUTE FUNCTION seen()",
        )
        .await
        .unwrap();
    let bouncer = PgBouncer::start_for(admin_port(), 1, &[&role]);
    let h = handler_with(&[
        ("DATABASE_URL", &through_port(&ingest, bouncer.port)),
        ("MASKING_KEY", TEST_KEY),
    ])
    .await;
    let batch = |seed| {
        synth::event(&Options {
            count: 10,
            seed,
            ..Options::default()
        })
    };
    handle_all_ok(&h, &batch(91)).await;
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{role}\" SET default_transaction_isolation = 'repeatable read'"
        ))
        .await
        .unwrap();
    // The pooler's server connection ends; its next one starts under the
    // stored setting, behind the function's open client connection.
    let ended: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1) t",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "the pool's one server connection");
    wait_until("PgBouncer closes the ended server connection", || async {
        bouncer.log().contains("closing because")
    })
    .await;
    // The one statement alone, in a session under that level: refused.
    let arrays = login_etl::contract::columns::array_types()
        .split(',')
        .count();
    let refused = connect(&ingest)
        .await
        .query(
            &format!(
                "SELECT * FROM login_etl_write_tx(1000, 0, 1, 1, {})",
                vec!["NULL"; arrays].join(", ")
            ),
            &[],
        )
        .await
        .expect_err("a write at REPEATABLE READ");
    assert_eq!(refused.code().map(|c| c.code()), Some("LE016"), "{refused}");
    handle_all_ok(&h, &batch(92)).await;
    let levels: Vec<(String, String, i64)> = admin
        .query(
            "SELECT default_level, level, count(*) FROM seen GROUP BY 1, 2 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        levels,
        [
            ("read committed".to_owned(), "read committed".to_owned(), 10),
            (
                "repeatable read".to_owned(),
                "read committed".to_owned(),
                10
            ),
        ],
        "the second batch ran on a server connection under the stored level, at READ COMMITTED"
    );
}
