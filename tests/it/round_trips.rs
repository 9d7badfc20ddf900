//! Round trips per batch, counted by a proxy that holds the server's
//! answers back until the client cannot go on without them
//! (tests/common/turns.rs). A warm batch on the INSERT path is one: its
//! one statement, committed by its Sync (a framed write's BEGIN, write and
//! COMMIT go out together, one too). On the COPY path it is two:
//! BEGIN with the COPY's start (unnamed: Parse, Bind and Execute together),
//! answered by CopyInResponse, then the rows with the COPY's end, the
//! erasure check and COMMIT. A statement that waits for its answer adds
//! one, and fails here, as a COPY that is prepared first does.

use crate::common;

use common::turns::{Turn, TurnCounter};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, SqsBatch};

#[tokio::test]
async fn a_warm_insert_batch_is_one_round_trip_and_a_copy_batch_two() {
    let db = TestDb::create().await;
    let counter = TurnCounter::start(admin_port()).await;
    let url = through_port(&db.ingest_url().await, counter.port);
    let h = handler_with(&[
        ("DATABASE_URL", &url),
        ("MASKING_KEY", &keys::doc(&keys::K, 1)),
        ("ERASURE_KEY", &keys::doc(&keys::E, 1)),
    ])
    .await;
    let batch = |count, seed| {
        synth::event(&Options {
            count,
            seed,
            ..Options::default()
        })
    };
    // The cold start: the connection, its checks and the erasure list.
    handle_all_ok(&h, &batch(10, 1)).await;
    let rows = || async { count_rows(&db.client().await).await };
    for (count, want) in [
        (10, vec![Turn::Commit]),
        (1_000, vec![Turn::CopyIn, Turn::Commit]),
    ] {
        let before = rows().await;
        counter.count_from_now();
        let summary = h
            .handle(&SqsBatch::from(&batch(count, count as u64)), Deadline::NONE)
            .await
            .expect("the batch succeeds")
            .summary;
        assert_eq!(summary.inserted as usize, count, "every row written");
        assert_eq!(
            counter.turns(),
            want,
            "round trips of a batch of {count}, warm"
        );
        assert_eq!(rows().await - before, count as i64);
    }
}

/// vendor/tokio-postgres's COPY start (`copy_in_unnamed`, and upstream's
/// `copy_in` as patched there: Flush, not Sync, after Execute): a COPY the
/// server refuses before it entered copy-in mode returns the server's error
/// and leaves the connection in step. Upstream's extra ReadyForQuery made
/// the next statement fail (`unexpected message`). Refused at its Parse (the
/// unnamed COPY only: `copy_in` is refused at its prepare), at its start, and
/// inside an aborted transaction, as a batch's COPY is when its BEGIN's
/// LOCK TABLE times out (`copy_in` of a statement prepared before). The
/// next COPY on the connection then loads its rows.
#[tokio::test]
async fn a_copy_refused_at_its_start_leaves_the_connection_in_step() {
    use futures_util::SinkExt;
    let db = TestDb::create().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TEMP TABLE copied (n int)")
        .await
        .unwrap();
    for unnamed in [true, false] {
        for (setup, sql, code) in [
            ("", "COPY FROM nowhere", "42601"),
            ("", "COPY no_such_table FROM STDIN BINARY", "42P01"),
            (
                "BEGIN; SELECT 1/0;",
                "COPY copied FROM STDIN BINARY",
                "25P02",
            ),
        ] {
            if !unnamed && code == "42601" {
                continue;
            }
            let prepared = if unnamed {
                None
            } else {
                Some(client.prepare(sql).await.expect("a COPY is prepared"))
            };
            let _ = client.batch_execute(setup).await;
            let started = match &prepared {
                None => client.copy_in_unnamed::<bytes::Bytes>(sql).await,
                Some(statement) => client.copy_in::<_, bytes::Bytes>(statement).await,
            };
            let refused = started.err().unwrap_or_else(|| panic!("{sql} started"));
            if !setup.is_empty() {
                client.batch_execute("ROLLBACK").await.unwrap();
            }
            assert_eq!(refused.code().map(|c| c.code()), Some(code), "{refused}");
            let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
            assert_eq!(
                one, 1,
                "{sql} (unnamed: {unnamed}): the next statement answered"
            );
        }
    }
    let mut sink = Box::pin(
        client
            .copy_in_unnamed::<bytes::Bytes>("COPY copied FROM STDIN")
            .await
            .unwrap(),
    );
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .unwrap();
    assert_eq!(sink.as_mut().finish().await.unwrap(), 3);
    let n: i64 = client
        .query_one("SELECT count(*) FROM copied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

/// A COPY's start given up by its caller (the sink's client-side bound
/// dropping it) while the server waits on a lock, then refused there: the
/// connection stays in step. Upstream's Sync after Execute made the
/// refusal answer twice.
#[tokio::test]
async fn a_copy_dropped_while_it_waits_leaves_the_connection_in_step() {
    let db = TestDb::create().await;
    let holder = db.client().await;
    let client = db.client().await;
    holder
        .batch_execute("CREATE TABLE locked (n int)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE locked")
        .await
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let waits = || async {
        holder
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    let mut start = Box::pin(client.copy_in_unnamed::<bytes::Bytes>("COPY locked FROM STDIN"));
    tokio::select! {
        started = &mut start => panic!("the COPY did not wait for the lock: {:?}", started.err()),
        _ = wait_until("the COPY waits on the lock", waits) => {}
    }
    drop(start);
    holder
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the next statement answered");
    holder.batch_execute("ROLLBACK").await.unwrap();
}
