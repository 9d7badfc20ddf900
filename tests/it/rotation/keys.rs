//! The keys an environment holds against the ones the database was keyed
//! under: refused, named, and checked at start without recording anything.

use super::*;

#[tokio::test]
async fn keys_that_are_not_the_ones_stored_under_are_refused() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let first = event(40, 61, None);
    assert!(
        deliver(&function(&ingest, 1).await, &first)
            .await
            .is_empty()
    );

    // The masking secret replaced instead of a version appended: the
    // function refuses to write tokens that match nothing stored.
    let replaced = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", K[1]),
        ("ERASURE_KEY", &doc(&E, 1)),
    ])
    .await;
    let err = replaced
        .handle(&SqsBatch::from(&event(10, 62, None)), Deadline::NONE)
        .await
        .map(|o| o.into_parts().0)
        .expect_err("a replaced masking key writes nothing");
    let text = err.to_string();
    assert!(
        text.contains("not the one the stored tokens are under")
            && text.contains("appends a version"),
        "{text}"
    );
    assert!(!text.contains(K[1]), "no key in the error");
    assert_eq!(count_rows(&db.client().await).await, 40, "nothing written");

    // forget with an erasure key that is not the list's: refused.
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let wrong = UserKeys::new(&KeyVersions::parse(K[1], "test").unwrap());
    let err = login_etl::privacy::forget::forget(&mut eraser, "someone", &wrong, CALLER)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not the one the erasure list is keyed with"),
        "{err}"
    );

    // rotate-key given a replaced masking key: refused before the switch.
    let mut rotator = connect(&db.role_url(Role::Rotate).await).await;
    let bad = Masker::versions(
        &KeyVersions::parse(&doc(&[K[1], K[0]], 2), "test").unwrap(),
        Some(&KeyVersions::parse(&doc(&E, 2), "test").unwrap()),
    )
    .unwrap();
    let err = rekey::rotate(
        &mut rotator,
        &bad,
        CALLER,
        RekeyOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not the one the stored tokens are under"),
        "{err}"
    );
    let version: i16 = db
        .client()
        .await
        .query_one("SELECT version FROM user_logins_key_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1, "nothing switched");
}

#[tokio::test]
async fn a_list_from_before_erasure_keys_keeps_its_derived_user_keys() {
    // A deployment upgraded with users already erased (by keys derived
    // from the masking key), whose stack update added an erasure key.
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let derived = UserKeys::derived(&KeyVersions::parse(K[0], "test").unwrap());
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "INSERT INTO user_logins_erased (user_key, key_version) VALUES ('{}', 1); \
             UPDATE user_logins_key_state SET erasure_derived = true",
            derived.user_key(user)
        ))
        .await
        .unwrap();
    // The function with an erasure key of its own still derives: the
    // erased user's messages are not stored.
    let h = function(&ingest, 1).await;
    let theirs = event(30, 71, Some(user));
    assert!(deliver(&h, &theirs).await.is_empty());
    let stored = count_rows_of(&admin, user).await;
    assert_eq!(stored, 0, "still erased");
    assert_eq!(count_rows(&admin).await, 20, "the others stored");
    // forget with only the erasure key cannot compute such user keys.
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let own = UserKeys::new(&KeyVersions::parse(&doc(&E, 1), "test").unwrap());
    let err = login_etl::privacy::forget::forget(&mut eraser, user, &own, CALLER)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MASKING_KEY_SECRET_ID"), "{err}");
    // With the masking key's derived keys it works.
    login_etl::privacy::forget::forget(&mut eraser, user, &derived, CALLER)
        .await
        .unwrap();
}

/// An environment started without the erasure key (a `login-etl poll`
/// beside a deployment that has one) is refused, and told the missing
/// setting, not a rotation's advice; nothing is written.
#[tokio::test]
async fn an_environment_without_the_erasure_key_is_told_to_give_it() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let admin = db.client().await;
    // The deployment, with its erasure key, writes first (records its check).
    let with_key = function(&ingest, 1).await;
    assert!(deliver(&with_key, &event(10, 81, None)).await.is_empty());
    let before = count_rows(&admin).await;
    // The consumer, masking key only: told at start (what `login-etl poll`
    // asks before its first receive), then by every batch.
    let without = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", &doc(&K, 1))]).await;
    let at_start = without
        .verify_keys(Duration::from_secs(10))
        .await
        .expect_err("refused at start")
        .to_string();
    assert!(
        at_start.contains("no erasure key") && at_start.contains("ERASURE_KEY_SECRET_ID"),
        "{at_start}"
    );
    let err = without
        .handle(&SqsBatch::from(&event(10, 82, None)), Deadline::NONE)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("no erasure key") && err.contains("ERASURE_KEY_SECRET_ID"),
        "{err}"
    );
    assert!(!err.contains("rotation"), "not a rotation's advice: {err}");
    assert_eq!(count_rows(&admin).await, before, "nothing written");
}

/// A database keyed first by an environment without the erasure key
/// (its user keys derived): the deployment that has the key is refused
/// with that cause and the runbook's section, not the replaced-secret
/// advice; the runbook's remedy as written, with no erasure made since
/// (the check forgotten by the owner), lets it write at its next batch
/// (no restart), and that write records its key.
#[tokio::test]
async fn a_list_keyed_first_without_the_erasure_key_is_named_as_such() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let admin = db.client().await;
    let without = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", &doc(&K, 1))]).await;
    assert!(deliver(&without, &event(10, 84, None)).await.is_empty());
    let with_key = function(&ingest, 1).await;
    let err = with_key
        .handle(&SqsBatch::from(&event(10, 85, None)), Deadline::NONE)
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("keyed first by an environment without an erasure key")
            && err.contains("Keyed first without the erasure key"),
        "{err}"
    );
    assert!(
        !err.contains("put back the secret"),
        "not the replaced-secret advice: {err}"
    );
    let erased: i64 = admin
        .query_one("SELECT count(*) FROM user_logins_erased", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(erased, 0);
    // The runbook's remedy, its SQL as written (as the tables' owner).
    let page = include_str!("../../../docs/runbooks/erasure.md");
    let remedy = page
        .split("## Keyed first without the erasure key")
        .nth(1)
        .and_then(|s| s.split("```sql\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("erasure.md's remedy block");
    admin.batch_execute(remedy).await.unwrap();
    assert!(deliver(&with_key, &event(10, 86, None)).await.is_empty());
    let recorded: bool = admin
        .query_one(
            "SELECT erasure_check IS NOT NULL FROM user_logins_key_state",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        recorded,
        "the erasure key's check recorded by the keyed write"
    );
}

/// The start's check records nothing: on a database whose keys nobody has
/// recorded it passes (and leaves them unrecorded, so the first batch's
/// writer, not the first process started, records them); a different
/// masking key is refused at start once a batch recorded one.
#[tokio::test]
async fn the_keys_are_checked_at_start_and_nothing_is_recorded_by_it() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let admin = db.client().await;
    let checks =
        "SELECT masking_check IS NULL AND erasure_check IS NULL FROM user_logins_key_state";
    let without = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", &doc(&K, 1))]).await;
    without
        .verify_keys(Duration::from_secs(10))
        .await
        .expect("nothing recorded: nothing to refuse");
    let none: bool = admin.query_one(checks, &[]).await.unwrap().get(0);
    assert!(none, "the start's check recorded nothing");
    // The deployment with its erasure key writes first and records both.
    let with_key = function(&ingest, 1).await;
    assert!(deliver(&with_key, &event(10, 83, None)).await.is_empty());
    with_key
        .verify_keys(Duration::from_secs(10))
        .await
        .expect("its own keys pass");
    // Another masking key (a secret replaced): refused at start.
    let other = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", &"ef".repeat(32))]).await;
    let err = other
        .verify_keys(Duration::from_secs(10))
        .await
        .expect_err("another key is refused at start");
    assert_eq!(
        login_etl::HandlerError::class_of(&err),
        "key_mismatch",
        "{err}"
    );
}
