//! What each login-etl role may do in the database, as data: its kind
//! ([`Role`]), the table and column privileges its statements need
//! ([`table_grants`]), and the SQL that gives every registered role of a
//! kind what the installed version needs ([`apply_sql`], run by every
//! `login-etl migrate`). The owner's functions each role may run are named
//! in the functions' own files (`-- roles:`, see
//! [`crate::table::schema::functions`]).
//!
//! Least privilege, column by column: a role gets only the columns its
//! statements name. `SELECT` on a column is granted where PostgreSQL needs
//! it beyond the obvious: `ON CONFLICT (col)` reads its arbiter columns, a
//! `DELETE ... WHERE col` reads `col`, and the lost-reply recount reads
//! `xmin` (see `ingest::sink::insert`). What a role may change beyond its
//! own rows it changes through an owner's function that checks the change
//! (the vault's entries, re-keyed tokens), never by a grant on the table.

use std::fmt::Write as _;

use crate::error::DbError;
use crate::profile::Profile;

/// A role of the deployment, by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "service", derive(clap::ValueEnum))]
pub enum Role {
    /// The function (Lambda or `poll`): inserts rows; stores vault entries
    /// through `login_etl_store_vault`.
    Ingest,
    /// `login-etl reveal`: the vault entries of the tokens it names, each
    /// with its audit record, through the owner's `login_etl_reveal`.
    Reveal,
    /// `login-etl forget`: deletes a user's rows and the vault entries only
    /// they used.
    Erase,
    /// `login-etl migrate`: creates the tables (and so owns them).
    Migrate,
    /// `login-etl maintain`: makes and drops partitions through the owner's
    /// functions (EXECUTE on them, no DDL of its own).
    Maintain,
    /// `login-etl audit`: reads the audit trail of reveals and erasures.
    Audit,
    /// `login-etl rotate-key`: re-keys stored tokens (rows, vault, erasure
    /// list) to the next masking-key version, through the owner's functions.
    Rotate,
    /// `login-etl vault-upgrade`: re-seals vault entries from before key
    /// versions (once per deployment that has them).
    Upgrade,
    /// An analyst: reads the masked rows (`user_logins`, every partition
    /// through it), nothing else: no vault, audit, key state, erasure list
    /// or function.
    Reader,
}

impl Role {
    /// Every role, in the order docs/configuration.md presents them.
    pub const ALL: [Role; 9] = [
        Role::Ingest,
        Role::Reveal,
        Role::Erase,
        Role::Migrate,
        Role::Maintain,
        Role::Audit,
        Role::Rotate,
        Role::Upgrade,
        Role::Reader,
    ];

    /// The name on the command line, and the kind in `user_logins_roles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Reveal => "reveal",
            Role::Erase => "erase",
            Role::Migrate => "migrate",
            Role::Maintain => "maintain",
            Role::Audit => "audit",
            Role::Rotate => "rotate",
            Role::Upgrade => "upgrade",
            Role::Reader => "reader",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// What the role may do, one line (the SQL's header comment).
    pub fn purpose(self) -> &'static str {
        match self {
            Role::Ingest => {
                "the function: INSERT rows, store PII-vault entries through the owner's login_etl_store_vault, read back only what ON CONFLICT and the lost-reply recount need"
            }
            Role::Reveal => {
                "login-etl reveal: the vault entries and KMS-wrapped data keys of the tokens it names, each with its audit record, only through the owner's login_etl_reveal (decryption also needs kms:Decrypt)"
            }
            Role::Erase => {
                "login-etl forget: delete a user's rows, and the vault entries no other row uses through the owner's functions"
            }
            Role::Migrate => {
                "login-etl migrate: create the tables in the schema; the tables it creates are its own"
            }
            Role::Maintain => {
                "login-etl maintain: make partitions ahead, empty the DEFAULT partition, drop partitions and PII-vault entries past retention, only through the owner's login_etl_* functions"
            }
            Role::Audit => {
                "login-etl audit: read the audit trail of reveals and erasures, nothing else"
            }
            Role::Rotate => {
                "login-etl rotate-key: re-key the stored tokens (user_logins, the vault, the erasure list) to the next masking-key version through the owner's functions, only while a rotation is under way; read no PII, decrypt nothing"
            }
            Role::Upgrade => {
                "login-etl vault-upgrade: read and re-seal in place the vault entries from before key versions (decryption also needs kms:Decrypt), its audit record through the owner's login_etl_audit"
            }
            Role::Reader => {
                "an analyst: read the masked rows of user_logins (every partition, through it), nothing else: no vault, audit trail, key state, erasure list or function"
            }
        }
    }

    /// Whether a function file's `-- roles:` line (its kinds, or `all`:
    /// every program's) names this role. The migrate role owns the
    /// functions, and the reader runs none.
    pub fn may_run(self, kinds: &[&str]) -> bool {
        !matches!(self, Role::Migrate | Role::Reader)
            && kinds.iter().any(|k| *k == "all" || *k == self.as_str())
    }

    /// Whether a database of `profile` has this role: the masking-only
    /// profile has the migrate, ingest, maintain and reader roles only.
    pub fn in_profile(self, profile: Profile) -> bool {
        profile == Profile::Full
            || matches!(
                self,
                Role::Migrate | Role::Ingest | Role::Maintain | Role::Reader
            )
    }
}

/// The tables only the full profile has (the `-- profile: full` files of `migrations/` create
/// them; a test checks the list against those files).
pub const FULL_ONLY_TABLES: &[&str] = &[
    "user_logins_pii_vault",
    "user_logins_vault_keys",
    "user_logins_pii_audit",
    "user_logins_erased",
    "user_logins_erasure_tokens",
    "user_logins_pii_vault_held",
    "user_logins_rekeyed",
];

/// `(privilege, table, columns)`: one GRANT each; no columns means the
/// whole table (DELETE has no column form).
pub type Grant = (&'static str, &'static str, &'static [&'static str]);

const ERASURE_TOKEN: &[&str] = &["user_key", "kind", "token"];
const AUDIT_COLUMNS: &[&str] = &[
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
];

/// The function: its writes, the lost-reply recount, the erasure list.
/// Its vault entries go through `login_etl_store_vault`.
const INGEST_GRANTS: &[Grant] = &[
    // Table-level: the write transaction first takes ROW EXCLUSIVE
    // with LOCK TABLE (see ingest::sink::tx::begin_sql), which a
    // column-level grant does not allow.
    ("INSERT", "user_logins_rows", &[]),
    // The previous release's writes, which name the view (its INSTEAD
    // OF trigger, migrations/0028): it goes on ingesting through the
    // narrow row's cutover and after a rollback.
    ("INSERT", "user_logins", &[]),
    // The lost-reply recount finds the batch's rows by their key
    // and reads xmin.
    (
        "SELECT",
        "user_logins_rows",
        &["message_id", "sent_at", "xmin"],
    ),
    // The erasure list, kept in memory, and the check of its version
    // and the key's (login_etl_check_write, the owner's rights).
    ("SELECT", "user_logins_erased", &["user_key", "seq"]),
];

/// `reveal`: nothing but `login_etl_reveal`, which reads and audits in one
/// statement.
const REVEAL_GRANTS: &[Grant] = &[];

/// `vault-upgrade`: the entries from before key versions, read, locked and
/// re-sealed in place (it decrypts them, as a reveal does, and keeps the
/// values in memory) so that a re-key can change their tokens.
const UPGRADE_GRANTS: &[Grant] = &[
    (
        "SELECT",
        "user_logins_pii_vault",
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
        "SELECT",
        "user_logins_vault_keys",
        &["key_id", "wrapped_key"],
    ),
    (
        "UPDATE",
        "user_logins_pii_vault",
        &["nonce", "ciphertext", "aad_version"],
    ),
];

/// `forget`: the user's rows, the erasure list, its audit; the vault's
/// entries moved aside and back through the owner's functions.
const ERASE_GRANTS: &[Grant] = &[
    // Finds the tokens other users' rows still use, one partition at a
    // time; its rows are deleted by the owner's login_etl_forget_rows,
    // once their forget_begun is committed (no DELETE of its own).
    (
        "SELECT",
        "user_logins",
        &["user_id", "masked_ip", "masked_device_id", "sent_at"],
    ),
    ("SELECT", "user_logins_erasure_tokens", ERASURE_TOKEN),
    ("DELETE", "user_logins_erasure_tokens", &[]),
    // Which of the user's held entries another erasure holds too, and
    // the entries no other row uses, deleted at its end.
    (
        "SELECT",
        "user_logins_pii_vault_held",
        &["user_key", "kind", "token"],
    ),
    ("DELETE", "user_logins_pii_vault_held", &[]),
    // The erasure list is written by the owner's login_etl_forget_begin;
    // the final audit record goes through the owner's login_etl_audit.
    ("SELECT", "user_logins_erased", &["user_key"]),
];

/// The reader: the masked rows, through the parent (every partition, those
/// to come too), table-level (a column added later is read as well).
const READER_GRANTS: &[Grant] = &[("SELECT", "user_logins", &[])];

/// `audit`: the audit trail, read only.
const AUDIT_GRANTS: &[Grant] = &[("SELECT", "user_logins_pii_audit", AUDIT_COLUMNS)];

/// `rotate-key`: the tokens and their version, by chunks of pages; the
/// erasure list; the re-key's state. It writes only through the owner's
/// `login_etl_rekey_*` functions.
const ROTATE_GRANTS: &[Grant] = &[
    // Chunks of pages (ctid ranges) of one partition at a time
    // (tableoid), through the parent; the tokens, their version and the
    // user id their tag is computed from.
    (
        "SELECT",
        "user_logins_rows",
        &[
            "tableoid",
            "ctid",
            "masked_ip",
            "masked_device_id",
            "key_version",
            "sent_at",
            // Its rows' user tags at the new version (migrations/0026).
            "user_id",
            "user_id_text",
        ],
    ),
    // The vault's tokens (never its ciphertexts), read by chunk.
    (
        "SELECT",
        "user_logins_pii_vault",
        &["ctid", "kind", "token", "key_version", "aad_version"],
    ),
    // The erasure list, read to compute its next user keys.
    ("SELECT", "user_logins_erased", &["user_key", "key_version"]),
    (
        "SELECT",
        "user_logins_key_state",
        &[
            "version",
            "rekey_from",
            "rekey_rows",
            "rekey_vault",
            "erasure_derived",
            // When the re-key began: the rate `--status` reports.
            "changed_at",
        ],
    ),
];

/// The table and column privileges of `role` (none for migrate, which
/// owns the tables, and maintain, which runs functions only).
pub fn table_grants(role: Role) -> &'static [Grant] {
    match role {
        Role::Ingest => INGEST_GRANTS,
        Role::Reveal => REVEAL_GRANTS,
        Role::Erase => ERASE_GRANTS,
        Role::Migrate | Role::Maintain => &[],
        Role::Audit => AUDIT_GRANTS,
        Role::Rotate => ROTATE_GRANTS,
        Role::Upgrade => UPGRADE_GRANTS,
        Role::Reader => READER_GRANTS,
    }
}

/// An owner's function as the privileges see it: its name (every
/// overload), the tag its file's text gives it (its comment becomes the tag
/// and the MD5 of the body it was made with), and the kinds of role that
/// may run it.
pub struct FunctionGrant<'a> {
    /// `login_etl_*`.
    pub name: &'a str,
    /// `login-etl:<hash>` of its file's text.
    pub tag: &'a str,
    /// Role kinds (`all`: every kind but migrate).
    pub kinds: Vec<&'a str>,
}

/// A string as a SQL literal.
fn literal(s: &str) -> String {
    postgres_protocol::escape::escape_literal(s)
}

/// `functions` as rows of a `VALUES` list: (name, tag, kinds).
fn function_rows(functions: &[FunctionGrant<'_>]) -> String {
    let mut rows = String::new();
    for f in functions {
        let kinds: Vec<String> = f.kinds.iter().map(|k| literal(k)).collect();
        let _ = write!(
            rows,
            "{}({}, {}, ARRAY[{}]::text[])",
            if rows.is_empty() { "" } else { ", " },
            literal(f.name),
            literal(f.tag),
            kinds.join(", ")
        );
    }
    rows
}

/// Every kind's table and column privileges as rows of a `VALUES` list:
/// (kind, privilege, table, column or NULL for the whole table).
fn table_rows() -> String {
    let mut rows = String::new();
    for role in Role::ALL {
        for (privilege, table, columns) in table_grants(role) {
            let cols: Vec<Option<&str>> = if columns.is_empty() {
                vec![None]
            } else {
                columns.iter().map(|c| Some(*c)).collect()
            };
            for col in cols {
                let _ = write!(
                    rows,
                    "{}({}, {}, {}, {})",
                    if rows.is_empty() { "" } else { ", " },
                    literal(role.as_str()),
                    literal(privilege),
                    literal(table),
                    col.map_or("NULL".into(), literal)
                );
            }
        }
    }
    rows
}

/// The settings every owner's function runs with beside its search path,
/// whatever the caller's session holds (a role may store its own:
/// [`crate::database::stored_settings`]): dates read and print one way,
/// strings and NULLs compare the standard way.
pub const FUNCTION_SETTINGS: [(&str, &str); 6] = [
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("standard_conforming_strings", "on"),
    ("transform_null_equals", "off"),
    ("array_nulls", "on"),
];

/// The privileges of the version being installed, applied in the
/// migration's transaction after its tables and functions: every
/// `login_etl_*` function of the schema gets the fixed search path
/// (pg_catalog first: a name the catalog defines is never taken from the
/// schema), loses PUBLIC's EXECUTE (owner's functions run with the owner's
/// rights), gets its tag as its comment, and is granted to each registered
/// role (`user_logins_roles`) of a kind its file names; each registered
/// role gets the table and column privileges its kind lacks. Nothing is
/// written where nothing changes (no catalog row is touched twice, so a
/// repeated `migrate` takes no lock a write waits for). Privileges a role
/// holds beyond its kind's are left: `login-etl grants` prints the exact
/// set (the insider suite, tests/it/insiders/, compares both ways).
pub fn apply_sql(functions: &[FunctionGrant<'_>], profile: Profile) -> String {
    let (fns, tables) = (function_rows(functions), table_rows());
    // A role registered as a kind the profile has not gets nothing from it.
    let kinds: Vec<String> = Role::ALL
        .iter()
        .filter(|r| r.in_profile(profile))
        .map(|r| literal(r.as_str()))
        .collect();
    let kinds = kinds.join(", ");
    // The kinds a function marked `all` is for (not the reader, which runs none).
    let runners: Vec<String> = Role::ALL
        .iter()
        .filter(|r| r.in_profile(profile) && r.may_run(&["all"]))
        .map(|r| literal(r.as_str()))
        .collect();
    let runners = runners.join(", ");
    let pinned: Vec<String> = FUNCTION_SETTINGS
        .iter()
        .map(|(name, value)| literal(&format!("{name}={value}")))
        .collect();
    let pinned = pinned.join(", ");
    // Inside format('…'): each value's quotes doubled.
    let pins: String = FUNCTION_SETTINGS
        .iter()
        .map(|(name, value)| format!(" SET {name} = ''{value}''"))
        .collect();
    format!(
        r#"DO $login_etl_privileges$
DECLARE
    f record;
    r record;
    v_path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    FOR f IN
        SELECT p.oid, p.oid::regprocedure AS sig, p.prosrc, p.proconfig, p.proacl, m.tag, m.kinds
        FROM pg_proc p JOIN (VALUES {fns}) AS m(name, tag, kinds) ON m.name = p.proname
        WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
    LOOP
        -- The tag, and the body it was made with (a body replaced by hand
        -- since no longer matches, and the next migrate makes it again).
        IF obj_description(f.oid, 'pg_proc') IS DISTINCT FROM f.tag || ':' || md5(f.prosrc) THEN
            EXECUTE format('COMMENT ON FUNCTION %s IS %L', f.sig, f.tag || ':' || md5(f.prosrc));
        END IF;
        -- Its own settings, whatever the caller's session stored: names
        -- resolve in the schema, dates read and print one way.
        IF NOT coalesce(f.proconfig @> (ARRAY['search_path=' || v_path] || ARRAY[{pinned}]), false) THEN
            EXECUTE format('ALTER FUNCTION %s SET search_path = %s {pins}', f.sig, v_path);
        END IF;
        -- No ACL yet is the default, which lets PUBLIC execute.
        IF f.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(f.proacl) a WHERE a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid) THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f.sig);
        END IF;
        FOR r IN
            SELECT g.role_name FROM user_logins_roles g JOIN pg_roles pr ON pr.rolname = g.role_name
            WHERE g.kind IN ({kinds}) AND (('all' = ANY (f.kinds) AND g.kind IN ({runners})) OR g.kind = ANY (f.kinds))
              AND NOT EXISTS (SELECT 1 FROM pg_proc q CROSS JOIN LATERAL aclexplode(q.proacl) a
                              WHERE q.oid = f.oid AND a.grantee = pr.oid AND a.privilege_type = 'EXECUTE')
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f.sig, r.role_name);
        END LOOP;
    END LOOP;
    FOR r IN
        SELECT g.role_name, m.privilege, m.tbl, m.col
        FROM user_logins_roles g JOIN pg_roles pr ON pr.rolname = g.role_name
        JOIN (VALUES {tables}) AS m(kind, privilege, tbl, col) ON m.kind = g.kind
        WHERE g.kind IN ({kinds}) AND to_regclass(m.tbl) IS NOT NULL
          AND NOT CASE WHEN m.col IS NULL THEN has_table_privilege(pr.oid, to_regclass(m.tbl), m.privilege)
                       ELSE has_column_privilege(pr.oid, to_regclass(m.tbl), m.col, m.privilege) END
    LOOP
        IF r.col IS NULL THEN
            EXECUTE format('GRANT %s ON TABLE %I TO %I', r.privilege, r.tbl, r.role_name);
        ELSE
            EXECUTE format('GRANT %s (%I) ON TABLE %I TO %I', r.privilege, r.col, r.tbl, r.role_name);
        END IF;
    END LOOP;
END
$login_etl_privileges$;
"#
    )
}

/// Who, besides the tables' owner (the role running the query when no
/// table exists yet), the schema's owner and superusers, may CREATE in
/// the current schema: `PUBLIC`, or the roles by name; empty when nobody.
/// An object planted there (an operator, a better-matching overload)
/// could run with the owner's rights inside the owner's functions, pg_catalog
/// first in their path or not.
pub const SCHEMA_WRITERS_SQL: &str = "SELECT current_schema()::text, \
    CASE WHEN EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid AND a.privilege_type = 'CREATE') \
         THEN ARRAY['PUBLIC'] \
         ELSE coalesce((SELECT array_agg(r.rolname::text ORDER BY r.rolname) FROM pg_roles r \
              WHERE has_schema_privilege(r.oid, n.oid, 'CREATE') AND NOT r.rolsuper \
                AND NOT pg_has_role(r.oid, n.nspowner, 'MEMBER') \
                AND NOT pg_has_role(r.oid, coalesce((SELECT relowner FROM pg_class WHERE oid = to_regclass('user_logins')), \
                                                   (SELECT oid FROM pg_roles WHERE rolname = current_user)), 'MEMBER')), '{}') END \
    FROM pg_namespace n WHERE n.oid = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())";

/// The fix for [`SCHEMA_WRITERS_SQL`]'s answer: the one statement the
/// schema's owner runs.
pub fn schema_writers_fix(schema: &str, writers: &[String]) -> String {
    let from: Vec<String> = writers
        .iter()
        .map(|w| {
            if w == "PUBLIC" {
                w.clone()
            } else {
                postgres_protocol::escape::escape_identifier(w)
            }
        })
        .collect();
    format!(
        "REVOKE CREATE ON SCHEMA {} FROM {};",
        postgres_protocol::escape::escape_identifier(schema),
        from.join(", ")
    )
}

/// Refuses to migrate where `writers` ([`SCHEMA_WRITERS_SQL`]'s answer for
/// `schema`) may create in the schema: an operator,
/// function or cast planted there could run with the owner's rights inside
/// the owner's functions, whatever their search path (an overload that
/// matches better wins from later in the path). PostgreSQL 14 and older
/// let PUBLIC create in `public` by default.
pub fn refuse_schema_writers(schema: Option<&str>, writers: &[String]) -> Result<(), DbError> {
    if writers.is_empty() {
        return Ok(());
    }
    let schema = schema.unwrap_or("public");
    let who = if writers == ["PUBLIC"] {
        "every role (PUBLIC)".to_owned()
    } else {
        format!("the roles {}", writers.join(", "))
    };
    Err(DbError::Fatal {
        op: "checking who may create objects in the schema",
        cause: format!(
            "{who} may CREATE in schema \"{schema}\", where login-etl's functions run with the rights of the tables' owner: an object planted there could run with those rights"
        ),
        hint: format!(
            "; run as the schema's owner (or an admin): {} then run login-etl migrate again. Where other applications must create objects in that schema, give login-etl a schema of its own (docs/deploy.md, \"A schema of its own\")",
            schema_writers_fix(schema, writers)
        )
        .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_name_roles_and_migrate_runs_none() {
        assert!(Role::Ingest.may_run(&["ingest", "erase"]));
        assert!(Role::Audit.may_run(&["all"]));
        assert!(!Role::Audit.may_run(&["ingest"]));
        assert!(!Role::Migrate.may_run(&["all"]));
        assert!(!Role::Maintain.may_run(&[]));
    }

    #[test]
    fn the_privileges_sql_quotes_what_it_embeds() {
        let sql = apply_sql(
            &[FunctionGrant {
                name: "login_etl_x",
                tag: "login-etl:'1",
                kinds: vec!["ingest"],
            }],
            Profile::Full,
        );
        assert!(
            sql.contains("('login_etl_x', 'login-etl:''1', ARRAY['ingest']::text[])"),
            "{sql}"
        );
        assert!(sql.contains("('ingest', 'INSERT', 'user_logins_rows', NULL)"));
        assert!(sql.contains("('rotate', 'SELECT', 'user_logins_rows', 'ctid')"));
    }

    #[test]
    fn the_fix_names_each_writer_quoted() {
        assert_eq!(
            schema_writers_fix("public", &["PUBLIC".into()]),
            "REVOKE CREATE ON SCHEMA \"public\" FROM PUBLIC;"
        );
        assert_eq!(
            schema_writers_fix("my \"s\"", &["app".into(), "x y".into()]),
            "REVOKE CREATE ON SCHEMA \"my \"\"s\"\"\" FROM \"app\", \"x y\";"
        );
    }
}
