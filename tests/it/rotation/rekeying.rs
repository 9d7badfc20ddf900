//! Re-keying: the tokens follow the chain, an erasure survives rotations,
//! a re-key killed and run again, jobs side by side, a rotation right after
//! another, writers on both keys beside it.

use super::*;

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
    let records = login_etl::privacy::audit::audit_records(&audit, None)
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

    // The rotate role reads tokens (and the user ids their tags are
    // computed from), never a ciphertext, and writes no row.
    let rotator = connect(&db.role_url(Role::Rotate).await).await;
    for sql in [
        "SELECT ciphertext FROM user_logins_pii_vault",
        "SELECT locale, device_type FROM user_logins",
        "UPDATE user_logins_rows SET user_id_text = 'x'",
        "INSERT INTO user_logins_rows (user_id_text, sent_at) VALUES ('x', now())",
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
    let done = login_etl::privacy::forget::forget(&mut eraser, user, &erasure_only, CALLER)
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
    login_etl::privacy::forget::forget(&mut eraser, user, &both, CALLER)
        .await
        .unwrap();
    let entries: i64 = client
        .query_one("SELECT count(*) FROM user_logins_erased", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(entries, 1);
    let behind =
        login_etl::privacy::forget::forget(&mut eraser, "another-user", &erasure_only, CALLER)
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
    wait_until("the killed run's sessions gone", || async {
        client
            .query_one(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
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
        .batch_execute("ANALYZE user_logins_rows; ANALYZE user_logins_pii_vault")
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
    let records = login_etl::privacy::audit::audit_records(&audit, None)
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
    wait_until("the killed run's sessions gone", || async {
        client
            .query_one(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap()
            .get(0)
    })
    .await;
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
    let records = login_etl::privacy::audit::audit_records(&audit, None)
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
    for table in ["user_logins_pii_vault", "user_logins_rows"] {
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

/// Issue 76, finding 5: a re-key moves each row's user tag to the new
/// version with its tokens, and tags a row that had none (written before
/// tags, or while the database was masking-only): after it, a forget with
/// the new version's keys deletes every row of its user, and a row's tag
/// is its own user's.
#[tokio::test]
async fn a_rekey_moves_each_rows_user_tag_and_tags_the_rows_without_one() {
    let db = TestDb::create().await;
    let ingest = db.ingest_url().await;
    let user = "7a3c5e7f-9b1d-4f3a-8c5e-7f9b1d3f5a76";
    assert!(
        deliver(&function(&ingest, 1).await, &event(90, 29, Some(user)))
            .await
            .is_empty()
    );
    let client = db.client().await;
    let untagged = client
        .execute(
            "UPDATE user_logins SET user_tag = NULL WHERE message_id IN \
             (SELECT message_id FROM user_logins ORDER BY message_id LIMIT 40)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(untagged, 40);
    let theirs = count_rows_of(&client, user).await;
    assert!(theirs > 0);
    rotate(&db, 2, RekeyOptions::default()).await;
    let v2 = UserKeys::new(&KeyVersions::parse(&doc(&E, 2), "test").unwrap());
    let rows = client
        .query("SELECT user_id, user_tag FROM user_logins", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 90);
    for r in &rows {
        let (id, tag): (String, Option<i64>) = (r.get(0), r.get(1));
        assert_eq!(tag, Some(v2.user_key(&id).tag()), "{id}");
    }
    let mut eraser = connect(&db.role_url(Role::Erase).await).await;
    let done = login_etl::privacy::forget::forget(&mut eraser, user, &v2, CALLER)
        .await
        .expect("forget after the re-key");
    assert_eq!(done.rows as i64, theirs);
    assert_eq!(count_rows_of(&client, user).await, 0);
}
