//! What each role tries as a stolen credential would: every role's
//! attempts, each role's own beyond its kind, and plants in its pg_temp.

use super::*;

/// `sql` as the client's role is refused with one of `codes`.
pub(super) async fn refused(client: &Client, who: Role, sql: &str, codes: &[&str]) {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("{who:?} was allowed: {sql}"),
        Err(e) => {
            let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
            assert!(
                codes.contains(&code.as_str()),
                "{who:?}: {sql}: refused with {code}, not {codes:?}: {e:?}"
            );
        }
    }
}

/// What every role tries, refused for every role.
pub(super) async fn everyone_tries(d: &Deployment, role: Role, c: &Client) {
    const DENIED: &[&str] = &["42501"];
    for other in ROLES.iter().chain([&Role::Migrate]) {
        if *other != role {
            let name = d.db.role_name(*other);
            refused(c, role, &format!("SET ROLE \"{name}\""), DENIED).await;
        }
    }
    refused(c, role, "SET ROLE postgres", DENIED).await;
    // login-etl's locks are rows only the owner may lock: no role holds
    // one from a session of its own to keep maintain, migrate or a
    // rotation waiting (an advisory lock was anyone's to take).
    for lock in [
        "SELECT 1 FROM user_logins_locks WHERE name = 'migration' FOR SHARE",
        "SELECT 1 FROM user_logins_locks FOR UPDATE",
        "SELECT 1 FROM user_logins_locks FOR KEY SHARE",
    ] {
        refused(c, role, lock, DENIED).await;
    }
    for table in [
        "user_logins_rows",
        "user_logins_pii_vault",
        "user_logins_pii_audit",
        "user_logins_erased",
        "user_logins_key_state",
        "user_logins_roles",
        "user_logins_locks",
    ] {
        refused(c, role, &format!("TRUNCATE {table}"), DENIED).await;
        refused(
            c,
            role,
            &format!("ALTER TABLE {table} ADD COLUMN planted int"),
            DENIED,
        )
        .await;
        refused(
            c,
            role,
            &format!("CREATE INDEX planted ON {table} ((1))"),
            DENIED,
        )
        .await;
        refused(
            c,
            role,
            &format!(
                "CREATE TRIGGER planted BEFORE INSERT ON {table} FOR EACH ROW \
                 EXECUTE FUNCTION login_etl_audit_is_append_only()"
            ),
            DENIED,
        )
        .await;
        refused(c, role, &format!("DROP TABLE {table}"), DENIED).await;
        refused(
            c,
            role,
            &format!("ALTER TABLE {table} OWNER TO CURRENT_USER"),
            DENIED,
        )
        .await;
    }
    // The registry and the key state: the owner's alone.
    refused(
        c,
        role,
        "INSERT INTO user_logins_roles VALUES ('x', 'ingest')",
        DENIED,
    )
    .await;
    refused(
        c,
        role,
        "UPDATE user_logins_key_state SET version = version + 1",
        DENIED,
    )
    .await;
    refused(c, role, "SELECT * FROM user_logins_roles", DENIED).await;
    // Sequences, the schema, the database, the server.
    for seq in [
        "user_logins_pii_audit_id_seq",
        "user_logins_erased_seq_seq",
        "user_logins_default_drains_id_seq",
    ] {
        refused(c, role, &format!("SELECT nextval('{seq}')"), DENIED).await;
        refused(c, role, &format!("SELECT setval('{seq}', 1)"), DENIED).await;
    }
    refused(c, role, "CREATE TABLE public.planted (a int)", DENIED).await;
    refused(
        c,
        role,
        "CREATE FUNCTION public.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        DENIED,
    )
    .await;
    refused(c, role, "CREATE SCHEMA planted", DENIED).await;
    refused(c, role, "SELECT lo_import('/etc/passwd')", DENIED).await;
    refused(c, role, "SELECT pg_read_file('/etc/passwd')", DENIED).await;
    refused(c, role, "COPY (SELECT 1) TO PROGRAM 'true'", DENIED).await;
    refused(
        c,
        role,
        "CREATE CAST (text AS date) WITHOUT FUNCTION AS IMPLICIT",
        DENIED,
    )
    .await;
    refused(
        c,
        role,
        "ALTER FUNCTION login_etl_key_state() SET search_path = pg_temp",
        DENIED,
    )
    .await;
    refused(
        c,
        role,
        "CREATE OR REPLACE FUNCTION login_etl_key_state(OUT version smallint, OUT rekey_from smallint, \
         OUT masking_check varchar, OUT erasure_check varchar, OUT erasure_derived boolean) \
         LANGUAGE sql AS 'SELECT 9::int2, NULL::int2, NULL, NULL, false'",
        DENIED,
    )
    .await;
    // Every owner's function the role may not run.
    let mine: BTreeSet<&str> = every_role(role)
        .iter()
        .chain(may_run(role))
        .copied()
        .collect();
    for (name, args) in [
        (
            "login_etl_store_vault",
            "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
        ),
        ("login_etl_check_write", "0, 1, 1"),
        ("login_etl_rekey_vault_chunk", "NULL, NULL, NULL, 1::int2"),
        (
            "login_etl_rekey_rows_chunk",
            "NULL, 0, 1, false, NULL, NULL, NULL, NULL, NULL, 1::int2",
        ),
        ("login_etl_switch_key", "2::int2, 'x', NULL, NULL"),
        ("login_etl_purge_vault", "'2000-01-01'::date, 1"),
        ("login_etl_drop_partition", "'x', '2000-01-01'::date"),
        ("login_etl_hold_vault", "'x', '{}', '{}'"),
        ("login_etl_put_back_vault", "'x', '{}', '{}'"),
        ("login_etl_relation", "'user_logins'"),
        ("login_etl_rekey_under_way", "1::int2"),
        ("login_etl_copy_grants", "'user_logins', 'user_logins'"),
    ] {
        if !mine.contains(name) {
            refused(c, role, &format!("SELECT {name}({args})"), DENIED).await;
        }
    }
}

/// A write through the view `user_logins` that no trigger of it takes: the
/// server refuses it as not updatable (0A000, 55000) before it looks at
/// privileges (42501).
const VIEW_REFUSED: &[&str] = &["42501", "0A000", "55000"];

/// What each role tries beyond its own, refused or harmless.
pub(super) async fn role_tries(d: &Deployment, role: Role, c: &Client) {
    const DENIED: &[&str] = &["42501"];
    let today = "(now() AT TIME ZONE 'UTC')::date";
    match role {
        Role::Ingest => {
            // Issue 63, finding 10: raw values in the masked columns, a
            // whole message nested in `extra`: refused by the table's checks.
            // Into the table itself, and through the view's trigger (which
            // takes hex tokens: a raw value is no hex, or no 32 bytes).
            let row = |ip: &str, device: &str, extra: &str| {
                format!(
                    "INSERT INTO user_logins_rows (message_id, user_id_text, masked_ip, masked_device_id, extra, sent_at) \
                     VALUES (gen_random_uuid(), 'u', {ip}, {device}, {extra}, now())"
                )
            };
            for sql in [
                row("convert_to('203.0.113.7', 'UTF8')", "NULL", "NULL"),
                row("NULL", "convert_to('593-47-5928', 'UTF8')", "NULL"),
                row("NULL", "NULL", "'{\"msg\": {\"ip\": \"203.0.113.7\"}}'"),
                row("NULL", "NULL", "'[1, 2]'"),
            ] {
                refused(c, role, &sql, &["23514"]).await;
            }
            let through_view = |ip: &str, device: &str, extra: &str| {
                format!(
                    "INSERT INTO user_logins (message_id, user_id, masked_ip, masked_device_id, extra, sent_at, create_date) \
                     VALUES ('raw-1', 'u', {ip}, {device}, {extra}, now(), {today})"
                )
            };
            for sql in [
                through_view("'203.0.113.7'", "NULL", "NULL"),
                through_view(
                    "NULL",
                    "encode(convert_to('593-47-5928', 'UTF8'), 'hex')",
                    "NULL",
                ),
                through_view("NULL", "NULL", "'{\"msg\": {\"ip\": \"203.0.113.7\"}}'"),
            ] {
                refused(c, role, &sql, &["23514", "22023"]).await;
            }
            // The review's replay: every entry moved to 1900, so maintain
            // purges today's; or to 'infinity', kept for ever.
            refused(
                c,
                role,
                "UPDATE user_logins_pii_vault SET last_seen = '1900-01-01'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT 1 FROM user_logins_pii_vault FOR UPDATE",
                DENIED,
            )
            .await;
            refused(c, role, "SELECT masked_ip FROM user_logins", DENIED).await;
            refused(c, role, "SELECT masked_ip FROM user_logins_rows", DENIED).await;
            refused(
                c,
                role,
                "UPDATE user_logins SET masked_ip = 'x'",
                VIEW_REFUSED,
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_rows SET masked_ip = NULL",
                DENIED,
            )
            .await;
            refused(c, role, "DELETE FROM user_logins", VIEW_REFUSED).await;
            refused(c, role, "DELETE FROM user_logins_rows", DENIED).await;
            refused(c, role, "SELECT * FROM user_logins_pii_audit", DENIED).await;
            refused(
                c,
                role,
                "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext) \
                              VALUES ('ip', 'x', 'k', '\\x000000000000000000000000', '\\x00')",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "INSERT INTO user_logins_vault_keys VALUES ('k', 'x', '\\x00')",
                DENIED,
            )
            .await;
            // The vault write out of its protocol: another key version,
            // another associated-data form.
            let store = |version: i16, aad: i16| {
                format!(
                    "SELECT login_etl_store_vault('k', 'x', '\\x00', ARRAY['ip'], ARRAY['forged'], \
                     ARRAY['\\x000000000000000000000000'::bytea], ARRAY['\\x00'::bytea], ARRAY[{today}], \
                     {version}::int2, {aad}::int2)"
                )
            };
            refused(c, role, &store(2, 2), &["LE002"]).await;
            refused(c, role, &store(1, 1), &["22023"]).await;
        }
        Role::Rotate => {
            // Issue 63, finding 2: a rotation it starts on its own, with no
            // keys and no check values, or with made-up ones: not armed by
            // the owner, refused (in its own transaction, or not).
            for checks in ["NULL, NULL", "repeat('a', 64), repeat('b', 64)"] {
                refused(
                    c,
                    role,
                    &format!(
                        "SELECT login_etl_switch_key(((SELECT version FROM login_etl_key_state()) + 1)::int2, 'arn:x', {checks})"
                    ),
                    &["LE013"],
                )
                .await;
            }
            // The review's replay: two entries' ctids with each other's
            // tokens, no rotation under way.
            let pair = d
                .admin
                .query(
                    "SELECT ctid::text, kind::text, token::text FROM user_logins_pii_vault ORDER BY token LIMIT 2",
                    &[],
                )
                .await
                .unwrap();
            let (a, b) = (&pair[0], &pair[1]);
            let swap = format!(
                "SELECT login_etl_rekey_vault_chunk(ARRAY['{}', '{}']::tid[], ARRAY['{}', '{}'], ARRAY['{}', '{}'], 1::int2)",
                a.get::<_, String>(0),
                b.get::<_, String>(0),
                a.get::<_, String>(1),
                b.get::<_, String>(1),
                b.get::<_, String>(2),
                a.get::<_, String>(2)
            );
            refused(c, role, &swap, &["55000"]).await;
            let row: String = d
                .admin
                .query_one("SELECT ctid::text FROM user_logins_rows LIMIT 1", &[])
                .await
                .unwrap()
                .get(0);
            refused(
                c,
                role,
                &format!(
                    "SELECT login_etl_rekey_rows_chunk('user_logins_default', 0, 1000, false, NULL, NULL, \
                     ARRAY['{row}']::tid[], ARRAY['forged'], ARRAY['forged'], 1::int2)"
                ),
                &["55000"],
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_rekey_erased_chunk(ARRAY['a'], ARRAY['b'], 1::int2)",
                &["55000"],
            )
            .await;
            refused(c, role, "SELECT login_etl_rekey_audit_chunk(ARRAY[1::int8], ARRAY['t'], ARRAY[NULL], 2::int2)", &["55000"]).await;
            refused(
                c,
                role,
                "SELECT * FROM login_etl_audit_to_rekey(2::int2, 0, 1000)",
                &["55000"],
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_switch_key(5::int2, 'x', NULL, NULL)",
                &["55000"],
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_rows SET masked_ip = masked_device_id",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_key_state SET rekey_rows = 0",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT ciphertext FROM user_logins_pii_vault",
                DENIED,
            )
            .await;
            // It reads user ids (a re-key computes their tags), no other value.
            refused(
                c,
                role,
                "SELECT locale, device_type FROM user_logins_rows",
                DENIED,
            )
            .await;
            refused(c, role, "UPDATE user_logins_rows SET user_tag = 0", DENIED).await;
        }
        Role::Maintain => {
            refused(c, role, "SELECT * FROM user_logins", DENIED).await;
            // Retention is the owner's to set (user_logins_retention, here
            // 3650 days): a cutoff inside it, today's included (everything
            // but today), or after today, is refused whatever the role asks.
            for cutoff in [
                format!("{today} + 1"),
                today.to_owned(),
                format!("{today} - 30"),
            ] {
                for sql in [
                    format!(
                        "SELECT login_etl_drop_partition(name, {cutoff}) FROM login_etl_partitions()"
                    ),
                    format!("SELECT login_etl_purge_vault({cutoff}, 10)"),
                    format!("SELECT * FROM login_etl_purge_vault({cutoff}, 0, 10)"),
                    format!("SELECT login_etl_purge_default({cutoff})"),
                ] {
                    refused(c, role, &sql, &["LE010"]).await;
                }
            }
        }
        Role::Erase => {
            // Its writes go through the owner's functions alone (issue
            // 63, finding 7): no lock that stops reads, no delete and no
            // listing without a committed record.
            let lock = c
                .batch_execute("BEGIN; LOCK TABLE user_logins_rows IN ACCESS EXCLUSIVE MODE")
                .await
                .expect_err("no lock that stops reads");
            c.batch_execute("ROLLBACK").await.unwrap();
            assert_eq!(lock.code().map(|c| c.code()), Some("42501"), "{lock:?}");
            for sql in [
                "DELETE FROM user_logins_rows WHERE user_id_text = 'anyone'",
                "INSERT INTO user_logins_erased (user_key, key_version) VALUES (repeat('0', 64), 1)",
                "INSERT INTO user_logins_erasure_tokens (user_key, kind, token) VALUES ('k', 'ip', 'x')",
            ] {
                refused(c, role, sql, DENIED).await;
            }
            refused(
                c,
                role,
                "SELECT login_etl_forget_rows('anyone', repeat('1', 64), NULL, NULL, false)",
                &["LE012"],
            )
            .await;
            // Listed in the caller's own transaction: not committed, no delete.
            let key = "2".repeat(64);
            let same = c
                .batch_execute(&format!(
                    "BEGIN; SELECT login_etl_forget_begin('{key}', '{key}', \
                       (SELECT version FROM login_etl_key_state()), 'a thief'); \
                     SELECT login_etl_forget_rows('anyone', '{key}', NULL, NULL, false)"
                ))
                .await
                .expect_err("a delete before its record commits");
            c.batch_execute("ROLLBACK").await.unwrap();
            assert_eq!(same.code().map(|c| c.code()), Some("LE012"), "{same:?}");
            refused(
                c,
                role,
                "UPDATE user_logins_pii_vault SET last_seen = '1900-01-01'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "INSERT INTO user_logins_pii_vault (kind, token, key_id, nonce, ciphertext) \
                              VALUES ('ip', 'x', 'k', '\\x000000000000000000000000', '\\x00')",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT ciphertext FROM user_logins_pii_vault",
                DENIED,
            )
            .await;
            refused(c, role, "DELETE FROM user_logins_pii_audit", DENIED).await;
            refused(
                c,
                role,
                "INSERT INTO user_logins_pii_audit (action, caller_arn) VALUES ('forget', 'x')",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_audit('reveal', 'x', NULL, NULL, NULL, NULL)",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_audit('vault_upgrade', 'x', NULL, NULL, NULL, NULL)",
                DENIED,
            )
            .await;
            // The erasure list is append-only, for its owner too.
            refused(c, role, "DELETE FROM user_logins_erased", DENIED).await;
            refused(
                c,
                role,
                "UPDATE user_logins_erased SET user_key = 'x'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT ciphertext FROM user_logins_pii_vault_held",
                DENIED,
            )
            .await;
        }
        Role::Reveal => {
            // The review's replay: the vault and its keys read directly,
            // decrypted with `aws kms decrypt`, no audit record.
            refused(
                c,
                role,
                "SELECT ciphertext FROM user_logins_pii_vault",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT wrapped_key FROM user_logins_vault_keys",
                DENIED,
            )
            .await;
            // A record of its choosing: none.
            refused(
                c,
                role,
                "INSERT INTO user_logins_pii_audit (action, caller_arn) VALUES ('forget', 'x')",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_audit('forget', 'x', NULL, NULL, NULL, NULL)",
                DENIED,
            )
            .await;
            // Its own read names a caller, and writes the record itself.
            refused(
                c,
                role,
                "SELECT login_etl_reveal_request(ARRAY['ip'], ARRAY['t'], NULL, '')",
                &["22023"],
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_pii_vault SET ciphertext = '\\x00'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_pii_audit SET caller_arn = 'x'",
                DENIED,
            )
            .await;
            refused(c, role, "DELETE FROM user_logins_pii_audit", DENIED).await;
            refused(c, role, "SELECT user_key FROM user_logins_erased", DENIED).await;
        }
        Role::Upgrade => {
            refused(
                c,
                role,
                "UPDATE user_logins_pii_vault SET last_seen = '1900-01-01'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "UPDATE user_logins_pii_vault SET token = 'x'",
                DENIED,
            )
            .await;
            refused(c, role, "DELETE FROM user_logins_pii_vault", DENIED).await;
            refused(c, role, "INSERT INTO user_logins_pii_audit (action, caller_arn) VALUES ('vault_upgrade', 'x')", DENIED).await;
            // Its audit function writes records of its own kind only.
            refused(
                c,
                role,
                "SELECT login_etl_audit('reveal', 'x', NULL, NULL, NULL, NULL)",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "SELECT login_etl_audit('forget', 'x', NULL, NULL, NULL, NULL)",
                DENIED,
            )
            .await;
            refused(c, role, "SELECT user_id FROM user_logins", DENIED).await;
        }
        Role::Audit => {
            refused(
                c,
                role,
                "UPDATE user_logins_pii_audit SET caller_arn = 'x'",
                DENIED,
            )
            .await;
            refused(
                c,
                role,
                "INSERT INTO user_logins_pii_audit (action, caller_arn) VALUES ('reveal', 'x')",
                DENIED,
            )
            .await;
            refused(c, role, "SELECT token FROM user_logins_pii_vault", DENIED).await;
            refused(c, role, "SELECT user_id FROM user_logins", DENIED).await;
        }
        Role::Reader => {
            // The masked rows only: nothing of the vault, the audit, the
            // key state or the erasure list, and no write.
            for sql in [
                "SELECT * FROM user_logins_pii_vault",
                "SELECT * FROM user_logins_vault_keys",
                "SELECT * FROM user_logins_pii_audit",
                "SELECT * FROM user_logins_key_state",
                "SELECT * FROM user_logins_erased",
                "SELECT * FROM user_logins_erasure_tokens",
                "SELECT * FROM user_logins_roles",
                "INSERT INTO user_logins (message_id) VALUES ('x')",
                // The view only: not its rows' table.
                "SELECT * FROM user_logins_rows",
                "DELETE FROM user_logins_rows",
            ] {
                refused(c, role, sql, DENIED).await;
            }
            for sql in [
                "UPDATE user_logins SET locale = 'x'",
                "DELETE FROM user_logins",
            ] {
                refused(c, role, sql, VIEW_REFUSED).await;
            }
            let lock = "BEGIN; LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE";
            refused(c, role, lock, DENIED).await;
            c.batch_execute("ROLLBACK").await.unwrap();
        }
        Role::Migrate => unreachable!(),
    }
}

/// Objects planted in the role's own pg_temp (the one schema it can create
/// in), then the owner's functions it may run, in the same session: none
/// may pick a planted object up.
pub(super) async fn plants_in_pg_temp(d: &Deployment, role: Role, c: &Client) {
    // A key state, a drain table with a forged row, a function and an
    // operator of the names the owner's functions use.
    c.batch_execute(
        "CREATE TEMP TABLE user_logins_key_state (singleton boolean, version smallint, rekey_from smallint, \
             changed_at timestamptz, rekey_rows bigint, rekey_vault bigint, masking_check varchar, \
             erasure_check varchar, erasure_derived boolean); \
         INSERT INTO pg_temp.user_logins_key_state VALUES (true, 9, 8, now(), 0, 0, NULL, NULL, false); \
         CREATE TEMP TABLE user_logins_drain (user_id varchar, device_type varchar, masked_ip varchar, \
             masked_device_id varchar, locale varchar, app_version integer, create_date date, message_id varchar, \
             app_version_text varchar, sent_at timestamptz, key_version smallint); \
         INSERT INTO pg_temp.user_logins_drain VALUES ('planted', 'ios', 'x', 'x', NULL, 1, '2026-11-21', \
             'planted-message', '1', '2026-11-21', 1); \
         GRANT ALL ON pg_temp.user_logins_drain, pg_temp.user_logins_key_state TO PUBLIC; \
         CREATE TEMP TABLE user_logins_pii_vault_last_seen (a int); \
         CREATE FUNCTION pg_temp.login_etl_key_state(OUT version smallint, OUT rekey_from smallint, \
             OUT masking_check varchar, OUT erasure_check varchar, OUT erasure_derived boolean) \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted ran'; END $$; \
         CREATE FUNCTION pg_temp.planted_ne(integer, integer) RETURNS boolean \
             LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'planted ran'; END $$; \
         CREATE OPERATOR pg_temp.<> (LEFTARG = integer, RIGHTARG = integer, FUNCTION = pg_temp.planted_ne)",
    )
    .await
    .unwrap_or_else(|e| panic!("{role:?} plants in pg_temp: {e}"));
    let state: (i16, Option<i16>) = c
        .query_one("SELECT version, rekey_from FROM login_etl_key_state()", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(state, (1, None), "{role:?}: the real key state");
    let draining: bool = c
        .query_one("SELECT draining FROM login_etl_drain_state()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!draining, "{role:?}: a temporary table is no drain");
    match role {
        Role::Ingest => {
            c.batch_execute("BEGIN; LOCK TABLE ONLY user_logins_rows IN ROW EXCLUSIVE MODE; \
                             SELECT login_etl_check_write((SELECT coalesce(max(seq), 0) FROM user_logins_erased), 1, 1); \
                             ROLLBACK")
                .await
                .expect("the write check reads the real key state");
        }
        Role::Maintain => {
            // Before login_etl_relation, the drain functions took the
            // planted table for the swapped-out DEFAULT partition and
            // moved its forged row into user_logins with the owner's
            // rights, then dropped it.
            c.batch_execute("SELECT * FROM login_etl_drain_days(); SELECT * FROM login_etl_drain_default(0, 10)")
                .await
                .unwrap();
            let planted: i64 = d
                .admin
                .query_one(
                    "SELECT count(*) FROM user_logins WHERE message_id = 'planted-message'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(planted, 0, "a planted row moved into user_logins");
            let kept: i64 = c
                .query_one("SELECT count(*) FROM pg_temp.user_logins_drain", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(kept, 1, "the owner's function touched the planted table");
        }
        Role::Rotate => {
            refused(
                c,
                role,
                "SELECT login_etl_rekey_erased_chunk(ARRAY['a'], ARRAY['b'], 8::int2)",
                &["55000"],
            )
            .await;
        }
        _ => {}
    }
}

/// Each role's attempts, then its own pg_temp; the data untouched.
pub(super) async fn attack(d: &Deployment) {
    let before = digest(&d.admin).await;
    for role in ROLES {
        let c = d.connect(role).await;
        everyone_tries(d, role, &c).await;
        role_tries(d, role, &c).await;
        // (The reader runs no function for a plant to be picked up by.)
        if role != Role::Reader {
            plants_in_pg_temp(d, role, &c).await;
        }
        // Its own defaults: they reach only its own sessions.
        c.batch_execute("ALTER ROLE CURRENT_USER SET search_path = pg_temp, public")
            .await
            .expect("a role sets its own defaults");
    }
    assert_eq!(
        digest(&d.admin).await,
        before,
        "an attempt changed the data"
    );
    assert_least_privilege(d).await;
}
