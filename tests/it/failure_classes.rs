//! A write refused because of the deployment's configuration (keys behind
//! the database's version or replaced, a schema not migrated, a missing
//! grant) is counted under a `failure_class` that names it, in the
//! invocation's error and in its EMF document, never as an unavailable
//! database: on-call looks at the secret, the migration or the grants.

use crate::common;

use common::keys::*;
use common::*;
use login_etl::privacy::rekey::{self, RekeyOptions};
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{BatchHandler, Deadline, SqsBatch};

/// The batch's failure: its class and retryability, as the invocation's
/// error and as the EMF document counts it.
async fn fails(h: BatchHandler, seed: u64) -> (&'static str, bool, String) {
    let (metrics, docs) = captured_metrics();
    let h = h.with_metrics(metrics);
    let event = synth::event(&Options {
        count: 20,
        seed,
        ..Options::default()
    });
    let e = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .expect_err("the batch fails as a whole");
    let emf: Vec<String> = docs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|d| d["failure_class"].as_str().map(str::to_owned))
        .collect();
    assert!(
        emf.iter().all(|c| c == e.class()),
        "{emf:?} vs {}",
        e.class()
    );
    assert!(!emf.is_empty(), "an EMF document names the class");
    (e.class(), e.is_retryable(), e.to_string())
}

async fn function(url: &str, masking: &str, erasure: &str) -> BatchHandler {
    handler_with(&[
        ("DATABASE_URL", url),
        ("MASKING_KEY", masking),
        ("ERASURE_KEY", erasure),
    ])
    .await
}

#[tokio::test]
async fn a_replaced_key_and_a_key_behind_the_database_are_classes_of_their_own() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    // The first function records its keys' check values.
    let first = function(&ingest, &doc(&K, 1), &doc(&E, 1)).await;
    handle_all_ok(&first, &synth::event(&Options::default())).await;

    // The secret replaced (a new key as version 1): refused for good.
    let replaced = function(&ingest, K[1], &doc(&E, 1)).await;
    let (class, retryable, text) = fails(replaced, 2).await;
    assert_eq!(class, "key_mismatch", "{text}");
    assert!(!retryable);
    assert!(
        text.contains("not the one the stored tokens are under"),
        "{text}"
    );

    // A rotation began; this function holds version 1 only and cannot read
    // the secret again: retried, under its own class.
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let mut rotate = connect(&db.role_url(Role::Rotate).await).await;
    rekey::rotate(
        &mut rotate,
        &masker(2),
        CALLER,
        RekeyOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap();
    let behind = function(&ingest, &doc(&K, 1), &doc(&E, 1)).await;
    let (class, retryable, text) = fails(behind, 3).await;
    assert_eq!(class, "key_version_behind", "{text}");
    assert!(
        retryable,
        "the batch is retried once the secret has the new version"
    );
    assert!(
        !text.contains(K[0]) && !text.contains(K[1]),
        "no key in the error"
    );
}

#[tokio::test]
async fn a_missing_index_and_a_missing_grant_are_classes_of_their_own() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    db.client()
        .await
        .batch_execute("DROP INDEX user_logins_rows_key")
        .await
        .unwrap();
    let (class, _, text) = fails(function(&ingest, TEST_KEY, &doc(&E, 1)).await, 4).await;
    assert_eq!(class, "schema_incomplete", "{text}");
    assert!(text.contains("login-etl migrate"), "{text}");

    let other = TestDb::create().await;
    other.migrate().await;
    let bare = other.bare_role_url().await;
    let (class, _, text) = fails(function(&bare, TEST_KEY, &doc(&E, 1)).await, 5).await;
    assert_eq!(class, "privilege_missing", "{text}");
    assert!(text.contains("login-etl grants"), "{text}");
}

#[tokio::test]
async fn a_database_migrated_by_an_older_version_is_a_schema_to_migrate() {
    // This version deployed before `login-etl migrate` ran: the database
    // is at version 8, without the write function of schema version 9.
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let owner = db.client().await;
    let back_to_8 = &format!(
        "DROP FUNCTION login_etl_write(bigint, integer, integer, {0}); \
         DROP FUNCTION login_etl_write_tx(integer, bigint, integer, integer, {0}); \
         DROP TABLE user_logins_schema; \
         CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer \
         LANGUAGE sql IMMUTABLE AS $$ SELECT 8 $$",
        login_etl::contract::columns::array_types()
    );
    owner.batch_execute(back_to_8).await.unwrap();
    let (class, retryable, text) = fails(function(&ingest, TEST_KEY, &doc(&E, 1)).await, 6).await;
    assert_eq!(class, "schema_incomplete", "{text}");
    assert!(!retryable, "{text}");
    assert!(text.contains("login-etl migrate"), "{text}");
    assert!(text.contains("login_etl_write"), "{text}");
    // Found by the schema check at connect, so batches of every size (the
    // COPY path's too) fail alike.
    assert!(text.contains("predates this version"), "{text}");

    // What the hint says: migrate, and the same role writes (version 9 grants
    // the function to the roles granted the check before it).
    db.migrate().await;
    let h = function(&ingest, TEST_KEY, &doc(&E, 1)).await;
    let event = synth::event(&Options {
        count: 20,
        seed: 6,
        ..Options::default()
    });
    let outcome = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .expect("written after migrate");
    assert_eq!(outcome.summary.inserted, 20);

    // Dropped after the function connected (the guard passed): the write's
    // own error says the same.
    owner.batch_execute(back_to_8).await.unwrap();
    let (class, _, text) = fails(h, 7).await;
    assert_eq!(class, "schema_incomplete", "{text}");
    assert!(text.contains("login-etl migrate"), "{text}");
    assert!(text.contains("SQLSTATE 42883"), "{text}");
}

/// The schema guard and the write need nothing kept for older binaries:
/// without 0.2.0's markers (`login_etl_schema_version()`,
/// `login_etl_profile()`, the two-argument `login_etl_refuse_erased` its
/// guard looks for) and the write checks of before
/// `login_etl_check_write`, a full schema takes a batch.
#[tokio::test]
async fn the_guard_and_the_write_need_nothing_kept_for_older_binaries() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    db.client()
        .await
        .batch_execute(
            "DROP FUNCTION login_etl_refuse_erased(bigint); \
             DROP FUNCTION login_etl_refuse_erased(bigint, integer); \
             DROP FUNCTION login_etl_refuse_erased(bigint, integer, integer); \
             DROP FUNCTION login_etl_refuse_erased_at(bigint, integer); \
             DROP FUNCTION login_etl_erased_below(smallint); \
             DROP FUNCTION login_etl_schema_version(); DROP FUNCTION login_etl_profile()",
        )
        .await
        .unwrap();
    let h = function(&ingest, TEST_KEY, &doc(&E, 1)).await;
    let event = synth::event(&Options {
        count: 20,
        seed: 8,
        ..Options::default()
    });
    let outcome = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .expect("written without them");
    assert_eq!(outcome.summary.inserted, 20);
}
