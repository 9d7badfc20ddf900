//! The insider's suite: each login-etl role, holding exactly what
//! `login-etl grants` gives it, tried as a stolen credential would be.
//!
//! A deployment as production has it: the tables migrated by a migrate
//! role that is no superuser (so the owner's functions run with that
//! role's rights, not a superuser's), the six other roles granted by the
//! SQL `login-etl grants` prints, data written by the real function,
//! `forget` and `maintain`. Then, for every role:
//!
//! - what it holds, read from the catalog, must equal an oracle written
//!   here apart from src/table/privileges.rs (so a grant widened there, or
//!   by a migration, fails this suite): tables, columns (system columns
//!   too), sequences, functions, the schema, the database, memberships;
//! - a catalogue of attempts: read or change what is not its own, call
//!   each owner's function out of its protocol (out of a rotation, with a
//!   forged day or key version, with other entries' ctids), plant objects
//!   in pg_temp (the only schema it can create in) and call the owner's
//!   functions beside them, `SET ROLE`, `TRUNCATE`, `ALTER`, triggers,
//!   indexes, sequences, large objects, server files. Each is refused, or
//!   harmless: the data's digest is the same after them all;
//! - then the real commands run beside what was planted (the function,
//!   `maintain` with retention, `forget`, a whole `rotate-key`), as their
//!   roles, and nothing planted ran (the oracle holds again, the data is
//!   what they made it).
//!
//! On the server's defaults, and on PostgreSQL 13/14's, where PUBLIC may
//! create in `public`: there `migrate` refuses until the statement it
//! prints is run, and the function warns when the schema is opened again.

use crate::common;

use std::collections::BTreeSet;

use common::keys::*;
use common::*;
use login_etl::synth::{self, Options};
use login_etl::testing::database::DbConfig;
use login_etl::testing::grants::Role;
use login_etl::testing::ingest::handler::BatchHandler;
use login_etl::testing::privacy::rekey::{self, RekeyOptions};
use login_etl::testing::table::maintain::{self, MaintainOptions};
use login_etl::testing::table::schema::functions::FUNCTION_FILES;
use login_etl::{Deadline, SqsBatch, startup};
use tokio_postgres::Client;

/// `(table, privilege, columns)`: what a role may do, written here apart
/// from the code (the whole table when no column is named).
type Allowed = &'static [(&'static str, &'static str, &'static [&'static str])];

/// The functions every login-etl program's role may run (read-only state);
/// the reader runs none.
const EVERY_ROLE: &[&str] = &[
    "login_etl_current_key_version",
    "login_etl_drain_state",
    "login_etl_key_state",
    "login_etl_partitions",
];

/// [`EVERY_ROLE`]'s functions, as `role` holds them.
fn every_role(role: Role) -> &'static [&'static str] {
    if role == Role::Reader {
        &[]
    } else {
        EVERY_ROLE
    }
}

fn allowed(role: Role) -> Allowed {
    match role {
        Role::Ingest => &[
            ("user_logins", "INSERT", &[]),
            (
                "user_logins",
                "SELECT",
                &["message_id", "sent_at", "create_date", "xmin"],
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
                &["user_id", "masked_ip", "masked_device_id", "create_date"],
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
                "user_logins",
                "SELECT",
                &[
                    "tableoid",
                    "ctid",
                    "masked_ip",
                    "masked_device_id",
                    "key_version",
                    "create_date",
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
fn may_run(role: Role) -> &'static [&'static str] {
    match role {
        Role::Ingest => &[
            "login_etl_check_keys",
            "login_etl_check_write",
            "login_etl_erased_below",
            "login_etl_key_changed_at",
            "login_etl_refuse_erased",
            "login_etl_refuse_erased_at",
            "login_etl_store_vault",
            "login_etl_write",
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

/// The roles an attacker may hold (the migrate role owns everything).
const ROLES: [Role; 8] = [
    Role::Ingest,
    Role::Reveal,
    Role::Erase,
    Role::Maintain,
    Role::Audit,
    Role::Rotate,
    Role::Upgrade,
    Role::Reader,
];

/// A deployment as production has one.
struct Deployment {
    db: TestDb,
    admin: Client,
    owner: String,
}

impl Deployment {
    fn url(&self, role: Role) -> String {
        with_user(&self.db.url, &self.db.role_name(role))
    }

    async fn connect(&self, role: Role) -> Client {
        connect(&self.url(role)).await
    }

    async fn function(&self) -> BatchHandler {
        handler_with(&[
            ("DATABASE_URL", &self.url(Role::Ingest)),
            ("MASKING_KEY", &doc(&K, 1)),
            ("ERASURE_KEY", &doc(&E, 1)),
        ])
        .await
        .with_vault(data_key())
    }
}

fn db_config(url: &str) -> DbConfig {
    let url = url.to_owned();
    DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap()
}

/// The migrate role migrates; on PostgreSQL 13/14's defaults it is refused
/// first, and the statement its error prints, run as the schema's owner,
/// is the fix. The other roles get what `login-etl grants` prints, run as
/// the tables' owner, as the docs say.
async fn deploy(pg13_defaults: bool) -> Deployment {
    let db = TestDb::create().await;
    let admin = db.client().await;
    if pg13_defaults {
        admin
            .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
            .await
            .unwrap();
    }
    let owner = db.role_url(Role::Migrate).await;
    if pg13_defaults {
        let refused = startup::migrate(
            &db_config(&owner),
            login_etl::testing::profile::Profile::Full,
        )
        .await
        .expect_err("migrate refuses a schema every role may create in")
        .to_string();
        assert!(
            refused.contains("every role (PUBLIC) may CREATE in schema \"public\""),
            "{refused}"
        );
        let fix = "REVOKE CREATE ON SCHEMA \"public\" FROM PUBLIC;";
        assert!(refused.contains(fix), "the one-line fix: {refused}");
        admin.batch_execute(fix).await.unwrap();
    }
    startup::migrate(
        &db_config(&owner),
        login_etl::testing::profile::Profile::Full,
    )
    .await
    .expect("the migrate role migrates");
    let owner_client = connect(&owner).await;
    for role in ROLES {
        let name = db.role_name(role);
        db.bare_named_role(&name).await;
        let grants = login_etl::testing::grants::sql(
            role,
            &name,
            "public",
            login_etl::testing::profile::Profile::Full,
        )
        .unwrap();
        owner_client
            .batch_execute(&grants)
            .await
            .unwrap_or_else(|e| panic!("{role:?}'s grants as the owner: {e}"));
    }
    Deployment { db, admin, owner }
}

/// Data for the attacks to aim at: rows and vault entries written by the
/// function, an erasure (audit records, the erasure list), maintain.
async fn seed(d: &Deployment) {
    let h = d.function().await;
    for seed in 1..=3 {
        let event = synth::event(&Options {
            count: 40,
            seed,
            ..Options::default()
        });
        handle_all_ok(&h, &event).await;
    }
    forget(d, "user-erased-before-the-attacks").await;
    run_maintain(d).await;
}

async fn forget(d: &Deployment, user: &str) -> u64 {
    let mut erase = d.connect(Role::Erase).await;
    login_etl::testing::privacy::forget::forget(&mut erase, user, masker(1).users(), CALLER)
        .await
        .expect("forget as the erase role")
        .rows
}

async fn run_maintain(d: &Deployment) {
    record_retention(&connect(&d.owner).await, 3650).await;
    let client = d.connect(Role::Maintain).await;
    maintain::run(
        &client,
        &MaintainOptions {
            retention_days: Some(3650),
            ..Default::default()
        },
    )
    .await
    .expect("maintain as the maintain role");
}

/// What `role` holds, from the catalog, as `table.PRIV` and
/// `table(column).PRIV` lines, then `function name()`s, then the rest.
async fn held(admin: &Client, role: &str) -> BTreeSet<String> {
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
fn expected(role: Role) -> BTreeSet<String> {
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
    // recorded state: PUBLIC's (migrations/0021), what every guard reads.
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
async fn assert_least_privilege(d: &Deployment) {
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
async fn assert_every_function_in_one_place(d: &Deployment) {
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
async fn digest(admin: &Client) -> String {
    admin
        .query_one(
            "SELECT md5(concat_ws('|', \
               (SELECT string_agg(t::text, ',' ORDER BY t::text) FROM user_logins t), \
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

/// `sql` as the client's role is refused with one of `codes`.
async fn refused(client: &Client, who: Role, sql: &str, codes: &[&str]) {
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
async fn everyone_tries(d: &Deployment, role: Role, c: &Client) {
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
        "user_logins",
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

/// What each role tries beyond its own, refused or harmless.
async fn role_tries(d: &Deployment, role: Role, c: &Client) {
    const DENIED: &[&str] = &["42501"];
    let today = "(now() AT TIME ZONE 'UTC')::date";
    match role {
        Role::Ingest => {
            // Issue 63, finding 10: raw values in the masked columns, a
            // whole message nested in `extra`: refused by the table's checks.
            let row = |ip: &str, device: &str, extra: &str| {
                format!(
                    "INSERT INTO user_logins (message_id, user_id, masked_ip, masked_device_id, extra, sent_at, create_date) \
                     VALUES ('raw-1', 'u', {ip}, {device}, {extra}, now(), {today})"
                )
            };
            for sql in [
                row("'203.0.113.7'", "NULL", "NULL"),
                row("NULL", "'593-47-5928'", "NULL"),
                row("NULL", "NULL", "'{\"msg\": {\"ip\": \"203.0.113.7\"}}'"),
                row("NULL", "NULL", "'[1, 2]'"),
            ] {
                refused(c, role, &sql, &["23514"]).await;
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
            refused(c, role, "UPDATE user_logins SET masked_ip = 'x'", DENIED).await;
            refused(c, role, "DELETE FROM user_logins", DENIED).await;
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
                .query_one("SELECT ctid::text FROM user_logins LIMIT 1", &[])
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
                "UPDATE user_logins SET masked_ip = masked_device_id",
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
            refused(c, role, "SELECT user_id FROM user_logins", DENIED).await;
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
                .batch_execute("BEGIN; LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
                .await
                .expect_err("no lock that stops reads");
            c.batch_execute("ROLLBACK").await.unwrap();
            assert_eq!(lock.code().map(|c| c.code()), Some("42501"), "{lock:?}");
            for sql in [
                "DELETE FROM user_logins WHERE user_id = 'anyone'",
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
                "UPDATE user_logins SET locale = 'x'",
                "DELETE FROM user_logins",
            ] {
                refused(c, role, sql, DENIED).await;
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
async fn plants_in_pg_temp(d: &Deployment, role: Role, c: &Client) {
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
            c.batch_execute("BEGIN; LOCK TABLE ONLY user_logins IN ROW EXCLUSIVE MODE; \
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
async fn attack(d: &Deployment) {
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

/// A connection as `role`, opened the way every part of login-etl opens
/// one (`Connector`: the stored-settings check included).
async fn open_as(d: &Deployment, role: Role) -> Result<Client, login_etl::SinkError> {
    login_etl::testing::database::Connector::from_config(&db_config(&d.url(role)), None)
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
async fn stored_settings_are_refused_until_reset(d: &Deployment) {
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
        .query_one("SELECT relnamespace::regnamespace::text FROM pg_class WHERE relname = 'user_logins' AND relkind = 'p'", &[])
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
async fn the_vault_day_stays_within_bounds(d: &Deployment) {
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
async fn the_real_commands_run_beside_the_plants(d: &Deployment) {
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
async fn the_reader_reads_every_partition(d: &Deployment) {
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
             WHERE i.inhparent = 'user_logins'::regclass LIMIT 1",
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
        .batch_execute("DELETE FROM user_logins WHERE message_id = 'reader-tomorrow'")
        .await
        .unwrap();
}

/// The reveal role's own transaction (issue 63, finding 1): the records
/// and the entries in one transaction, a SAVEPOINT rolled back, a ROLLBACK
/// after the read: nothing is handed out before its audit record
/// commits, so nothing leaves without one. Committed, the ticket reads once.
async fn a_reveal_hands_out_nothing_before_its_record_commits(d: &Deployment) {
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

async fn the_whole_suite(pg13_defaults: bool) {
    let d = deploy(pg13_defaults).await;
    assert_every_function_in_one_place(&d).await;
    assert_least_privilege(&d).await;
    seed(&d).await;
    the_reader_reads_every_partition(&d).await;
    a_reveal_hands_out_nothing_before_its_record_commits(&d).await;
    attack(&d).await;
    stored_settings_are_refused_until_reset(&d).await;
    the_vault_day_stays_within_bounds(&d).await;
    the_real_commands_run_beside_the_plants(&d).await;
}

#[tokio::test]
async fn every_role_is_refused_beyond_its_kind_on_the_servers_defaults() {
    the_whole_suite(false).await;
}

#[tokio::test]
async fn every_role_is_refused_beyond_its_kind_on_postgresql_13_and_14s_defaults() {
    the_whole_suite(true).await;
}

/// The review's first replay, on a schema opened to PUBLIC after
/// migrate: an ingest credential plants `<>(integer, integer)` whose
/// function grants the vault to its caller, then runs the write check,
/// which compares integers with `<>`. pg_catalog first in the owner's
/// functions' path keeps the planted operator out; the function warns at
/// connect that the schema is open (what the operator must mend: an
/// overload that matches better would still win).
#[tokio::test]
async fn a_planted_operator_never_runs_as_the_owner_and_an_open_schema_is_reported() {
    let d = deploy(false).await;
    let ingest = d.db.role_name(Role::Ingest);
    d.admin
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    let c = d.connect(Role::Ingest).await;
    c.batch_execute(&format!(
        "CREATE FUNCTION public.planted_ne(integer, integer) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN EXECUTE 'GRANT SELECT, UPDATE, DELETE ON user_logins_pii_vault TO \"{ingest}\"'; \
         RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$; \
         CREATE OPERATOR public.<> (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.planted_ne)"
    ))
    .await
    .expect("PUBLIC may create in the opened schema");
    // Committed, as the replay ran it: a rollback would undo the grant.
    c.batch_execute("SELECT login_etl_check_write(0, 1, 1)")
        .await
        .expect("the write check");
    let got: bool = d
        .admin
        .query_one(
            "SELECT has_table_privilege($1, 'user_logins_pii_vault', 'SELECT')",
            &[&ingest],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!got, "the planted operator ran with the owner's rights");
    let state = login_etl::testing::table::schema::inspect(&c)
        .await
        .unwrap();
    assert_eq!(
        state.schema_writers,
        ["PUBLIC"],
        "what the function warns of"
    );
    let again = startup::migrate(
        &db_config(&d.owner),
        login_etl::testing::profile::Profile::Full,
    )
    .await
    .expect_err("migrate refuses the opened schema")
    .to_string();
    assert!(
        again.contains("REVOKE CREATE ON SCHEMA \"public\" FROM PUBLIC;"),
        "{again}"
    );
}
