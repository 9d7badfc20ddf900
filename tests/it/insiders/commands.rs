//! The real commands and connections beside the attacks: stored role
//! settings refused, the vault's day, the commands beside the plants, the
//! reader, and a reveal's own transaction.

use super::*;

/// A connection as `role`, opened the way every part of login-etl opens
/// one (`Connector`: the stored-settings check included).
pub(super) async fn open_as(d: &Deployment, role: Role) -> Result<Client, login_etl::DbError> {
    login_etl::database::connector::Connector::from_config(&db_config(&d.url(role)), None)
        .await
        .unwrap()
        .open(std::time::Duration::from_secs(10))
        .await
}

/// What attack() left stored (each role's `search_path = pg_temp, public`)
/// and more: the maintain role's `DateStyle`, the ingest role's
/// `synchronous_commit = off`. The owner's functions compute as before
/// under them (they pin their own settings); every connection the program
/// opens is refused, naming the setting and the admin's RESET, which
/// clears it.
pub(super) async fn stored_settings_are_refused_until_reset(d: &Deployment) {
    let maintain = d.connect(Role::Maintain).await;
    maintain
        .batch_execute(
            "ALTER ROLE CURRENT_USER SET datestyle = 'SQL, DMY'; SET datestyle = 'SQL, DMY'",
        )
        .await
        .unwrap();
    let bounds: i64 = maintain
        .query_one("SELECT count(*) FROM login_etl_partitions() WHERE NOT is_default AND (lo IS NULL OR hi IS NULL)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bounds, 0,
        "the owner's function reads its bounds under the caller's DateStyle"
    );
    drop(maintain);
    run_maintain(d).await;
    d.connect(Role::Ingest)
        .await
        .batch_execute(&format!(
            "ALTER ROLE CURRENT_USER IN DATABASE {} SET synchronous_commit = off",
            d.db.name
        ))
        .await
        .unwrap();
    // Under REPEATABLE READ a waiting write would check the erasure list
    // against its snapshot from before the lock: a just-erased user stored.
    d.connect(Role::Erase)
        .await
        .batch_execute(
            "ALTER ROLE CURRENT_USER SET default_transaction_isolation = 'repeatable read'",
        )
        .await
        .unwrap();
    for role in ROLES {
        let name = d.db.role_name(role);
        let open = || open_as(d, role);
        let refused = open()
            .await
            .expect_err("a stored search_path of two schemas")
            .to_string();
        let mut stored = vec![(
            "search_path = 'pg_temp, public'".to_owned(),
            format!("ALTER ROLE \"{name}\" RESET search_path"),
        )];
        match role {
            Role::Maintain => stored.push((
                "DateStyle = 'SQL, DMY'".into(),
                format!("ALTER ROLE \"{name}\" RESET DateStyle"),
            )),
            Role::Erase => stored.push((
                "default_transaction_isolation = 'repeatable read'".into(),
                format!("ALTER ROLE \"{name}\" RESET default_transaction_isolation"),
            )),
            Role::Ingest => stored.push((
                "synchronous_commit = 'off' in this database".into(),
                format!(
                    "ALTER ROLE \"{name}\" IN DATABASE \"{}\" RESET synchronous_commit",
                    d.db.name
                ),
            )),
            _ => {}
        }
        for (setting, reset) in &stored {
            assert!(
                refused.contains(setting) && refused.contains(reset),
                "{role:?}: names {setting} and the admin's fix: {refused}"
            );
            d.admin.batch_execute(reset).await.unwrap();
        }
        open()
            .await
            .unwrap_or_else(|e| panic!("{role:?} connects once reset: {e}"));
    }
    // One schema, but one the role may create in (PostgreSQL 13/14's
    // `public` beside a schema of login-etl's own): its plants would stand
    // in for the owner's functions. Refused; the admin's RESET clears it.
    let erase = d.db.role_name(Role::Erase);
    d.admin
        .batch_execute(&format!(
            "CREATE SCHEMA elsewhere; GRANT USAGE, CREATE ON SCHEMA elsewhere TO \"{erase}\""
        ))
        .await
        .unwrap();
    d.connect(Role::Erase)
        .await
        .batch_execute(
            "CREATE FUNCTION elsewhere.login_etl_forget_rows() RETURNS int LANGUAGE sql AS 'SELECT 2'; \
             ALTER ROLE CURRENT_USER SET search_path = elsewhere",
        )
        .await
        .unwrap();
    let open = || open_as(d, Role::Erase);
    let refused = open()
        .await
        .expect_err("a search path to a schema the role creates in")
        .to_string();
    let reset = format!("ALTER ROLE \"{erase}\" RESET search_path");
    assert!(
        refused.contains("search_path = 'elsewhere'")
            && refused.contains("not the one login-etl's tables are in")
            && refused.contains(&reset),
        "{refused}"
    );
    d.admin
        .batch_execute(&format!("{reset}; DROP SCHEMA elsewhere CASCADE"))
        .await
        .unwrap();
    open().await.expect("connects once reset");
    // The tables' own schema after pg_catalog is one schema, and theirs:
    // accepted (current_schema() is pg_catalog there, not the path's schema).
    let schema: String = d
        .admin
        .query_one("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'user_logins_rows' AND relkind = 'p'", &[])
        .await
        .unwrap()
        .get(0);
    d.admin
        .batch_execute(&format!(
            "ALTER ROLE \"{erase}\" SET search_path = pg_catalog, {schema}"
        ))
        .await
        .unwrap();
    let accepted = open().await;
    d.admin.batch_execute(&reset).await.unwrap();
    accepted.expect("pg_catalog, then the tables' schema: connects");
}

/// What the function's vault write does with a forged day: today at most,
/// never back.
pub(super) async fn the_vault_day_stays_within_bounds(d: &Deployment) {
    let c = d.connect(Role::Ingest).await;
    let (kind, token, seen): (String, String, chrono::NaiveDate) = d
        .admin
        .query_one(
            "SELECT kind::text, token::text, last_seen FROM user_logins_pii_vault LIMIT 1",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    let store = |day: &str| {
        format!(
            "SELECT login_etl_store_vault('k', 'x', '\\x00', ARRAY['{kind}'], ARRAY['{token}'], \
             ARRAY['\\x000000000000000000000000'::bytea], ARRAY['\\x00'::bytea], ARRAY['{day}'::date], 1::int2, 2::int2)"
        )
    };
    let day = || async {
        d.admin
            .query_one(
                "SELECT last_seen, last_seen = (now() AT TIME ZONE 'UTC')::date FROM user_logins_pii_vault \
                 WHERE kind = $1 AND token = $2",
                &[&kind, &token],
            )
            .await
            .map(|r| (r.get::<_, chrono::NaiveDate>(0), r.get::<_, bool>(1)))
            .unwrap()
    };
    c.batch_execute(&store("1900-01-01")).await.unwrap();
    assert_eq!(day().await.0, seen, "an earlier day moves nothing back");
    c.batch_execute(&store("infinity")).await.unwrap();
    assert!(day().await.1, "a day past today becomes today");
    // The trigger holds the same for a role that may still update the
    // column (a grant of an older version): here, the owner.
    let owner = connect(&d.owner).await;
    let back = owner
        .batch_execute("UPDATE user_logins_pii_vault SET last_seen = '1900-01-01'")
        .await
        .expect_err("last_seen never moves back");
    assert_eq!(back.code().unwrap().code(), "42501", "{back:?}");
    owner
        .batch_execute("UPDATE user_logins_pii_vault SET last_seen = 'infinity'")
        .await
        .unwrap();
    let later: i64 = d
        .admin
        .query_one(
            "SELECT count(*) FROM user_logins_pii_vault WHERE last_seen > (now() AT TIME ZONE 'UTC')::date",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(later, 0, "no entry is kept past today");
}

/// The real commands beside what was planted: each does its work, and
/// nothing planted ran (the oracle holds, the data is theirs).
pub(super) async fn the_real_commands_run_beside_the_plants(d: &Deployment) {
    let h = d.function().await;
    let event = synth::event(&Options {
        count: 30,
        seed: 77,
        ..Options::default()
    });
    let outcome = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .expect("the function writes beside the plants");
    assert_eq!(outcome.summary.inserted, 30);
    run_maintain(d).await;
    let user: String = d
        .admin
        .query_one("SELECT user_id::text FROM user_logins LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(forget(d, &user).await > 0);
    // The owner arms it; the rotate role starts it.
    rekey::arm(&connect(&d.owner).await, &masker(2))
        .await
        .unwrap();
    let mut rotate = d.connect(Role::Rotate).await;
    let rotated = rekey::rotate(
        &mut rotate,
        &masker(2),
        CALLER,
        RekeyOptions::default(),
        &mut |_| {},
    )
    .await;
    if server_version(&d.admin).await < 140_000 {
        // rotate-key re-keys in TID ranges, which 13 cannot scan: refused
        // before it changes anything (tests/pg-version 13).
        assert!(
            matches!(rotated, Err(rekey::RekeyError::ServerTooOld(_))),
            "{rotated:?}"
        );
        let unchanged: bool = d
            .admin
            .query_one(
                "SELECT (SELECT version = 1 AND rekey_from IS NULL FROM user_logins_key_state) \
                   AND NOT EXISTS (SELECT 1 FROM user_logins_pii_audit WHERE action = 'rekey_begun')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(unchanged, "the refused rotation changed nothing");
        assert_eq!(count_rows_of(&d.admin, &user).await, 0);
        assert_least_privilege(d).await;
        return;
    }
    rotated.expect("rotate-key as the rotate role");
    let left: i64 = d
        .admin
        .query_one(
            "SELECT (SELECT count(*) FROM user_logins WHERE key_version <> 2) \
                  + (SELECT count(*) FROM user_logins_pii_vault WHERE key_version <> 2) \
                  + (SELECT count(*) FROM user_logins_key_state WHERE rekey_from IS NOT NULL OR version <> 2)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the rotation re-keyed everything and ended");
    let gone = count_rows_of(&d.admin, &user).await;
    assert_eq!(gone, 0);
    assert_least_privilege(d).await;
}

/// The analysts' role reads every masked row through the parent: today's,
/// and those of a partition made after its grant (tomorrow's), as the
/// admin counts them.
pub(super) async fn the_reader_reads_every_partition(d: &Deployment) {
    let tomorrow = "((now() AT TIME ZONE 'UTC')::date + 1)";
    d.admin
        .batch_execute(&format!(
            "SELECT login_etl_ensure_partition({tomorrow}); \
             INSERT INTO user_logins (message_id, user_id, masked_ip, sent_at, create_date) \
             VALUES ('reader-tomorrow', 'u', repeat('a', 64), now() + interval '1 day', {tomorrow})"
        ))
        .await
        .unwrap();
    async fn count(c: &Client, sql: String) -> i64 {
        c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0)
    }
    let reader = d.connect(Role::Reader).await;
    let all = "SELECT count(*) FROM user_logins".to_owned();
    assert_eq!(
        count(&reader, all.clone()).await,
        count(&d.admin, all).await
    );
    assert!(count(&d.admin, "SELECT count(*) FROM user_logins".into()).await > 1);
    let later = format!(
        "SELECT count(*) FROM user_logins WHERE create_date = {tomorrow} AND masked_ip IS NOT NULL"
    );
    assert_eq!(
        count(&reader, later).await,
        1,
        "tomorrow's partition, through the parent"
    );
    let partition: String = d
        .admin
        .query_one(
            "SELECT format('%I', c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'user_logins_rows'::regclass LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let direct = reader
        .query_one(&format!("SELECT count(*) FROM {partition}"), &[])
        .await
        .expect_err("a partition itself is not the reader's");
    assert_eq!(direct.code().unwrap().code(), "42501", "{direct:?}");
    d.admin
        .batch_execute("DELETE FROM user_logins_rows WHERE message_id_text = 'reader-tomorrow'")
        .await
        .unwrap();
}

/// The reveal role's own transaction (issue 63, finding 1): the records
/// and the entries in one transaction, a SAVEPOINT rolled back, a ROLLBACK
/// after the read: nothing is handed out before its audit record
/// commits, so nothing leaves without one. Committed, the ticket reads once.
pub(super) async fn a_reveal_hands_out_nothing_before_its_record_commits(d: &Deployment) {
    let c = d.connect(Role::Reveal).await;
    let token: String = d
        .admin
        .query_one(
            "SELECT token FROM user_logins_pii_vault WHERE kind = 'ip' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let records = || async {
        d.admin
            .query_one(
                "SELECT count(*) FROM user_logins_pii_audit WHERE action = 'reveal'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = records().await;
    let request =
        format!("login_etl_reveal_request(ARRAY['ip'], ARRAY['{token}'], NULL, 'a thief')");
    let le006 = |e: tokio_postgres::Error| {
        assert_eq!(e.code().map(|c| c.code()), Some("LE011"), "{e:?}");
    };
    // One statement, one transaction.
    le006(
        c.batch_execute(&format!("SELECT * FROM login_etl_reveal({request})"))
            .await
            .expect_err("the read in the request's own transaction"),
    );
    // BEGIN, or a SAVEPOINT: the ticket, then the read, then ROLLBACK.
    for begin in ["BEGIN", "BEGIN; SAVEPOINT s"] {
        c.batch_execute(begin).await.unwrap();
        let ticket: i64 = c
            .query_one(&format!("SELECT {request}"), &[])
            .await
            .unwrap()
            .get(0);
        le006(
            c.query("SELECT * FROM login_etl_reveal($1)", &[&ticket])
                .await
                .expect_err("the read before the records commit"),
        );
        c.batch_execute("ROLLBACK").await.unwrap();
        le006(
            c.query("SELECT * FROM login_etl_reveal($1)", &[&ticket])
                .await
                .expect_err("a ticket rolled back with its records"),
        );
    }
    assert_eq!(
        records().await,
        before,
        "nothing was handed out, nothing was recorded"
    );
    // Committed: the entries come, once.
    let ticket: i64 = c
        .query_one(&format!("SELECT {request}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(records().await, before + 1);
    let rows = c
        .query("SELECT ciphertext FROM login_etl_reveal($1)", &[&ticket])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, Option<Vec<u8>>>(0).is_some());
    le006(
        c.query("SELECT * FROM login_etl_reveal($1)", &[&ticket])
            .await
            .expect_err("a ticket reads once"),
    );
}
