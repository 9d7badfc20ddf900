//! Masking-key rotation (`login-etl rotate-key`, src/privacy/rekey/) against the
//! real PostgreSQL, each program as the role `login-etl grants` names for
//! it: the function as the ingest role, rotate-key as the rotate role,
//! forget as the erase role with the erasure key only. The PII vault is on
//! (a local data key, so entries are checked by decrypting them).

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use common::keys::*;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::testing::grants::Role;
use login_etl::testing::ingest::handler::BatchHandler;
use login_etl::testing::privacy::masking::{KeyVersions, Masker, UserKeys};
use login_etl::testing::privacy::rekey::{self, RekeyOptions};
use login_etl::testing::privacy::vault::Kind;
use login_etl::{Deadline, SqsBatch};
use serde_json::Value;

/// The function, as the ingest role, holding key versions 1..=n.
async fn function(url: &str, n: usize) -> BatchHandler {
    handler_with(&[
        ("DATABASE_URL", url),
        ("MASKING_KEY", &doc(&K, n)),
        ("ERASURE_KEY", &doc(&E, n)),
    ])
    .await
    .with_vault(data_key())
}

/// A warm function that holds version 1 only and, asked again, reads a
/// secret that now holds version 2 too (the rollout window).
async fn warm_function_on_the_old_key(url: &str) -> BatchHandler {
    function(url, 1)
        .await
        .with_key_reload(Box::new(|| Box::pin(async { Ok::<_, String>(masker(2)) })))
}

/// `count` synthetic records; with `user`, every third is theirs.
fn event(count: usize, seed: u64, user: Option<&str>) -> SqsEvent {
    let mut event = synth::event(&Options {
        count,
        seed,
        ..Options::default()
    });
    if let Some(user) = user {
        for m in event.records.iter_mut().step_by(3) {
            let mut body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            body["user_id"] = Value::from(user);
            m.body = Some(body.to_string());
        }
    }
    event
}

/// The same logins delivered again as new messages (new ids): duplicates
/// an analyst would want to match across the rotation.
fn again(event: &SqsEvent, tag: &str) -> SqsEvent {
    let mut copy = event.clone();
    for m in &mut copy.records {
        m.message_id = m.message_id.as_ref().map(|id| format!("{id}-{tag}"));
    }
    copy
}

/// message id -> (ip, device_id) as sent.
fn values(events: &[&SqsEvent]) -> HashMap<String, (IpAddr, String)> {
    let mut out = HashMap::new();
    for e in events {
        for m in &e.records {
            let body: Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
            out.insert(
                m.message_id.clone().unwrap(),
                (
                    body["ip"].as_str().unwrap().parse().unwrap(),
                    body["device_id"].as_str().unwrap().to_owned(),
                ),
            );
        }
    }
    out
}

/// The records `h` reports failed; all of them when the invocation failed
/// (retryable only: SQS redelivers the batch, nothing goes to the DLQ).
async fn deliver(h: &BatchHandler, event: &SqsEvent) -> Vec<String> {
    match h.handle(&SqsBatch::from(event), Deadline::NONE).await {
        Ok(outcome) => failures(&outcome.into_parts().0),
        Err(e) => {
            assert!(e.is_retryable(), "{e}");
            event
                .records
                .iter()
                .map(|m| m.message_id.clone().unwrap())
                .collect()
        }
    }
}

async fn rotate(db: &TestDb, n: usize, options: RekeyOptions) -> rekey::RekeyReport {
    // The owner arms the rotation first (rotate-key --arm); a rerun of a
    // rotation done or under way has nothing to arm.
    match rekey::arm(&db.client().await, &masker(n)).await {
        Ok(_) | Err(rekey::RekeyError::NothingToArm { .. }) => {}
        Err(e) => panic!("arming: {e}"),
    }
    let mut client = connect(&db.role_url(Role::Rotate).await).await;
    rekey::rotate(&mut client, &masker(n), CALLER, options, &mut |_| {})
        .await
        .expect("rotate-key as the rotate role")
}

/// Every row's tokens are those of its values at version `n`, computed
/// through the chain from scratch; returns the rows checked.
async fn assert_rows_at(db: &TestDb, n: usize, sent: &HashMap<String, (IpAddr, String)>) -> usize {
    let m = masker(n);
    let rows = db
        .client()
        .await
        .query(
            "SELECT message_id, masked_ip, masked_device_id, key_version FROM user_logins",
            &[],
        )
        .await
        .unwrap();
    for r in &rows {
        let id: String = r.get(0);
        let (ip, device) = &sent[&id];
        assert_eq!(r.get::<_, i16>(3), n as i16, "{id}: key_version");
        assert_eq!(r.get::<_, String>(1), m.ip(ip).as_str(), "{id}: masked_ip");
        assert_eq!(
            r.get::<_, String>(2),
            m.device_id(device).as_str(),
            "{id}: masked_device_id"
        );
    }
    rows.len()
}

/// Every token stored anywhere (rows, vault, held entries, erasure state).
async fn stored_tokens(db: &TestDb) -> BTreeSet<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT masked_ip FROM user_logins UNION SELECT masked_device_id FROM user_logins \
             UNION SELECT token FROM user_logins_pii_vault UNION SELECT token FROM user_logins_pii_vault_held \
             UNION SELECT token FROM user_logins_erasure_tokens UNION SELECT user_key FROM user_logins_erased \
             UNION SELECT token FROM user_logins_pii_audit UNION SELECT user_key FROM user_logins_pii_audit",
            &[],
        )
        .await
        .unwrap();
    rows.iter().filter_map(|r| r.get(0)).collect()
}

/// What an attacker holding one key (and a dictionary of the true values)
/// computes: HMAC under that key of every value; none may be stored.
fn assert_dictionary_matches_nothing(
    key_hex: &str,
    sent: &HashMap<String, (IpAddr, String)>,
    stored: &BTreeSet<String>,
) {
    let alone = Masker::new(
        &login_etl::testing::privacy::masking::MaskingKey::from_hex(key_hex, "attacker").unwrap(),
    );
    for (ip, device) in sent.values() {
        assert!(
            !stored.contains(alone.ip(ip).as_str()),
            "an ip token under one key alone"
        );
        assert!(
            !stored.contains(alone.device_id(device).as_str()),
            "a device token under one key alone"
        );
    }
}

#[tokio::test]
async fn tokens_follow_the_chain_duplicates_match_and_the_vault_still_reveals() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let first = event(300, 91, None);
    assert!(
        deliver(&function(&ingest, 1).await, &first)
            .await
            .is_empty()
    );

    let report = rotate(&db, 2, RekeyOptions::default()).await;
    assert_eq!((report.from, report.to, report.rows), (1, 2, 300));
    let entries: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        report.vault_entries, entries as u64,
        "every entry re-keyed once"
    );

    // The same logins again, as new messages, by a function on version 2.
    let second = again(&first, "after");
    assert!(
        deliver(&function(&ingest, 2).await, &second)
            .await
            .is_empty()
    );
    let sent = values(&[&first, &second]);
    assert_eq!(assert_rows_at(&db, 2, &sent).await, 600);
    let client = db.client().await;
    let unmatched: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins a WHERE a.message_id NOT LIKE '%-after' AND NOT EXISTS \
             (SELECT 1 FROM user_logins b WHERE b.message_id = a.message_id || '-after' \
              AND b.masked_ip = a.masked_ip AND b.masked_device_id = a.masked_device_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unmatched, 0,
        "each login matches its duplicate across the rotation"
    );

    // With the leaked key alone, or the new one alone, a dictionary of the
    // true values matches nothing stored.
    let stored = stored_tokens(&db).await;
    assert_dictionary_matches_nothing(K[0], &sent, &stored);
    assert_dictionary_matches_nothing(K[1], &sent, &stored);

    // The vault: one entry per value, under the new token, decrypting to
    // the value whose version-2 token it is.
    let m2 = masker(2);
    let key = data_key();
    let vault = client
        .query(
            "SELECT kind, token, nonce, ciphertext, aad_version, key_version FROM user_logins_pii_vault",
            &[],
        )
        .await
        .unwrap();
    let distinct: BTreeSet<String> = sent
        .values()
        .flat_map(|(ip, d)| [format!("ip:{ip}"), format!("device:{}", d.trim())])
        .collect();
    assert_eq!(vault.len(), distinct.len(), "no entry lost, none doubled");
    for r in &vault {
        let kind = Kind::parse(r.get(0)).unwrap();
        let token: String = r.get(1);
        let value = key
            .open(kind, &token, r.get(4), r.get(2), r.get(3))
            .expect("the entry decrypts under its new token");
        let recomputed = match kind {
            Kind::Ip => m2.ip(&value.parse().unwrap()),
            Kind::DeviceId => m2.device_id(&value),
        };
        assert_eq!(recomputed.as_str(), token, "bound to its new token");
        assert_eq!(r.get::<_, i16>(5), 2);
    }

    // The audit trail: who, when, which versions, how many.
    let audit = connect(&db.role_url(Role::Audit).await).await;
    let records = login_etl::testing::privacy::audit::audit_records(&audit, None)
        .await
        .unwrap();
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rekey_begun", "rekey"]);
    let end = &records[1];
    assert_eq!(end["caller_arn"], CALLER);
    assert_eq!(end["detail"]["from_version"], 1);
    assert_eq!(end["detail"]["to_version"], 2);
    assert_eq!(end["detail"]["rows_rekeyed"], 300);
    assert_eq!(end["detail"]["vault_entries_rekeyed"], entries);
    assert!(end["at"].as_str().is_some());

    // The rotate role reads tokens, never a ciphertext, and writes no row.
    let rotator = connect(&db.role_url(Role::Rotate).await).await;
    for sql in [
        "SELECT ciphertext FROM user_logins_pii_vault",
        "SELECT user_id FROM user_logins",
        "UPDATE user_logins SET user_id = 'x'",
        "INSERT INTO user_logins (user_id) VALUES ('x')",
        "UPDATE user_logins_key_state SET version = 1",
    ] {
        let e = rotator.batch_execute(sql).await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    // A function from before key versions (its check takes one argument)
    // is refused with the code it retries on, never a row under version 1.
    let old = client
        .batch_execute("SELECT login_etl_refuse_erased(0::bigint)")
        .await
        .unwrap_err();
    assert_eq!(old.code().map(|c| c.code()), Some("LE001"));
    let message = old.as_db_error().unwrap().message();
    assert!(message.contains("predates key versions"), "{message}");

    // Run again: nothing left to do, nothing re-keyed twice.
    let again = rotate(&db, 2, RekeyOptions::default()).await;
    assert_eq!((again.rows, again.vault_entries), (0, 0));
    assert_rows_at(&db, 2, &sent).await;
}

#[tokio::test]
async fn an_erasure_survives_rotations_and_forget_holds_no_masking_key() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "5e1f7c9a-2b4d-4e6f-8a1b-3c5d7e9f1a2b";
    let first = event(90, 17, Some(user));
    assert!(
        deliver(&function(&ingest, 1).await, &first)
            .await
            .is_empty()
    );

    // forget with the erasure key alone: it computes user keys, no token.
    let erase_url = db.role_url(Role::Erase).await;
    let erasure_only = UserKeys::new(&KeyVersions::parse(&doc(&E, 1), "test").unwrap());
    let mut eraser = connect(&erase_url).await;
    let done =
        login_etl::testing::privacy::forget::forget(&mut eraser, user, &erasure_only, CALLER)
            .await
            .expect("forget with the erasure key only");
    assert_eq!(done.rows, 30);

    let report = rotate(&db, 2, RekeyOptions::default()).await;
    assert_eq!(report.erasures, 1, "the list re-keyed after the switch");
    assert_eq!(report.audit_records, 2, "forget_begun and forget");
    let client = db.client().await;
    // The audit trail too: its user keys are of version 2, none of version 1.
    let audited: Vec<(String, i16)> = client
        .query(
            "SELECT user_key, key_version FROM user_logins_pii_audit WHERE user_key IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let v2 = masker(2).user_key(user).as_str().to_owned();
    assert_eq!(audited, [(v2.clone(), 2), (v2, 2)]);
    let stored = stored_tokens(&db).await;
    let v1_alone = UserKeys::new(&KeyVersions::parse(E[0], "test").unwrap()).user_key(user);
    assert!(
        !stored.contains(v1_alone.as_str()),
        "no user key under the retired erasure key alone, the audit trail's included"
    );
    let listed: Vec<(String, i16)> = client
        .query("SELECT user_key, key_version FROM user_logins_erased", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        listed,
        [(masker(2).user_key(user).as_str().to_owned(), 2)],
        "the erasure list moved to version 2"
    );
    // Each value the rotation replaced is kept beside its replacement, in
    // a record no role of login-etl's may read or change, and not even
    // the owner may rewrite.
    let v1 = erasure_only.user_key(user).as_str().to_owned();
    let kept: Vec<(String, String, String, i16)> = client
        .query(
            "SELECT source, old_user_key, new_user_key, to_version FROM user_logins_rekeyed ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let v2 = masker(2).user_key(user).as_str().to_owned();
    let mut sources: Vec<&str> = kept.iter().map(|k| k.0.as_str()).collect();
    sources.sort_unstable();
    assert_eq!(sources, ["audit", "audit", "erased"], "{kept:?}");
    assert!(
        kept.iter().all(|k| (&k.1, &k.2, k.3) == (&v1, &v2, 2)),
        "{kept:?}"
    );
    let rotator = connect(&db.role_url(Role::Rotate).await).await;
    for statement in [
        "SELECT * FROM user_logins_rekeyed",
        "DELETE FROM user_logins_rekeyed",
    ] {
        let denied = rotator.batch_execute(statement).await.unwrap_err();
        assert_eq!(
            denied.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{statement}"
        );
    }
    for statement in [
        "DELETE FROM user_logins_rekeyed",
        "UPDATE user_logins_rekeyed SET old_user_key = new_user_key",
        "TRUNCATE user_logins_rekeyed",
    ] {
        let refused = client.batch_execute(statement).await.unwrap_err();
        assert!(
            format!("{refused:?}").contains("append-only"),
            "{statement}: {refused:?}"
        );
    }

    // The user's logins delivered again, to a function on version 2 and to
    // a warm one still on version 1: none is stored, none fails.
    for (h, tag) in [
        (function(&ingest, 2).await, "new"),
        (warm_function_on_the_old_key(&ingest).await, "warm"),
    ] {
        let later = again(&first, tag);
        assert!(deliver(&h, &later).await.is_empty(), "{tag}");
        let theirs = count_rows_of(&client, user).await;
        assert_eq!(
            theirs, 0,
            "{tag}: an erased user stays erased after the rotation"
        );
        assert_eq!(
            count_rows(&client).await % 60,
            0,
            "{tag}: the others are stored"
        );
    }

    // forget after the rotation, with the erasure key's version 2: the
    // same list entry (nothing new), and an erase key a version behind is
    // refused with what to do.
    let both = UserKeys::new(&KeyVersions::parse(&doc(&E, 2), "test").unwrap());
    login_etl::testing::privacy::forget::forget(&mut eraser, user, &both, CALLER)
        .await
        .unwrap();
    let entries: i64 = client
        .query_one("SELECT count(*) FROM user_logins_erased", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(entries, 1);
    let behind = login_etl::testing::privacy::forget::forget(
        &mut eraser,
        "another-user",
        &erasure_only,
        CALLER,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        behind.contains("version 2") && behind.contains("ERASURE_KEY_SECRET_ID"),
        "{behind}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_killed_half_way_and_run_again_rekeys_each_row_exactly_once() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let events: Vec<SqsEvent> = (0..4).map(|i| event(1500, 300 + i, None)).collect();
    let h = function(&ingest, 1).await;
    for e in &events {
        assert!(deliver(&h, e).await.is_empty());
    }
    let total = 6000;
    let client = db.client().await;

    // Killed mid-run: the task (and its connection) dropped wherever it is,
    // as kill -9 would, once some chunks have committed.
    let url = db.role_url(Role::Rotate).await;
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let run = tokio::spawn(async move {
        let mut c = connect(&url).await;
        let options = RekeyOptions {
            chunk_pages: 1,
            ..RekeyOptions::default()
        };
        rekey::rotate(&mut c, &masker(2), CALLER, options, &mut |_| {}).await
    });
    let mut progressed = 0;
    for _ in 0..400 {
        progressed = client
            .query_one("SELECT rekey_rows FROM user_logins_key_state", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if progressed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.abort();
    let _ = run.await;
    assert!(progressed > 0, "some chunks committed before the kill");
    // The killed run's session ends on the server a moment later (a COMMIT
    // it had sent may still land): count only once it is gone, as an
    // operator's rerun after kill -9 would find it.
    let role = db.role_name(Role::Rotate);
    for _ in 0..200 {
        let sessions: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (at_v2, from): (i64, Option<i16>) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM user_logins WHERE key_version = 2), rekey_from FROM user_logins_key_state",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(from, Some(1), "the re-key is still under way");
    assert!(
        at_v2 > 0 && at_v2 < total,
        "stopped half way: {at_v2} of {total}"
    );

    // `rotate-key --status` as the rotate role: the exposure window, from
    // the planner's counts (exact here: just analyzed) less what moved.
    client
        .batch_execute("ANALYZE user_logins; ANALYZE user_logins_pii_vault")
        .await
        .unwrap();
    let (rows_done, vault_done, vault_all): (i64, i64, i64) = {
        let r = client
            .query_one(
                "SELECT rekey_rows, rekey_vault, (SELECT count(*) FROM user_logins_pii_vault) FROM user_logins_key_state",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(rows_done, at_v2, "the counter is the rows moved");
    let status = connect(&db.role_url(Role::Rotate).await).await;
    let window = rekey::exposure(&status).await.unwrap();
    assert_eq!(window.rekey_from, Some(1));
    assert!(window.started_at.is_some());
    assert_eq!(window.rows_left as i64, total - at_v2, "{window:?}");
    assert!(vault_all > 0, "the vault is on");
    assert_eq!(window.vault_entries_left as i64, vault_all - vault_done);
    assert!(
        window.rate > 0.0 && window.seconds_left.is_some_and(|s| s > 0.0),
        "{window:?}"
    );

    // A re-key chunk that names an audit record twice would keep, in the
    // append-only record, a value the trail never held: refused whole,
    // while the rotation is under way (the only time a chunk is taken).
    let audit_state = "SELECT (SELECT string_agg(id || ':' || coalesce(token, '-') || ':' || coalesce(key_version, 0), ',' ORDER BY id) \
         FROM user_logins_pii_audit), (SELECT count(*) FROM user_logins_rekeyed)";
    let (trail, kept): (String, i64) = {
        let r = client.query_one(audit_state, &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    let id: i64 = client
        .query_one("SELECT min(id) FROM user_logins_pii_audit", &[])
        .await
        .unwrap()
        .get(0);
    let twice = status
        .query_one(
            "SELECT login_etl_rekey_audit_chunk(ARRAY[$1::int8, $1::int8], ARRAY['a', 'b'], ARRAY[NULL, NULL]::text[], 2::int2)",
            &[&id],
        )
        .await
        .unwrap_err();
    assert_eq!(
        twice.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
        "{twice:?}"
    );
    assert!(format!("{twice:?}").contains("names a record twice"));
    let after = client.query_one(audit_state, &[]).await.unwrap();
    assert_eq!(
        (after.get::<_, String>(0), after.get::<_, i64>(1)),
        (trail, kept),
        "nothing changed"
    );

    let rerun = rotate(
        &db,
        2,
        RekeyOptions {
            chunk_pages: 3,
            ..RekeyOptions::default()
        },
    )
    .await;
    assert_eq!(
        rerun.rows as i64,
        total - at_v2,
        "the rerun did only the rest"
    );
    let sent = values(&events.iter().collect::<Vec<_>>());
    // Re-keyed twice, a token would be HMAC(k2, HMAC(k2, t1)): not this.
    assert_eq!(assert_rows_at(&db, 2, &sent).await, total as usize);
    let audit = connect(&db.role_url(Role::Audit).await).await;
    let records = login_etl::testing::privacy::audit::audit_records(&audit, None)
        .await
        .unwrap();
    assert_eq!(
        records.last().unwrap()["detail"]["rows_rekeyed"],
        total,
        "both runs, exactly"
    );
    // Done: nothing left open.
    let window = rekey::exposure(&status).await.unwrap();
    assert_eq!((window.rekey_from, window.rows_left), (None, 0));
    assert_eq!(window.vault_entries_left, 0);
}

/// `rotate-key --jobs 3`: killed while three jobs re-key chunks side by
/// side, then run again with three jobs: every row and vault entry moved
/// exactly once (a chunk re-keyed by two jobs, or twice, would hold
/// HMAC(k2, HMAC(k2, t1))), none left behind, the counts those of the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_side_by_side_killed_and_run_again_rekey_each_row_and_entry_exactly_once() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let events: Vec<SqsEvent> = (0..4).map(|i| event(1500, 700 + i, None)).collect();
    let h = function(&ingest, 1).await;
    for e in &events {
        assert!(deliver(&h, e).await.is_empty());
    }
    let total = 6000i64;
    let client = db.client().await;
    let entries: i64 = client
        .query_one("SELECT count(*) FROM user_logins_pii_vault", &[])
        .await
        .unwrap()
        .get(0);
    let url = db.role_url(Role::Rotate).await;
    let jobs = |url: String| async move {
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(connect(&url).await);
        }
        clients
    };

    let (run_url, run_jobs) = (url.clone(), jobs(url.clone()).await);
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let run = tokio::spawn(async move {
        let mut c = connect(&run_url).await;
        let options = RekeyOptions {
            chunk_pages: 1,
            ..RekeyOptions::default()
        };
        rekey::rotate_side_by_side(&mut c, run_jobs, &masker(2), CALLER, options, &mut |_| {}).await
    });
    let mut progressed = 0;
    for _ in 0..400 {
        progressed = client
            .query_one("SELECT rekey_rows FROM user_logins_key_state", &[])
            .await
            .unwrap()
            .get::<_, i64>(0);
        if progressed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Seen while three connections work: the jobs run side by side.
    let role = db.role_name(Role::Rotate);
    let sessions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    run.abort();
    let _ = run.await;
    assert!(progressed > 0, "some chunks committed before the kill");
    assert_eq!(sessions, 4, "the run's connection and its three jobs'");
    for _ in 0..200 {
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let at_v2: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE key_version = 2",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        at_v2 > 0 && at_v2 < total,
        "stopped half way: {at_v2} of {total}"
    );

    let mut c = connect(&url).await;
    let options = RekeyOptions {
        chunk_pages: 2,
        ..RekeyOptions::default()
    };
    let rerun = rekey::rotate_side_by_side(
        &mut c,
        jobs(url.clone()).await,
        &masker(2),
        CALLER,
        options,
        &mut |_| {},
    )
    .await
    .expect("the rerun with three jobs finishes");
    assert_eq!(
        rerun.rows as i64,
        total - at_v2,
        "the rerun did only the rest"
    );
    assert_eq!(rerun.vault_entries as i64, entries, "every entry once");
    let sent = values(&events.iter().collect::<Vec<_>>());
    assert_eq!(assert_rows_at(&db, 2, &sent).await, total as usize);
    let m2 = masker(2);
    let key = data_key();
    let vault = client
        .query(
            "SELECT kind, token, nonce, ciphertext, aad_version, key_version FROM user_logins_pii_vault",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(vault.len() as i64, entries, "no entry lost, none doubled");
    for r in &vault {
        let kind = Kind::parse(r.get(0)).unwrap();
        let token: String = r.get(1);
        let value = key
            .open(kind, &token, r.get(4), r.get(2), r.get(3))
            .expect("the entry decrypts under its new token");
        let recomputed = match kind {
            Kind::Ip => m2.ip(&value.parse().unwrap()),
            Kind::DeviceId => m2.device_id(&value),
        };
        assert_eq!(recomputed.as_str(), token, "re-keyed once, by one job");
        assert_eq!(r.get::<_, i16>(5), 2);
    }
    let audit = connect(&db.role_url(Role::Audit).await).await;
    let records = login_etl::testing::privacy::audit::audit_records(&audit, None)
        .await
        .unwrap();
    let end = records.last().unwrap();
    assert_eq!(end["action"], "rekey");
    assert_eq!(end["detail"]["rows_rekeyed"], total, "both runs, exactly");
    assert_eq!(end["detail"]["vault_entries_rekeyed"], entries);
}

/// A rotation right after another, before anything analyzed the tables
/// again: the statistics still say every row and entry is at version 1,
/// so a plan that trusts them takes the version-2 side for almost nothing
/// and re-scans the chunk's list for each of its rows (the vault's first
/// chunk of the bench's second rotation ran for minutes at 100 % CPU). The
/// chunks must join on their own pages whatever the statistics say: here
/// every statement of the second rotation has 10 s, and takes under one
/// (before the fix, a chunk of the rows took 20 s at this size).
#[tokio::test]
async fn a_rotation_right_after_another_finishes_whatever_the_statistics_say() {
    let db = TestDb::create().await;
    db.migrate().await;
    let admin = db.client().await;
    // Nothing refreshes the statistics behind the test's back.
    admin
        .batch_execute(
            "ALTER TABLE user_logins_pii_vault SET (autovacuum_enabled = off); \
             INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext, key_version, aad_version) \
             SELECT k, encode(sha256((k || g)::bytea), 'hex'), 'test', decode(repeat('00', 12), 'hex'), '\\x00', 1, 2 \
             FROM generate_series(1, 20000) g, (VALUES ('ip'), ('device_id')) AS kinds(k); \
             INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version, \
               app_version_text, create_date, message_id, sent_at) \
             SELECT 'u' || g, 'android', encode(sha256(g::text::bytea), 'hex'), encode(sha256((-g)::text::bytea), 'hex'), \
               'RU', 2003000, '2.3.0', current_date, 'm' || g, now() \
             FROM generate_series(1, 60000) g",
        )
        .await
        .unwrap();
    for table in ["user_logins_pii_vault", "user_logins"] {
        admin
            .batch_execute(&format!("ANALYZE {table}"))
            .await
            .unwrap();
        let partitions: Vec<String> = admin
            .query(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = $1::text::regclass",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for p in partitions {
            admin
                .batch_execute(&format!("ALTER TABLE {p} SET (autovacuum_enabled = off)"))
                .await
                .unwrap();
        }
    }
    let first = rotate(&db, 2, RekeyOptions::default()).await;
    assert_eq!((first.rows, first.vault_entries), (60_000, 40_000));

    let mut c = connect(&db.role_url(Role::Rotate).await).await;
    c.batch_execute("SET statement_timeout = '10s'")
        .await
        .unwrap();
    rekey::arm(&db.client().await, &masker(3)).await.unwrap();
    let second = rekey::rotate(
        &mut c,
        &masker(3),
        CALLER,
        RekeyOptions::default(),
        &mut |_| {},
    )
    .await
    .expect("the second rotation, with the statistics of before the first");
    assert_eq!((second.from, second.to), (2, 3));
    assert_eq!((second.rows, second.vault_entries), (60_000, 40_000));
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM user_logins WHERE key_version <> 3) \
             + (SELECT count(*) FROM user_logins_pii_vault WHERE key_version <> 3)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "everything under version 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_both_keys_beside_the_rekey_leave_no_token_under_the_old_key() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let base: Vec<SqsEvent> = (0..5).map(|i| event(1000, 500 + i, None)).collect();
    let h = function(&ingest, 1).await;
    for e in &base {
        assert!(deliver(&h, e).await.is_empty());
    }
    let batches: Vec<SqsEvent> = (0..36).map(|i| event(120, 900 + i, None)).collect();

    // Three writers beside the re-key: one on both keys (a fresh cold
    // start), one warm on the old key that reads the secret again when
    // refused, one on the old key that never can (its batches fail as
    // retryable, and a fresh function takes them, as a redelivery would).
    let writers = [
        Arc::new(function(&ingest, 2).await),
        Arc::new(warm_function_on_the_old_key(&ingest).await),
        Arc::new(function(&ingest, 1).await),
    ];
    let url = db.role_url(Role::Rotate).await;
    rekey::arm(&db.client().await, &masker(2)).await.unwrap();
    let rotation = tokio::spawn(async move {
        let mut c = connect(&url).await;
        let options = RekeyOptions {
            chunk_pages: 2,
            ..RekeyOptions::default()
        };
        rekey::rotate(&mut c, &masker(2), CALLER, options, &mut |_| {}).await
    });
    let mut tasks = Vec::new();
    for (w, writer) in writers.iter().enumerate() {
        let mine: Vec<SqsEvent> = batches.iter().skip(w).step_by(3).cloned().collect();
        let (writer, ingest) = (Arc::clone(writer), ingest.clone());
        tasks.push(tokio::spawn(async move {
            let mut retried = 0;
            for b in mine {
                let mut left = deliver(&writer, &b).await;
                if !left.is_empty() {
                    // Redelivered to a function that reads the current secret.
                    retried += 1;
                    left = deliver(&function(&ingest, 2).await, &b).await;
                }
                assert!(left.is_empty(), "writer {w}: a batch failed twice");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            retried
        }));
    }
    let mut retried = Vec::new();
    for t in tasks {
        retried.push(t.await.unwrap());
    }
    let report = rotation.await.unwrap().expect("the re-key finishes");
    assert_eq!((report.from, report.to), (1, 2));
    assert_eq!(retried[0], 0, "the writer on both keys never fails");
    assert_eq!(
        retried[1], 0,
        "the warm writer re-keys its batches in memory"
    );
    assert!(
        retried[2] > 0,
        "the writer that can never read version 2 was refused (the switch came while it wrote)"
    );

    let sent = values(&base.iter().chain(&batches).collect::<Vec<_>>());
    assert_eq!(
        assert_rows_at(&db, 2, &sent).await,
        5 * 1000 + 36 * 120,
        "every login stored once, all of them under version 2"
    );
    let stored = stored_tokens(&db).await;
    assert_dictionary_matches_nothing(K[0], &sent, &stored);
    let old: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (SELECT count(*) FROM user_logins WHERE key_version <> 2) + \
             (SELECT count(*) FROM user_logins_pii_vault WHERE key_version <> 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(old, 0, "nothing left under version 1");
}

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
    let err = login_etl::testing::privacy::forget::forget(&mut eraser, "someone", &wrong, CALLER)
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
    let err = login_etl::testing::privacy::forget::forget(&mut eraser, user, &own, CALLER)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MASKING_KEY_SECRET_ID"), "{err}");
    // With the masking key's derived keys it works.
    login_etl::testing::privacy::forget::forget(&mut eraser, user, &derived, CALLER)
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
    let page = include_str!("../../docs/runbooks/erasure.md");
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
        login_etl::testing::error::HandlerError::class_of(&err),
        "key_mismatch",
        "{err}"
    );
}

/// Roles granted before the role registry (migrations/0010) are found by
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
            login_etl::testing::table::schema::STORE_VAULT_ARGS
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
                login_etl::testing::table::schema::STORE_VAULT_ARGS
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
        .expect("0007's check, having looked users up from version 1");
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
    let stopped =
        login_etl::testing::privacy::forget::forget(&mut eraser, user, &users, CALLER).await;
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
    let done = login_etl::testing::privacy::forget::forget(&mut eraser, user, &users, CALLER)
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
