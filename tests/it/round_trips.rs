//! Round trips per batch, counted by a proxy that holds the server's
//! answers back until the client cannot go on without them
//! (tests/common/turns.rs). A warm batch on the INSERT path is one: BEGIN,
//! the write and COMMIT go out together. On the COPY path it is three:
//! BEGIN with the COPY's prepare (tokio-postgres prepares a COPY to start
//! it), the COPY's start, then the rows with the COPY's end, the erasure
//! check and COMMIT. A statement that waits for its answer adds one, and
//! fails here.

use crate::common;

use common::turns::{Turn, TurnCounter};
use common::*;
use login_etl::synth::{self, Options};
use login_etl::{Deadline, SqsBatch};

#[tokio::test]
async fn a_warm_insert_batch_is_one_round_trip_and_a_copy_batch_three() {
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
        (1_000, vec![Turn::Describe, Turn::CopyIn, Turn::Commit]),
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
