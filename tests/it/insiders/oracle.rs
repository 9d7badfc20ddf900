//! The oracle: what each role may hold, written here apart from
//! src/table/privileges.rs, and what it holds, read from the catalog.

use super::*;

/// `(table, privilege, columns)`: what a role may do, written here apart
/// from the code (the whole table when no column is named).
pub(super) type Allowed = &'static [(&'static str, &'static str, &'static [&'static str])];

/// The functions every login-etl program's role may run (read-only state);
/// the reader runs none.
pub(super) const EVERY_ROLE: &[&str] = &[
    "login_etl_current_key_version",
    "login_etl_drain_state",
    "login_etl_key_state",
    "login_etl_partitions",
];

/// [`EVERY_ROLE`]'s functions, as `role` holds them.
pub(super) fn every_role(role: Role) -> &'static [&'static str] {
    if role == Role::Reader {
        &[]
    } else {
        EVERY_ROLE
    }
}

pub(super) fn allowed(role: Role) -> Allowed {
    match role {
        Role::Ingest => &[
            ("user_logins_rows", "INSERT", &[]),
            // The previous release's writes name the view (its INSTEAD OF
            // trigger converts them into user_logins_rows).
            ("user_logins", "INSERT", &[]),
            (
                "user_logins_rows",
                "SELECT",
                &["message_id", "sent_at", "xmin"],
            ),
            ("user_logins_erased", "SELECT", &["user_key", "seq"]),
        ],
        // Nothing but login_etl_reveal_request (the records) and
        // login_etl_reveal (the entries, once the records committed).
        Role::Reveal => &[],
        Role::Upgrade => &[
            (
                "user_logins_pii_vault",
                "SELECT",
                &[
                    "kind",
                    "token",
                    "key_id",
                    "nonce",
                    "ciphertext",
                    "aad_version",
                ],
            ),
            (
                "user_logins_pii_vault",
                "UPDATE",
                &["nonce", "ciphertext", "aad_version"],
            ),
            (
                "user_logins_vault_keys",
                "SELECT",
                &["key_id", "wrapped_key"],
            ),
        ],
        Role::Erase => &[
            (
                "user_logins",
                "SELECT",
                &["user_id", "masked_ip", "masked_device_id", "sent_at"],
            ),
            (
                "user_logins_erasure_tokens",
                "SELECT",
                &["user_key", "kind", "token"],
            ),
            ("user_logins_erasure_tokens", "DELETE", &[]),
            (
                "user_logins_pii_vault_held",
                "SELECT",
                &["user_key", "kind", "token"],
            ),
            ("user_logins_pii_vault_held", "DELETE", &[]),
            ("user_logins_erased", "SELECT", &["user_key"]),
        ],
        Role::Maintain | Role::Migrate => &[],
        // The masked rows, every partition through the parent, nothing else.
        Role::Reader => &[("user_logins", "SELECT", &[])],
        Role::Audit => &[(
            "user_logins_pii_audit",
            "SELECT",
            &[
                "id",
                "at",
                "action",
                "caller_arn",
                "kind",
                "token",
                "data_key_id",
                "user_key",
                "rows_deleted",
                "vault_entries_deleted",
                "detail",
            ],
        )],
        Role::Rotate => &[
            (
                "user_logins_rows",
                "SELECT",
                &[
                    "tableoid",
                    "ctid",
                    "masked_ip",
                    "masked_device_id",
                    "key_version",
                    "sent_at",
                    "user_id",
                    "user_id_text",
                ],
            ),
            (
                "user_logins_pii_vault",
                "SELECT",
                &["ctid", "kind", "token", "key_version", "aad_version"],
            ),
            ("user_logins_erased", "SELECT", &["user_key", "key_version"]),
            (
                "user_logins_key_state",
                "SELECT",
                &[
                    "version",
                    "rekey_from",
                    "rekey_rows",
                    "rekey_vault",
                    "erasure_derived",
                    "changed_at",
                ],
            ),
        ],
    }
}

/// The owner's functions `role` may run besides [`EVERY_ROLE`]'s.
pub(super) fn may_run(role: Role) -> &'static [&'static str] {
    match role {
        Role::Ingest => &[
            "login_etl_check_keys",
            "login_etl_check_write",
            "login_etl_erased_below",
            "login_etl_key_changed_at",
            "login_etl_narrow_row",
            "login_etl_refuse_erased",
            "login_etl_refuse_erased_at",
            "login_etl_store_vault",
            "login_etl_write",
            "login_etl_write_tx",
        ],
        Role::Erase => &[
            "login_etl_audit",
            "login_etl_check_keys",
            "login_etl_forget_begin",
            "login_etl_forget_lock",
            "login_etl_forget_rows",
            "login_etl_hold_vault",
            "login_etl_lock_shared",
            "login_etl_put_back_vault",
        ],
        Role::Maintain => &[
            "login_etl_default_days",
            "login_etl_default_size",
            "login_etl_drain_days",
            "login_etl_drain_default",
            "login_etl_drop_detached",
            "login_etl_drop_partition",
            "login_etl_ensure_partition",
            "login_etl_kept_days",
            "login_etl_purge_default",
            "login_etl_purge_vault",
            "login_etl_swap_default",
        ],
        Role::Rotate => &[
            "login_etl_audit_to_rekey",
            "login_etl_begin_rekey",
            "login_etl_check_keys",
            "login_etl_end_rekey",
            "login_etl_lock_shared",
            "login_etl_rekey_audit_chunk",
            "login_etl_rekey_erased_chunk",
            "login_etl_rekey_rows_chunk",
            "login_etl_rekey_vault_chunk",
            "login_etl_switch_key",
        ],
        Role::Reveal => &["login_etl_reveal", "login_etl_reveal_request"],
        Role::Upgrade => &["login_etl_audit"],
        Role::Audit | Role::Migrate | Role::Reader => &[],
    }
}

/// What `role` holds, from the catalog, as `table.PRIV` and
/// `table(column).PRIV` lines, then `function name()`s, then the rest.
pub(super) async fn held(admin: &Client, role: &str) -> BTreeSet<String> {
    let rows = admin
        .query(
            "WITH t AS (SELECT c.oid, c.relname, c.relkind FROM pg_class c \
                        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')) \
             SELECT t.relname || '.' || p.priv FROM t CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', \
                    'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv) \
                 WHERE t.relkind <> 'S' AND has_table_privilege($1, t.oid, p.priv) \
             UNION ALL \
             SELECT t.relname || '(' || a.attname || ').' || p.priv FROM t \
                 JOIN pg_attribute a ON a.attrelid = t.oid AND NOT a.attisdropped \
                 CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) AS p(priv) \
                 WHERE t.relkind <> 'S' AND NOT has_table_privilege($1, t.oid, p.priv) \
                   AND has_column_privilege($1, t.oid, a.attnum, p.priv) \
             UNION ALL \
             SELECT 'sequence ' || t.relname || '.' || p.priv FROM t CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p(priv) \
                 WHERE t.relkind = 'S' AND has_sequence_privilege($1, t.oid, p.priv) \
             UNION ALL \
             SELECT DISTINCT 'function ' || p.proname || '()' FROM pg_proc p \
                 WHERE p.pronamespace = 'public'::regnamespace AND has_function_privilege($1, p.oid, 'EXECUTE') \
             UNION ALL \
             SELECT 'function ' || p.oid::regprocedure::text || ' NOT GRANTED' FROM pg_proc p \
                 WHERE p.pronamespace = 'public'::regnamespace AND NOT has_function_privilege($1, p.oid, 'EXECUTE') \
                   AND EXISTS (SELECT 1 FROM pg_proc q WHERE q.proname = p.proname AND q.pronamespace = p.pronamespace \
                               AND has_function_privilege($1, q.oid, 'EXECUTE')) \
             UNION ALL \
             SELECT 'schema public.' || p.priv FROM unnest(ARRAY['USAGE', 'CREATE']) AS p(priv) \
                 WHERE has_schema_privilege($1, 'public', p.priv) \
             UNION ALL \
             SELECT 'database.' || p.priv FROM unnest(ARRAY['CREATE', 'CONNECT', 'TEMPORARY']) AS p(priv) \
                 WHERE has_database_privilege($1, current_database(), p.priv) \
             UNION ALL \
             SELECT 'member of ' || m.roleid::regrole::text FROM pg_auth_members m WHERE m.member = $1::regrole \
             UNION ALL \
             SELECT 'attribute ' || a FROM pg_roles r, unnest(ARRAY[ \
                 CASE WHEN r.rolsuper THEN 'superuser' END, CASE WHEN r.rolcreaterole THEN 'createrole' END, \
                 CASE WHEN r.rolcreatedb THEN 'createdb' END, CASE WHEN r.rolreplication THEN 'replication' END, \
                 CASE WHEN r.rolbypassrls THEN 'bypassrls' END]) AS a WHERE r.rolname = $1 AND a IS NOT NULL",
            &[&role],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// What the oracle says `role` holds, in [`held`]'s form.
pub(super) fn expected(role: Role) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (table, privilege, columns) in allowed(role) {
        if columns.is_empty() {
            out.insert(format!("{table}.{privilege}"));
        }
        for column in *columns {
            out.insert(format!("{table}({column}).{privilege}"));
        }
    }
    for name in every_role(role).iter().chain(may_run(role)) {
        out.insert(format!("function {name}()"));
    }
    // PUBLIC's defaults on a database: connect, temporary tables. USAGE
    // on the schema: the admin grants it, or PUBLIC has it. The schema's
    // recorded state: PUBLIC's (migrations/0024), what every guard reads.
    for line in [
        "database.CONNECT",
        "database.TEMPORARY",
        "schema public.USAGE",
        "user_logins_schema.SELECT",
    ] {
        out.insert(line.to_owned());
    }
    out
}

/// Every role holds exactly what the oracle says: a widened grant fails.
pub(super) async fn assert_least_privilege(d: &Deployment) {
    let mut wrong = Vec::new();
    for role in ROLES {
        let name = d.db.role_name(role);
        let (is, should) = (held(&d.admin, &name).await, expected(role));
        for extra in is.difference(&should) {
            wrong.push(format!("{role:?} holds {extra}, beyond its kind"));
        }
        for missing in should.difference(&is) {
            wrong.push(format!("{role:?} lacks {missing}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every `login_etl_*` function of the schema has its file, resolves names
/// with pg_catalog first, and lets PUBLIC run nothing.
pub(super) async fn assert_every_function_in_one_place(d: &Deployment) {
    let files: BTreeSet<&str> = FUNCTION_FILES.iter().map(|f| f.name).collect();
    let rows = d
        .admin
        .query(
            "SELECT p.proname::text, p.oid::regprocedure::text, \
                    coalesce(array_to_string(p.proconfig, ';'), ''), \
                    p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0), \
                    pg_get_userbyid(p.proowner)::text \
             FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    assert!(rows.len() >= FUNCTION_FILES.len());
    let owner = d.db.role_name(Role::Migrate);
    for r in rows {
        let (name, sig, config, public): (String, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(files.contains(name.as_str()), "{sig} has no file");
        assert!(
            config.contains("search_path=pg_catalog, public, pg_temp"),
            "{sig}: {config}"
        );
        assert!(!public, "PUBLIC may run {sig}");
        assert_eq!(
            r.get::<_, String>(4),
            owner,
            "{sig}: owned by the migrate role"
        );
    }
}

/// A digest of everything the attacks aim at.
pub(super) async fn digest(admin: &Client) -> String {
    admin
        .query_one(
            "SELECT md5(concat_ws('|', \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_rows t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_pii_vault t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_vault_keys t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_pii_audit t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_erased t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_key_state t), \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins_roles t), \
               (SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class \
                WHERE relnamespace = 'public'::regnamespace)))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}
