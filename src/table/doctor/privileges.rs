//! Doctor's `privileges` check: each registered role's privileges against
//! what `login-etl grants` gives its kind in the database's profile,
//! both ways: what it lacks (the function or command would fail) and what
//! it holds beyond (a stolen credential of it could do more than its kind).

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::{Report, ident};
use crate::profile::Profile;
use crate::table::privileges::{Role, table_grants};
use crate::table::schema::functions::files;

/// The role's direct grants on login-etl's tables, columns and functions
/// in the current schema: (object kind, table or signature, column, privilege).
const HELD_SQL: &str = "\
    WITH r AS (SELECT oid FROM pg_roles WHERE rolname = $1), \
         n AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
    SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, c.relname::text, NULL::text, a.privilege_type \
      FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a \
     WHERE c.relnamespace = (SELECT oid FROM n) AND c.relname LIKE 'user\\_logins%' \
       AND c.relname <> 'user_logins_legacy' AND a.grantee = (SELECT oid FROM r) \
    UNION ALL \
    SELECT 'column', c.relname::text, t.attname::text, a.privilege_type \
      FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid CROSS JOIN LATERAL aclexplode(t.attacl) a \
     WHERE c.relnamespace = (SELECT oid FROM n) AND c.relname LIKE 'user\\_logins%' \
       AND c.relname <> 'user_logins_legacy' AND a.grantee = (SELECT oid FROM r) \
    UNION ALL \
    SELECT 'function', p.oid::regprocedure::text, p.proname::text, a.privilege_type \
      FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a \
     WHERE p.pronamespace = (SELECT oid FROM n) AND p.proname LIKE 'login\\_etl\\_%' \
       AND a.grantee = (SELECT oid FROM r)";

/// Compares each registered role of a kind the profile has.
pub(super) async fn check(
    client: &Client,
    profile: Profile,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("privileges");
    let rows = client
        .query(
            "SELECT g.role_name::text, g.kind::text FROM user_logins_roles g \
             JOIN pg_roles r ON r.rolname = g.role_name ORDER BY 1",
            &[],
        )
        .await?;
    for row in rows {
        let (name, kind): (String, String) = (row.get(0), row.get(1));
        let Some(role) = Role::parse(&kind) else {
            continue;
        };
        if !role.in_profile(profile) {
            report.found(
                "privileges",
                format!("role {name} ({kind})"),
                format!("is registered as a {kind} role, which the {} profile has not", profile.as_str()),
                format!(
                    "as the tables' owner: DELETE FROM user_logins_roles WHERE role_name = {}; then revoke what it holds (the REVOKEs below)",
                    postgres_protocol::escape::escape_literal(&name)
                ),
            );
        }
        let expected = Expected::of(client, role, profile).await?;
        let extra = beyond(client, &name, &expected).await?;
        let subject = format!("role {name} ({kind})");
        if !extra.is_empty() {
            report.found(
                "privileges",
                subject.clone(),
                format!(
                    "holds {} privilege(s) beyond its kind (`login-etl grants --role {kind}` gives none of them): a stolen credential of it could use them",
                    extra.len()
                ),
                format!(
                    "as the tables' owner: {} then give back what a REVOKE of a whole-table privilege takes of the kind's column privileges: {} | psql",
                    extra.join(" "),
                    report.grants_command(&kind, &name)
                ),
            );
        }
        let lacks = expected.lacking(client, &name).await?;
        if !lacks.is_empty() {
            report.found(
                "privileges",
                subject,
                format!("lacks {}", lacks.join(", ")),
                format!(
                    "as the tables' owner: {} | psql",
                    report.grants_command(&kind, &name)
                ),
            );
        }
        standing(client, &name, &kind, report).await?;
    }
    public_grants(client, report).await
}

/// What a role has beyond any grant on login-etl's objects: membership of
/// other roles (their privileges, the tables' owner's included) and
/// attributes; `grants` gives a kind neither.
async fn standing(
    client: &Client,
    name: &str,
    kind: &str,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid \
                          WHERE m.member = r.oid ORDER BY 1), \
                    ARRAY(SELECT DISTINCT coalesce(pg_get_userbyid(m.grantor)::text, '?') FROM pg_auth_members m \
                          WHERE m.member = r.oid ORDER BY 1), \
                    ARRAY(SELECT a FROM unnest(ARRAY[CASE WHEN r.rolsuper THEN 'SUPERUSER' END, \
                          CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END, CASE WHEN r.rolcreatedb THEN 'CREATEDB' END, \
                          CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END, CASE WHEN r.rolreplication THEN 'REPLICATION' END]) a \
                          WHERE a IS NOT NULL) \
             FROM pg_roles r WHERE r.rolname = $1",
            &[&name],
        )
        .await?;
    let (groups, grantors, attributes): (Vec<String>, Vec<String>, Vec<String>) =
        (row.get(0), row.get(1), row.get(2));
    let role = ident(name);
    if !groups.is_empty() {
        let quoted: Vec<String> = groups.iter().map(|g| ident(g)).collect();
        report.found(
            "privileges",
            format!("role {name} ({kind})"),
            format!(
                "is a member of {}: it holds their privileges too (the tables' owner's would let it do anything to them)",
                groups.join(", ")
            ),
            // A REVOKE takes back only its runner's grant (a superuser's: any).
            format!(
                "as the role that granted it ({}) or a superuser: REVOKE {} FROM {role};",
                grantors.join(", "),
                quoted.join(", ")
            ),
        );
    }
    if !attributes.is_empty() {
        // CREATEROLE and CREATEDB an admin may take back; the others need a
        // superuser (from PostgreSQL 16, an admin that holds the attribute).
        let (admin, superuser): (Vec<&String>, Vec<&String>) = attributes
            .iter()
            .partition(|a| matches!(a.as_str(), "CREATEROLE" | "CREATEDB"));
        let off = |set: &[&String]| {
            set.iter()
                .map(|a| format!("NO{a}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut fix = Vec::new();
        if !admin.is_empty() {
            fix.push(format!("as the admin: ALTER ROLE {role} {};", off(&admin)));
        }
        if !superuser.is_empty() {
            fix.push(format!(
                "as a superuser: ALTER ROLE {role} {};",
                off(&superuser)
            ));
        }
        report.found(
            "privileges",
            format!("role {name} ({kind})"),
            format!(
                "has {}, which no login-etl role needs",
                attributes.join(", ")
            ),
            fix.join(" Then, "),
        );
    }
    Ok(())
}

/// PUBLIC's privileges on login-etl's tables, columns and functions (a
/// function's default, with no ACL, is PUBLIC's EXECUTE): every role of
/// the server would hold them. All but the one migrations/0024 gives:
/// SELECT on `user_logins_schema`, the schema's recorded version and
/// profile, which every role's guard and doctor read.
async fn public_grants(client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH n AS (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
             SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, c.relname::text, NULL::text, a.privilege_type \
               FROM pg_class c CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a \
              WHERE c.relnamespace = (SELECT oid FROM n) AND c.relname LIKE 'user\\_logins%' AND a.grantee = 0 \
                AND (c.relname, a.privilege_type) <> ('user_logins_schema', 'SELECT') \
             UNION ALL \
             SELECT 'column', c.relname::text, t.attname::text, a.privilege_type \
               FROM pg_attribute t JOIN pg_class c ON c.oid = t.attrelid CROSS JOIN LATERAL aclexplode(t.attacl) a \
              WHERE c.relnamespace = (SELECT oid FROM n) AND c.relname LIKE 'user\\_logins%' AND a.grantee = 0 \
             UNION ALL \
             SELECT 'function', p.oid::regprocedure::text, p.proname::text, a.privilege_type \
               FROM pg_proc p CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a \
              WHERE p.pronamespace = (SELECT oid FROM n) AND p.proname LIKE 'login\\_etl\\_%' AND a.grantee = 0 \
             ORDER BY 1, 2, 3, 4",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let revokes: Vec<String> = rows
        .iter()
        .map(|r| {
            let (object, target, col, privilege): (String, String, Option<String>, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            revoke(&object, &target, col.as_deref(), &privilege, "PUBLIC")
        })
        .collect();
    report.found(
        "privileges",
        "PUBLIC",
        format!(
            "holds {} privilege(s) on login-etl's tables or functions: every role of the server holds them",
            revokes.len()
        ),
        format!("as the tables' owner: {}", revokes.join(" ")),
    );
    Ok(())
}

/// The REVOKEs of what `role` holds directly beyond `expected`.
async fn beyond(
    client: &Client,
    name: &str,
    expected: &Expected,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let held = client.query(HELD_SQL, &[&name]).await?;
    let mut extra = Vec::new();
    for h in &held {
        let (object, target, col, privilege): (String, String, Option<String>, String) =
            (h.get(0), h.get(1), h.get(2), h.get(3));
        let allowed = match object.as_str() {
            "table" => expected
                .tables
                .contains(&(target.clone(), privilege.clone())),
            "column" => {
                let col = col.unwrap_or_default();
                expected
                    .tables
                    .contains(&(target.clone(), privilege.clone()))
                    || expected
                        .columns
                        .contains(&(target.clone(), col.clone(), privilege.clone()))
            }
            _ => col
                .as_deref()
                .is_some_and(|f| expected.functions.contains(f)),
        };
        if !allowed {
            extra.push(revoke(
                &object,
                &target,
                h.get::<_, Option<String>>(2).as_deref(),
                &privilege,
                &ident(name),
            ));
        }
    }
    Ok(extra)
}

/// The REVOKE of one held privilege from `grantee` (a quoted role name,
/// or PUBLIC).
fn revoke(object: &str, target: &str, col: Option<&str>, privilege: &str, grantee: &str) -> String {
    let role = grantee;
    let table = |t: &str| postgres_protocol::escape::escape_identifier(t);
    match (object, col) {
        ("table", _) => format!("REVOKE {privilege} ON TABLE {} FROM {role};", table(target)),
        ("sequence", _) => format!(
            "REVOKE {privilege} ON SEQUENCE {} FROM {role};",
            table(target)
        ),
        ("column", Some(c)) => format!(
            "REVOKE {privilege} ({}) ON TABLE {} FROM {role};",
            postgres_protocol::escape::escape_identifier(c),
            table(target)
        ),
        _ => format!("REVOKE {privilege} ON FUNCTION {target} FROM {role};"),
    }
}

/// What `grants` gives a kind, restricted to what the database holds.
struct Expected {
    /// (table, privilege) granted on the whole table.
    tables: BTreeSet<(String, String)>,
    /// (table, column, privilege).
    columns: BTreeSet<(String, String, String)>,
    /// Function names (every overload).
    functions: BTreeSet<String>,
}

impl Expected {
    async fn of(
        client: &Client,
        role: Role,
        profile: Profile,
    ) -> Result<Self, tokio_postgres::Error> {
        let mut out = Expected {
            tables: BTreeSet::new(),
            columns: BTreeSet::new(),
            functions: BTreeSet::new(),
        };
        if !role.in_profile(profile) {
            return Ok(out); // a kind the profile has not: it should hold nothing
        }
        let mut present: BTreeMap<&str, bool> = BTreeMap::new();
        for (_, table, _) in table_grants(role) {
            if !present.contains_key(table) {
                let exists: bool = client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
                    .await?
                    .get(0);
                present.insert(table, exists);
            }
        }
        for (privilege, table, columns) in table_grants(role) {
            if !present[table] {
                continue;
            }
            if columns.is_empty() {
                out.tables.insert(((*table).into(), (*privilege).into()));
            }
            for c in *columns {
                out.columns
                    .insert(((*table).into(), (*c).into(), (*privilege).into()));
            }
        }
        for f in files(profile) {
            if role.may_run(&f.kinds()) {
                out.functions.insert(f.name.to_owned());
            }
        }
        Ok(out)
    }

    /// What the role cannot use of it, through any grant.
    async fn lacking(
        &self,
        client: &Client,
        role: &str,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let mut lacks = Vec::new();
        for (table, privilege) in &self.tables {
            let ok: bool = client
                .query_one(
                    "SELECT has_table_privilege($1::name, $2::text, $3::text)",
                    &[&role, table, privilege],
                )
                .await?
                .get(0);
            if !ok {
                lacks.push(format!("{privilege} on {table}"));
            }
        }
        for (table, col, privilege) in &self.columns {
            let ok: bool = client
                .query_one(
                    "SELECT has_column_privilege($1::name, $2::text, $3::text, $4::text)",
                    &[&role, table, col, privilege],
                )
                .await?
                .get(0);
            if !ok {
                lacks.push(format!("{privilege} ({col}) on {table}"));
            }
        }
        let names: Vec<&str> = self.functions.iter().map(String::as_str).collect();
        let missing = client
            .query(
                "SELECT p.oid::regprocedure::text FROM pg_proc p \
                 WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) AND p.proname = ANY ($2) \
                   AND NOT has_function_privilege($1::name, p.oid, 'EXECUTE') ORDER BY 1",
                &[&role, &names],
            )
            .await?;
        lacks.extend(
            missing
                .iter()
                .map(|r| format!("EXECUTE on {}", r.get::<_, String>(0))),
        );
        Ok(lacks)
    }
}
