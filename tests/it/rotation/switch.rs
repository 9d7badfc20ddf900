//! Around the switch: roles from before the registry after migrate, a
//! writer that checks one version while the erasure list moves, and the
//! switch waiting for a forget in flight.

use super::*;

/// Roles granted before the role registry (migrations/0011) are found by
/// what their grants let them do, registered, and given what this version
/// adds (the function's vault write, `login_etl_store_vault`): the same
/// ingest role writes rows and vault entries after `migrate`.
#[tokio::test]
async fn roles_granted_before_the_registry_are_registered_and_keep_working_after_migrate() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let maintain = db.role_url(Role::Maintain).await;
    let admin = db.client().await;
    let (role, maintainer) = (db.role_name(Role::Ingest), db.role_name(Role::Maintain));
    // As the previous version left them: unregistered, without the new
    // function, at version 9.
    admin
        .batch_execute(&format!(
            "DELETE FROM user_logins_roles; \
             REVOKE EXECUTE ON FUNCTION login_etl_store_vault({}) FROM \"{role}\"; \
             DROP TABLE user_logins_schema; \
             CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer \
             LANGUAGE sql IMMUTABLE AS $$ SELECT 9 $$",
            login_etl::table::schema::STORE_VAULT_ARGS
        ))
        .await
        .unwrap();
    assert!(!store_vault_granted(&admin, &role).await, "revoked");
    apply_schema(&admin).await;
    assert!(
        store_vault_granted(&admin, &role).await,
        "migrate gives old roles the new function"
    );
    let registered: Vec<(String, String)> = admin
        .query(
            "SELECT role_name::text, kind::text FROM user_logins_roles ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        registered,
        [
            (role.clone(), "ingest".to_owned()),
            (maintainer, "maintain".to_owned())
        ]
    );
    let h = function(&ingest, 1).await;
    assert!(deliver(&h, &event(20, 81, None)).await.is_empty());
    let stored: i64 = admin
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored > 0, "the vault entries were written");
    drop(maintain);
}

async fn store_vault_granted(admin: &tokio_postgres::Client, role: &str) -> bool {
    admin
        .query_one(
            &format!(
                "SELECT has_function_privilege($1, 'login_etl_store_vault({})', 'EXECUTE')",
                login_etl::table::schema::STORE_VAULT_ARGS
            ),
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// While rotate-key moves the erasure list after a switch, a writer of the
/// release before (its check takes two arguments: it looked users up at its
/// own version only) would miss the users not moved yet: it is refused with
/// the code it retries on, until the list is moved. A writer of this
/// release, which looked them up from the list's old version, is not.
#[tokio::test]
async fn a_writer_that_checks_one_version_waits_while_the_erasure_list_moves() {
    let db = TestDb::create().await;
    let ingest = connect(&db.ingest_url().await).await;
    let admin = db.client().await;
    // A switched key (version 2, moving from 1) and a list entry still at 1.
    admin
        .batch_execute(
            "INSERT INTO user_logins_erased (user_key, key_version) VALUES (repeat('a', 64), 1); \
             UPDATE user_logins_key_state SET version = 2, rekey_from = 1",
        )
        .await
        .unwrap();
    let known: i64 = admin
        .query_one("SELECT max(seq) FROM user_logins_erased", &[])
        .await
        .unwrap()
        .get(0);
    let check = async |sql: &str| ingest.query(sql, &[&known]).await.map(|_| ());
    let previous = check("SELECT login_etl_refuse_erased($1::int8, 2)")
        .await
        .expect_err("the previous release's check, mid-move");
    assert_eq!(
        previous.code().map(|c| c.code()),
        Some("LE001"),
        "{previous}"
    );
    let message = previous.as_db_error().unwrap().message();
    assert!(message.contains("deploy the current version"), "{message}");
    check("SELECT login_etl_refuse_erased($1::int8, 2, 1)")
        .await
        .expect("version 7's check, having looked users up from version 1");
    check("SELECT login_etl_check_write($1::int8, 2, 1)")
        .await
        .expect("this release's check, having looked users up from version 1");
    let mid = check("SELECT login_etl_check_write($1::int8, 2, 2)")
        .await
        .expect_err("this release's check, having looked users up at version 2 only");
    assert_eq!(mid.code().map(|c| c.code()), Some("LE001"), "{mid}");
    for (sql, code) in [
        ("SELECT login_etl_check_write($1::int8, 1, 1)", "LE002"),
        ("SELECT login_etl_check_write($1::int8 - 1, 2, 1)", "LE001"),
    ] {
        let e = check(sql).await.expect_err(sql);
        assert_eq!(e.code().map(|c| c.code()), Some(code), "{sql}: {e}");
    }

    // The list moved (as rotate-key's chunk does): both pass.
    admin
        .batch_execute("UPDATE user_logins_erased SET user_key = repeat('b', 64), key_version = 2")
        .await
        .unwrap();
    check("SELECT login_etl_refuse_erased($1::int8, 2)")
        .await
        .expect("the list is moved");
    check("SELECT login_etl_refuse_erased($1::int8, 2, 2)")
        .await
        .expect("the list is moved");
    check("SELECT login_etl_check_write($1::int8, 2, 2)")
        .await
        .expect("the list is moved");
}

/// The soak's 30-minute run: `rotate-key` beside erasure requests stopped
/// with "N erasures (login-etl forget) are unfinished" whenever a forget
/// was between its deletes and its end. The switch now waits for them (an
/// erasure in flight ends in seconds) and refuses only one that stays
/// unfinished: here a real forget stopped half way by a lock it could not
/// get, then run again while rotate-key waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_waits_for_a_forget_in_flight_and_refuses_one_that_stopped() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "0c4d2b7e-9a1f-4c3e-8d5b-6f7a8b9c0d1e";
    assert!(
        deliver(&function(&ingest, 1).await, &event(60, 23, Some(user)))
            .await
            .is_empty()
    );
    let erase_url = db.role_url(Role::Erase).await;
    let users = UserKeys::new(&KeyVersions::parse(&doc(&E, 1), "test").unwrap());
    let mut eraser = connect(&erase_url).await;

    // A forget stopped after its deletes: the held-entries table locked
    // away from it (its moment's lock waits 100 ms, then it gives up).
    let admin = db.client().await;
    admin
        .batch_execute("BEGIN; LOCK TABLE user_logins_pii_vault_held IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let stopped = login_etl::privacy::forget::forget(&mut eraser, user, &users, CALLER).await;
    admin.batch_execute("ROLLBACK").await.unwrap();
    assert!(stopped.is_err(), "the forget stopped half way");
    let pending: i64 = admin
        .query_one("SELECT count(*) FROM user_logins_erasure_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pending > 0, "it left its tokens: an unfinished erasure");

    // Nobody runs it again: after its patience the switch refuses, says
    // what to do, names no user, and changes nothing.
    let mut rotator = connect(&db.role_url(Role::Rotate).await).await;
    let short = RekeyOptions {
        switch_patience: Duration::from_secs(1),
        ..RekeyOptions::default()
    };
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let refused = rekey::rotate(&mut rotator, &masker(2), CALLER, short, &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("1 erasures")
            && refused.contains("login-etl forget again")
            && refused.contains("nothing was changed"),
        "{refused}"
    );
    assert!(
        !refused.contains(user),
        "no user id in the error: {refused}"
    );
    let key_version = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i16>(0);
    assert_eq!(
        key_version(
            admin
                .query("SELECT version FROM user_logins_key_state", &[])
                .await
                .unwrap()
        ),
        1
    );

    // With its usual patience it waits while the forget is run again (as
    // the runbook says), then switches and finishes.
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let spawned_at: chrono::DateTime<chrono::Utc> = admin
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    let rotating = tokio::spawn(async move {
        let r = rekey::rotate(
            &mut rotator,
            &masker(2),
            CALLER,
            RekeyOptions::default(),
            &mut |_| {},
        )
        .await;
        r.map_err(|e| e.to_string())
    });
    // Its switch refused and waiting to try again: seen as its session's
    // ROLLBACK of a switch attempt (the only ROLLBACK rotate-key sends)
    // after the spawn, not as a time elapsed.
    let rotate_role = db.role_name(Role::Rotate);
    for polls in 0.. {
        let refused_once: bool = admin
            .query_one(
                "SELECT count(*) > 0 FROM pg_stat_activity WHERE usename = $1 \
                 AND query = 'ROLLBACK' AND state_change > $2",
                &[&rotate_role, &spawned_at],
            )
            .await
            .unwrap()
            .get(0);
        if refused_once {
            break;
        }
        assert!(
            polls < 6000 && !rotating.is_finished(),
            "no switch attempt seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!rotating.is_finished(), "the switch waits for the erasure");
    assert_eq!(
        key_version(
            admin
                .query("SELECT version FROM user_logins_key_state", &[])
                .await
                .unwrap()
        ),
        1,
        "not switched while the erasure is unfinished"
    );
    let done = login_etl::privacy::forget::forget(&mut eraser, user, &users, CALLER)
        .await
        .expect("the rerun finishes the erasure");
    assert_eq!(done.rows, 0, "its rows were deleted by the first run");
    let report = tokio::time::timeout(Duration::from_secs(60), rotating)
        .await
        .expect("rotate-key goes on once the erasure is finished")
        .unwrap()
        .expect("rotate-key finishes the first time");
    assert_eq!((report.from, report.to), (1, 2));
    let actions: Vec<String> = admin
        .query(
            "SELECT action FROM user_logins_pii_audit WHERE action IN ('forget', 'rekey_begun') ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        actions,
        ["forget", "rekey_begun"],
        "the erasure ended before the switch"
    );
    let theirs = count_rows_of(&admin, user).await;
    assert_eq!(theirs, 0);
}
