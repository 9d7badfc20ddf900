//! Erasure that holds (`login-etl forget`): atomic against concurrent
//! ingest, and sticky. The function runs as the ingest role, `forget` as the
//! erase role, with the PII vault on (a local data key).

use crate::common;

use std::collections::BTreeSet;

use aws_lambda_events::event::sqs::SqsEvent;
use common::*;
use login_etl::privacy::masking::{KeyVersions, Masker, MaskingKey, UserKeys};
use login_etl::synth::{self, Options};
use login_etl::table::privileges::Role;
use login_etl::{Deadline, Outcome, SqsBatch};
use serde_json::Value;

const CALLER: &str = "arn:aws:sts::123456789012:assumed-role/erasers/test";

fn key() -> login_etl::privacy::vault::DataKey {
    login_etl::privacy::vault::DataKey::new(&[0x42; 32], vec![1, 2, 3], "local").unwrap()
}

/// `count` records of which every `every`-th belongs to `user` (its user_id
/// replaced), with fresh message ids per `seed`.
fn batch_with(user: &str, count: usize, every: usize, seed: u64) -> SqsEvent {
    let mut event = synth::event(&Options {
        count,
        seed,
        ..Options::default()
    });
    for (i, m) in event.records.iter_mut().enumerate() {
        if i % every == 0 {
            let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            body["user_id"] = Value::from(user);
            m.body = Some(body.to_string());
        }
    }
    event
}

async fn rows_of(db: &TestDb, user: &str) -> i64 {
    count_rows_of(&db.client().await, user).await
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
}

/// Sessions of this database that wait on a lock (pg_stat_activity).
async fn waiting_on_locks(admin: &tokio_postgres::Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// A gate inside the ingest's write transaction: a statement trigger on
/// the rows' table that waits for an advisory lock the test holds, so the
/// transaction is provably in flight (locked, inserting, its check to
/// come or done) while forget starts. Armed: the test holds the lock.
async fn install_gate(admin: &tokio_postgres::Client) {
    install_write_gate(admin, 4242).await;
}

async fn remove_gate(admin: &tokio_postgres::Client) {
    admin
        .batch_execute(
            "SELECT pg_advisory_unlock(4242); DROP TRIGGER test_gate ON user_logins_rows",
        )
        .await
        .unwrap();
}

/// One round: the ingest role writes `batch` (with the vault: framed; without
/// and under 200 rows: the one statement) and stops at the gate; forget of
/// `user` starts and must wait behind it; the gate opens. The write lands,
/// then forget takes the user's rows written beside it. The gate is armed
/// again after.
async fn forget_beside_a_gated_write(
    db: &TestDb,
    (ingest, erase): (&str, &str),
    admin: &tokio_postgres::Client,
    masker: &Masker,
    user: &'static str,
    batch: &SqsEvent,
    vault: bool,
) -> login_etl::privacy::forget::Forgotten {
    let (url, b) = (ingest.to_owned(), batch.clone());
    let writer = tokio::spawn(async move {
        let h = handler_with(&[("DATABASE_URL", &url), ("MASKING_KEY", TEST_KEY)]).await;
        let h = if vault { h.with_vault(key()) } else { h };
        h.handle(&SqsBatch::from(&b), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .expect("no invocation error")
            .1
    });
    // The writer is at the gate: its transaction waits on the test's lock.
    let (w, a) = (&writer, admin);
    wait_until("the ingest's write waiting at the gate", || async move {
        w.is_finished() || waiting_on_locks(a).await >= 1
    })
    .await;
    assert!(!writer.is_finished(), "the write stopped at the gate");
    let (erase, users) = (erase.to_owned(), masker.users().clone());
    let eraser = tokio::spawn(async move {
        let mut eraser = connect(&erase).await;
        login_etl::privacy::forget::forget(&mut eraser, user, &users, CALLER)
            .await
            .expect("forget as the erase role")
    });
    // forget waits too: for the write's lock on user_logins_rows.
    let (e, a) = (&eraser, admin);
    wait_until("forget waiting behind the write", || async move {
        e.is_finished() || waiting_on_locks(a).await >= 2
    })
    .await;
    assert!(!eraser.is_finished(), "forget waited behind the write");
    admin
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .unwrap();
    let summary = writer.await.unwrap();
    let forgotten = eraser.await.unwrap();
    assert_eq!(
        summary.erased, 0,
        "in flight before the erasure, so written (then erased)"
    );
    assert!(forgotten.rows > 0, "forget waited for the write");
    assert_eq!(
        rows_of(db, user).await,
        0,
        "the user's rows written beside the erasure are gone"
    );
    admin
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    forgotten
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_beside_concurrent_ingest_leaves_nothing_of_the_user_and_no_row_without_its_vault_entry()
 {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let erase = db.role_url(Role::Erase).await;
    // One user per round: a COPY-sized batch, then a small one (INSERT path).
    let users = [
        "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0011",
        "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0022",
    ];
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let batches: Vec<SqsEvent> = (0..8usize)
        .map(|i| {
            batch_with(
                users[i % 2],
                if i % 4 == 0 { 600 } else { 40 },
                5,
                700 + i as u64,
            )
        })
        .collect();
    let admin = db.client().await;
    install_gate(&admin).await;
    let mut done = Vec::new();
    for (round, user) in users.into_iter().enumerate() {
        let forgotten = forget_beside_a_gated_write(
            &db,
            (&ingest, &erase),
            &admin,
            &masker,
            user,
            &batches[round],
            true,
        )
        .await;
        assert_vault_matches_rows(&db).await;
        done.push(forgotten);
    }
    remove_gate(&admin).await;
    println!(
        "forget deleted (rows, vault entries): {:?}",
        done.iter()
            .map(|d| (d.rows, d.vault_entries))
            .collect::<Vec<_>>()
    );

    // Delivered again after the forget (a redelivery, a DLQ redrive): not
    // stored, not failed, not sent anywhere; the rest of each batch is.
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    for b in &batches {
        let of_users: BTreeSet<String> = b
            .records
            .iter()
            .filter(|m| users.iter().any(|u| m.body.as_deref().unwrap().contains(u)))
            .map(|m| m.message_id.clone().unwrap())
            .collect();
        let (resp, summary) = h
            .handle(&SqsBatch::from(b), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .unwrap();
        assert_eq!(
            summary.erased,
            of_users.len(),
            "each record of the users is skipped"
        );
        assert!(
            resp.batch_item_failures
                .iter()
                .all(|f| !of_users.contains(&f.item_identifier)),
            "a record of an erased user is handled, not failed"
        );
        assert_eq!(summary.sent_to_dlq, 0);
    }
    for user in users {
        assert_eq!(
            rows_of(&db, user).await,
            0,
            "none of the users' rows survive"
        );
    }
    assert_vault_matches_rows(&db).await;
    let client = db.client().await;
    let others: i64 = client
        .query_one("SELECT count(DISTINCT user_id) FROM user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        others > 100,
        "everyone else's rows are there ({others} users)"
    );
    // The erasure list and the audit hold the keyed hash, never the id.
    let listed: BTreeSet<String> = client
        .query("SELECT user_key FROM user_logins_erased", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let keys: BTreeSet<String> = users
        .iter()
        .map(|u| masker.user_key(u).as_str().to_owned())
        .collect();
    assert_eq!(listed, keys);
    let audit = client
        .query(
            "SELECT caller_arn, user_key, rows_deleted FROM user_logins_pii_audit WHERE action = 'forget' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(audit.len(), 2);
    for (row, (user, d)) in audit.iter().zip(users.iter().zip(&done)) {
        assert_eq!(row.get::<_, String>(0), CALLER);
        assert_eq!(row.get::<_, String>(1), masker.user_key(user).as_str());
        assert_eq!(row.get::<_, i64>(2), d.rows as i64);
    }
    let dump: String = client
        .query_one(
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM user_logins_pii_audit UNION ALL \
             SELECT NULL, NULL, NULL, user_key, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM user_logins_erased) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        users.iter().all(|u| !dump.contains(u)),
        "the user ids are stored nowhere"
    );
}

/// The same race on the INSERT path's one statement (no vault, 40 rows),
/// whose check follows its INSERT: forget waits behind the write's lock
/// and erases what it wrote; the user's later messages are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_beside_the_one_statement_write_leaves_nothing_of_the_user() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let erase = db.role_url(Role::Erase).await;
    let user = "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0033";
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let batch = batch_with(user, 40, 5, 731);
    let admin = db.client().await;
    install_gate(&admin).await;
    forget_beside_a_gated_write(&db, (&ingest, &erase), &admin, &masker, user, &batch, false).await;
    remove_gate(&admin).await;
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;
    let summary = h
        .handle(
            &SqsBatch::from(&batch_with(user, 40, 5, 732)),
            Deadline::NONE,
        )
        .await
        .map(Outcome::into_parts)
        .unwrap()
        .1;
    assert_eq!(
        summary.erased, 8,
        "the user's messages after the erasure are skipped"
    );
    assert_eq!(rows_of(&db, user).await, 0);
}

#[tokio::test]
async fn the_audit_trail_is_append_only_even_for_its_owner() {
    let db = TestDb::create().await;
    db.migrate().await;
    let erase = connect(&db.role_url(Role::Erase).await).await;
    let audit = connect(&db.role_url(Role::Audit).await).await;
    erase
        .batch_execute(&format!(
            "SELECT login_etl_audit('forget', '{CALLER}', 'k', 0, 0, NULL)"
        ))
        .await
        .expect("the erase role may append its own records, through the owner's function");
    for (client, sql) in [
        (
            &erase,
            "INSERT INTO user_logins_pii_audit (action, caller_arn, user_key) VALUES ('forget', 'x', 'k')",
        ),
        (
            &erase,
            "SELECT login_etl_audit('reveal', 'x', NULL, NULL, NULL, NULL)",
        ),
        (&erase, "UPDATE user_logins_pii_audit SET caller_arn = 'x'"),
        (&erase, "DELETE FROM user_logins_pii_audit"),
        (&erase, "SELECT * FROM user_logins_pii_audit"),
        (&audit, "DELETE FROM user_logins_pii_audit"),
        (
            &audit,
            "INSERT INTO user_logins_pii_audit (action, caller_arn) VALUES ('reveal', 'x')",
        ),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    let owner = db.client().await;
    for sql in [
        "UPDATE user_logins_pii_audit SET caller_arn = 'x'",
        "DELETE FROM user_logins_pii_audit",
        "TRUNCATE user_logins_pii_audit",
        "DELETE FROM user_logins_erased",
        "TRUNCATE user_logins_erased",
        // Only a re-key (the next version, nothing else changed) may update it.
        "INSERT INTO user_logins_erased (user_key, key_version) VALUES (repeat('1', 64), 1); UPDATE user_logins_erased SET user_key = repeat('2', 64)",
        "INSERT INTO user_logins_erased (user_key, key_version) VALUES (repeat('1', 64), 1); UPDATE user_logins_erased SET user_key = repeat('2', 64), key_version = 3",
        "INSERT INTO user_logins_erased (user_key, key_version) VALUES (repeat('1', 64), 1); UPDATE user_logins_erased SET key_version = 2, erased_at = now() - interval '1 day'",
    ] {
        let e = owner.batch_execute(sql).await.unwrap_err();
        assert!(
            e.as_db_error().unwrap().message().contains("append-only"),
            "{sql}: {e}"
        );
    }
    // A forget from before key versions (it names no version) is refused.
    let e = owner
        .batch_execute("INSERT INTO user_logins_erased (user_key) VALUES ('k')")
        .await
        .unwrap_err();
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("predates key versions"),
        "{e}"
    );
    let records = login_etl::privacy::audit::audit_records(&audit, None)
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["caller_arn"], CALLER);
    assert_eq!(records[0]["action"], "forget");
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert!(
        login_etl::privacy::audit::audit_records(&audit, Some(later))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A `forget` that stops after deleting the rows (here: its vault step
/// fails once) is finished by the next run for the same user: the tokens
/// its deletes wrote take it to the vault entries, which go.
#[tokio::test]
async fn a_forget_stopped_after_the_deletes_is_finished_by_the_next_run() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let erase = db.role_url(Role::Erase).await;
    let user = "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0033";
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    h.handle(
        &SqsBatch::from(&batch_with(user, 60, 4, 933)),
        Deadline::NONE,
    )
    .await
    .expect("written");
    let admin = db.client().await;
    // The tokens only this user's rows use, before anything is deleted.
    let tokens: Vec<String> = admin
        .query(
            "(SELECT masked_ip FROM user_logins WHERE user_id = $1 \
               UNION SELECT masked_device_id FROM user_logins WHERE user_id = $1) \
             EXCEPT (SELECT masked_ip FROM user_logins WHERE user_id <> $1 \
               UNION SELECT masked_device_id FROM user_logins WHERE user_id <> $1)",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!tokens.is_empty());
    assert!(in_vault(&admin, &tokens).await > 0);
    // The vault step fails once: the run stops after its deletes.
    admin
        .batch_execute(
            "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'stopped by the test'; END $$; \
             CREATE TRIGGER test_refuse BEFORE INSERT ON user_logins_pii_vault_held \
             FOR EACH STATEMENT EXECUTE FUNCTION test_refuse();",
        )
        .await
        .unwrap();
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&erase).await;
    login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect_err("stopped after the deletes");
    assert_eq!(rows_of(&db, user).await, 0, "the rows went");
    assert!(
        in_vault(&admin, &tokens).await > 0,
        "the entries are still there"
    );
    admin
        .batch_execute("DROP TRIGGER test_refuse ON user_logins_pii_vault_held")
        .await
        .unwrap();
    let again = login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect("the second run");
    assert_eq!(again.rows, 0);
    assert!(again.vault_entries > 0);
    assert_eq!(
        in_vault(&admin, &tokens).await,
        0,
        "no entry of the user is left"
    );
    assert_vault_matches_rows(&db).await;
}

async fn in_vault(admin: &tokio_postgres::Client, tokens: &[String]) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM user_logins_pii_vault WHERE token = ANY($1)",
            &[&tokens],
        )
        .await
        .unwrap()
        .get(0)
}

/// Retention covers the vault (migrations/0010): `maintain` deletes the
/// entries whose every row is past retention and keeps those a row within
/// it uses, whose `last_seen` the function moved forward. So an erasure
/// asked after the user's rows aged out leaves nothing of them in the
/// vault, though `forget` finds no row of theirs (the soak, seed 2, found
/// the entries staying for ever).
#[tokio::test]
async fn retention_takes_the_vault_entries_of_aged_out_rows_so_a_later_erasure_leaves_nothing() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let maintainer = db.role_url(Role::Maintain).await;
    let erase = db.role_url(Role::Erase).await;
    let user = "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0088";
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    let day_ms = 86_400_000i64;
    let now_ms = chrono::Utc::now().timestamp_millis();
    // Ten days ago: the user's logins and others'.
    let mut old = batch_with(user, 40, 4, 1_071);
    for m in &mut old.records {
        m.attributes
            .insert("SentTimestamp".into(), (now_ms - 10 * day_ms).to_string());
    }
    h.handle(&SqsBatch::from(&old), Deadline::NONE)
        .await
        .expect("written");
    // Today: another user sends the values of old records 1 and 2 again.
    let mut today = synth::event(&Options {
        count: 2,
        seed: 1_072,
        sent_timestamp_ms: now_ms,
        ..Options::default()
    });
    for (m, again) in today.records.iter_mut().zip(&old.records[1..3]) {
        let mut body: Value = serde_json::from_str(again.body.as_deref().unwrap()).unwrap();
        body["user_id"] = Value::from("another-user-of-those-values");
        m.body = Some(body.to_string());
    }
    h.handle(&SqsBatch::from(&today), Deadline::NONE)
        .await
        .expect("written");
    let admin = db.client().await;
    let shared = tokens_of_rows(&admin, "create_date = current_date").await;
    let users_tokens = tokens_of_rows(&admin, &format!("user_id = '{user}'")).await;
    let entries = |tokens: Vec<String>| {
        let admin = &admin;
        async move { in_vault(admin, &tokens).await }
    };
    assert_eq!(shared.len(), 4);
    assert_eq!(entries(shared.clone()).await, 4);
    let moved: i64 = admin
        .query_one(
            "SELECT count(*) FROM user_logins_pii_vault WHERE token = ANY($1) AND last_seen = current_date",
            &[&shared],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(moved, 4, "the entries used today were seen today");
    let all_before = admin
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert!(users_tokens.len() >= 10 && entries(users_tokens.clone()).await > 0);

    record_retention(&admin, 5).await;
    let report = maintain_keeping(&maintainer, 5).await;
    assert_eq!(
        report.vault_entries_purged,
        all_before - 4,
        "every entry but those a row of today uses"
    );
    assert_eq!(entries(shared.clone()).await, 4, "the entries in use stay");
    assert_eq!(entries(users_tokens.clone()).await, 0);
    assert_vault_matches_rows(&db).await;

    // The erasure afterwards finds no row, and no entry is left to find.
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&erase).await;
    let done = login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect("forget");
    assert_eq!((done.rows, done.vault_entries), (0, 0));
    assert_eq!(entries(users_tokens).await, 0);
}

/// A database of the version before vault retention (no `last_seen`, no
/// `login_etl_purge_vault`) with its roles granted then: after `migrate`,
/// the function, `maintain` and `forget` work as those same roles, and
/// the entries from before are kept from the day of the migration.
#[tokio::test]
async fn roles_granted_before_vault_retention_keep_working_after_migrate() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let maintainer = db.role_url(Role::Maintain).await;
    let erase = db.role_url(Role::Erase).await;
    let user = "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0099";
    let admin = db.client().await;
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    h.handle(
        &SqsBatch::from(&batch_with(user, 30, 3, 1_081)),
        Deadline::NONE,
    )
    .await
    .expect("written");
    // Back to version 7: the column goes with its privileges (and version
    // 10's triggers), the new functions with theirs (version 9's write, 10's
    // vault functions), the role registry too: the migration finds the roles by
    // their grants and gives them what this version needs. The ingest role
    // holds version 7's check, as the grants of that version gave it.
    let ingest_role = db.role_name(Role::Ingest);
    // The erase role as that version's grants made it: a DELETE of its own
    // on the table (migrations/0018 takes it back).
    let erase_role = db.role_name(Role::Erase);
    admin
        .batch_execute(&format!(
            "GRANT DELETE ON user_logins TO \"{erase_role}\"; \
             ALTER TABLE user_logins_pii_vault DROP COLUMN last_seen CASCADE; \
             ALTER TABLE user_logins_pii_vault_held DROP COLUMN last_seen; \
             DROP TABLE user_logins_roles; \
             DROP FUNCTION login_etl_store_vault({}); \
             DROP FUNCTION login_etl_hold_vault(varchar, varchar[], varchar[]); \
             DROP FUNCTION login_etl_put_back_vault(varchar, varchar[], varchar[]); \
             DROP FUNCTION login_etl_purge_vault(date, bigint, integer); \
             DROP FUNCTION login_etl_check_write(bigint, integer, integer); \
             GRANT EXECUTE ON FUNCTION login_etl_refuse_erased(bigint, integer, integer) TO \"{ingest_role}\"; \
             DROP TABLE user_logins_schema; \
             CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer \
             LANGUAGE sql IMMUTABLE AS $$ SELECT 7 $$",
            login_etl::table::schema::STORE_VAULT_ARGS
        ))
        .await
        .unwrap();
    let entries: i64 = admin
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert!(entries > 0);
    apply_schema(&admin).await;
    let today: i64 = admin
        .query_one(
            "SELECT count(*) FROM user_logins_pii_vault WHERE last_seen = current_date",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        today, entries,
        "the entries from before are kept from today"
    );
    // The same roles: a new function writes (its entries and last_seen),
    // maintain purges, forget moves entries aside and back.
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    let outcome = h
        .handle(
            &SqsBatch::from(&batch_with(user, 30, 3, 1_082)),
            Deadline::NONE,
        )
        .await
        .expect("the function writes after the migration");
    assert_eq!(outcome.summary.inserted, 30);
    record_retention(&admin, 30).await;
    maintain_keeping(&maintainer, 30).await;
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&erase).await;
    let done = login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect("forget as the erase role granted before");
    assert!(done.rows > 0);
    assert_vault_matches_rows(&db).await;
    let may_delete: bool = admin
        .query_one(
            &format!("SELECT has_table_privilege('{erase_role}', 'user_logins', 'DELETE')"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !may_delete,
        "the migration took the erase role's DELETE back"
    );
}

/// `maintain` as the role of `url`, keeping `days` days.
async fn maintain_keeping(url: &str, days: u32) -> login_etl::table::maintain::MaintainReport {
    let client = connect(url).await;
    login_etl::table::maintain::run(
        &client,
        &login_etl::table::maintain::MaintainOptions {
            retention_days: Some(days),
            ..Default::default()
        },
    )
    .await
    .expect("maintain with retention as the maintain role")
}

/// The ip and device tokens of the rows that match `condition`.
async fn tokens_of_rows(admin: &tokio_postgres::Client, condition: &str) -> Vec<String> {
    admin
        .query(
            &format!(
                "SELECT masked_ip FROM user_logins WHERE {condition} \
                 UNION SELECT masked_device_id FROM user_logins WHERE {condition}"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// How often a `maintain` run as the maintain role read one of the vault's
/// heap pages (pg_statio's hits and reads, reset before), and what it
/// purged.
async fn vault_pages_read_by_maintain(
    admin: &tokio_postgres::Client,
    maintainer: &str,
) -> (i64, i64) {
    // The admin's own counts first (a VACUUM just read every page): a
    // backend flushes them when it goes idle, at most once a second unless
    // forced, and they must land before the reset, not after it.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    admin.batch_execute("SELECT 1").await.unwrap();
    admin
        .batch_execute(
            "SELECT pg_stat_reset_single_table_counters('user_logins_pii_vault'::regclass)",
        )
        .await
        .unwrap();
    record_retention(admin, 30).await;
    let client = connect(maintainer).await;
    let report = login_etl::table::maintain::run(
        &client,
        &login_etl::table::maintain::MaintainOptions {
            retention_days: Some(30),
            ..Default::default()
        },
    )
    .await
    .expect("maintain with retention");
    // Its counts reach the shared statistics when it goes idle after this.
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .unwrap();
    let pages: i64 = admin
        .query_one(
            "SELECT coalesce(heap_blks_read, 0) + coalesce(heap_blks_hit, 0) \
             FROM pg_statio_user_tables WHERE relid = 'user_logins_pii_vault'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (pages, report.vault_entries_purged)
}

/// `maintain`'s vault retention costs what it purges: through the index on
/// last_seen, a run reads the pages of the entries it deletes, and a run
/// with nothing newly past retention reads none of the vault's heap,
/// whatever its size (before the index every hourly run read every page:
/// 36,364 of a 2 M-entry vault to purge nothing).
#[tokio::test]
async fn the_vault_purge_reads_what_it_purges_and_nothing_when_nothing_is_due() {
    let db = TestDb::create().await;
    let admin = db.client().await;
    if server_version(&admin).await < 150_000 {
        // The page counts below are flushed on demand only from 15 on
        // (make test-pg13 / test-pg14 leave this test out).
        panic!("this test needs PostgreSQL 15 or later (pg_stat_force_next_flush)");
    }
    db.migrate().await;
    let maintainer = db.role_url(Role::Maintain).await;
    // 100,000 entries in use, 200 past retention, spread over the heap.
    admin
        .batch_execute(
            "ALTER TABLE user_logins_pii_vault SET (autovacuum_enabled = false); \
             INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version, last_seen) \
             SELECT 'ip', encode(sha256(g::text::bytea), 'hex'), 'k', '\\x000102030405060708090a0b'::bytea, \
                    '\\x00112233445566778899aabbccddeeff0011223344'::bytea, 1, 2, \
                    CASE WHEN g % 500 = 0 THEN current_date - 400 ELSE current_date END \
             FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    admin
        .batch_execute("VACUUM ANALYZE user_logins_pii_vault")
        .await
        .unwrap();
    // This session's counts reach the statistics now, not after a reset.
    admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    admin.batch_execute("SELECT 1").await.unwrap();
    let heap: i64 = admin
        .query_one(
            "SELECT pg_relation_size('user_logins_pii_vault') / current_setting('block_size')::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(heap > 1_000, "{heap} pages");
    let (read, purged) = vault_pages_read_by_maintain(&admin, &maintainer).await;
    assert_eq!(purged, 200);
    // Each entry: found through the index, locked, deleted (about six
    // page accesses).
    assert!(
        read <= 10 * 200,
        "purging 200 entries took {read} page accesses (the vault has {heap} pages)"
    );
    // The runs after, with nothing due, visit at most the entries just
    // deleted (until their index entries are marked dead or vacuumed: a
    // transaction elsewhere may hold that back), and no other.
    for _ in 0..2 {
        let (read, purged) = vault_pages_read_by_maintain(&admin, &maintainer).await;
        assert_eq!(purged, 0);
        assert!(
            read <= 2 * 200,
            "a run with nothing to purge took {read} page accesses (the vault has {heap} pages)"
        );
    }
    // Vacuumed (as autovacuum does between two hourly runs), none at all.
    admin
        .batch_execute("VACUUM user_logins_pii_vault")
        .await
        .unwrap();
    let (read, _) = vault_pages_read_by_maintain(&admin, &maintainer).await;
    assert!(
        read <= 5 || held_back(&admin).await,
        "a run with nothing to purge after a vacuum took {read} page accesses (the vault has {heap} pages)"
    );
}

/// Another transaction holds the horizon back, so the vacuum could not
/// remove the deleted entries yet (the tests beside this one).
async fn held_back(admin: &tokio_postgres::Client) -> bool {
    admin
        .query_one(
            "SELECT n_dead_tup > 0 FROM pg_stat_user_tables WHERE relid = 'user_logins_pii_vault'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Every statement the function sends is one its protocol means: across a
/// batch by COPY, a forget between two batches (the next one's write check
/// refuses it, the list is read again, the batch filtered again) and a
/// redelivery, the server sent it no WARNING (25P01, "there is no
/// transaction in progress", is a COMMIT or ROLLBACK sent outside one). The
/// connection's notices are read as the function's log gets them.
#[tokio::test]
async fn the_function_sends_no_statement_out_of_its_transactions() {
    let logs = Capture::default();
    let writer = logs.clone();
    // The connections' tasks run on this test's one thread: they log here.
    let _guard = tracing::subscriber::set_default(login_etl::logging::subscriber(
        move || writer.clone(),
        true,
        "debug",
    ));
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let erase = db.role_url(Role::Erase).await;
    let user = "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0033";
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    let first = batch_with(user, 600, 5, 900);
    h.handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .expect("the first batch");
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&erase).await;
    login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect("forget as the erase role");
    for (round, batch) in [batch_with(user, 600, 5, 901), batch_with(user, 40, 5, 902)]
        .iter()
        .enumerate()
    {
        let summary = h
            .handle(&SqsBatch::from(batch), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .expect("a batch after the forget")
            .1;
        assert!(
            summary.erased > 0,
            "round {round}: the user's logins were dropped"
        );
    }
    h.handle(&SqsBatch::from(&first), Deadline::NONE)
        .await
        .expect("the first batch again");
    assert_eq!(rows_of(&db, user).await, 0);
    let text = logs.text();
    assert!(
        text.contains("the database server noted"),
        "the notices reach the log (migrate's \"already exists\" ones at least)"
    );
    let warned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the database server warned"))
        .collect();
    assert!(warned.is_empty(), "{warned:#?}");
}

/// Erasure first: a login of an erased user that the contract would reject
/// (a null device id under CONTRACT=strict, an undeclared field under
/// UNKNOWN_FIELDS=reject) is skipped as erased: not rejected, not reported,
/// no copy; the same message of another user is rejected.
#[tokio::test]
async fn an_erased_users_login_is_skipped_before_any_rejection_under_every_contract() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "8c1f3a52-0d4e-4b7e-9a61-5e2f7d9c0b11";
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)])
        .await
        .with_vault(key());
    h.handle(
        &SqsBatch::from(&batch_with(user, 4, 2, 941)),
        Deadline::NONE,
    )
    .await
    .expect("written");
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    login_etl::privacy::forget::forget(&mut eraser, user, masker.users(), CALLER)
        .await
        .expect("erased");
    for (seed, setting, field, value) in [
        (942, ("CONTRACT", "strict"), "device_id", Value::Null),
        (
            943,
            ("UNKNOWN_FIELDS", "reject"),
            "email",
            Value::from("a@b.example"),
        ),
    ] {
        let h = handler_with(&[
            ("DATABASE_URL", &ingest),
            ("MASKING_KEY", TEST_KEY),
            setting,
        ])
        .await
        .with_vault(key());
        // Record 0 is the erased user's, record 1 another user's.
        let mut event = batch_with(user, 2, 2, seed);
        for m in &mut event.records {
            let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            body[field] = value.clone();
            m.body = Some(body.to_string());
        }
        let (resp, summary) = h
            .handle(&SqsBatch::from(&event), Deadline::NONE)
            .await
            .map(Outcome::into_parts)
            .expect("handled");
        let other = event.records[1].message_id.clone().unwrap();
        assert_eq!(summary.erased, 1, "{setting:?}: {summary:?}");
        assert_eq!(
            summary.rejected.values().sum::<usize>(),
            1,
            "{setting:?}: the other user's only"
        );
        assert_eq!(
            failures(&resp),
            [other],
            "{setting:?}: only the other user's is redelivered"
        );
        assert_eq!(summary.sent_to_dlq, 0);
    }
    assert_eq!(rows_of(&db, user).await, 0);
}

/// Issue 76, finding 5: the erase role deletes no user's rows under
/// another user's erasure. Each row carries its user's tag (8 bytes of the
/// SHA-256 of their user key, written by the function); the owner's delete
/// is undone (LE015) where a row of the user id it was given is tagged for
/// another key, and the erase role can neither read a tag nor compute one.
#[tokio::test]
async fn the_erase_role_deletes_no_other_users_rows_under_a_key_it_listed() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let erase = db.role_url(Role::Erase).await;
    let (victim, listed) = ("12345", "0f1e2d3c-4b5a-4697-8a9b-acbdcedf0076");
    // Tags are written under the erasure key's user keys (none under keys
    // derived from the masking key: its test is the last below).
    let erasure = "cd".repeat(32);
    let h = handler_with(&[
        ("DATABASE_URL", &ingest),
        ("MASKING_KEY", TEST_KEY),
        ("ERASURE_KEY", &erasure),
    ])
    .await
    .with_vault(key());
    // The victim's rows by COPY (a batch of 600), the listed user's by INSERT.
    for (user, count, seed) in [(victim, 600, 761), (listed, 40, 762)] {
        let batch = SqsBatch::from(&batch_with(user, count, 2, seed));
        h.handle(&batch, Deadline::NONE).await.expect("written");
    }
    let users = UserKeys::new(&KeyVersions::parse(&erasure, "test").unwrap());
    let admin = db.client().await;
    // Every row carries its own user's tag.
    for user in [victim, listed] {
        let tags: Vec<Option<i64>> = admin
            .query(
                "SELECT DISTINCT user_tag FROM user_logins WHERE user_id = $1",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(tags, [Some(users.user_key(user).tag())], "{user}");
    }
    let mut eraser = connect(&erase).await;
    let forgotten = login_etl::privacy::forget::forget(&mut eraser, listed, &users, CALLER)
        .await
        .expect("the listed user is erased");
    assert_eq!(forgotten.rows, 20);
    let before = rows_of(&db, victim).await;
    assert_eq!(before, 300);
    // The listed user's key, with the victim's id: nothing of theirs goes.
    let listed_key = users.user_key(listed);
    for null_dates in [false, true] {
        let e = eraser
            .query_one(
                "SELECT login_etl_forget_rows($1, $2, NULL, NULL, $3)",
                &[&victim, &listed_key.as_str(), &null_dates],
            )
            .await;
        match (null_dates, e) {
            // No row of theirs is without a date: nothing to refuse.
            (true, Ok(row)) => assert_eq!(row.get::<_, i64>(0), 0),
            (false, Err(e)) => {
                assert_eq!(e.code().map(|c| c.code()), Some("LE015"), "{e:?}");
                let message = e.as_db_error().unwrap().message();
                assert!(message.contains("tagged for another user key"), "{message}");
                assert!(!message.contains(victim), "{message}");
            }
            (_, other) => panic!("null_dates {null_dates}: {other:?}"),
        }
    }
    assert_eq!(rows_of(&db, victim).await, before, "the victim's rows stay");
    // The erase role reads no tag.
    let e = eraser
        .batch_execute("SELECT user_tag FROM user_logins")
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // The victim's own erasure still deletes every row of theirs.
    let theirs = login_etl::privacy::forget::forget(&mut eraser, victim, &users, CALLER)
        .await
        .expect("the victim's own erasure");
    assert_eq!(theirs.rows, 300);
    // A function without the erasure key, first to use a database (user
    // keys derived from the masking key: docs/runbooks/erasure.md, "Keyed
    // first without the erasure key"), writes rows without tags: the
    // erasure key's forget would take derived ones for another user's.
    let db = TestDb::create().await;
    let derived = handler_with(&[
        ("DATABASE_URL", &db.ingest_url().await),
        ("MASKING_KEY", TEST_KEY),
    ])
    .await
    .with_vault(key());
    let event = batch_with(victim, 40, 2, 763);
    derived
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .expect("written");
    let (rows, tagged): (i64, i64) = {
        let r = db
            .client()
            .await
            .query_one("SELECT count(*), count(user_tag) FROM user_logins", &[])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, tagged), (40, 0));
}
