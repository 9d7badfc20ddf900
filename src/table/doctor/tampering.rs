//! What someone with the owner's rights, or a superuser, could change to
//! switch a guarantee off without a grant changing: a trigger disabled or
//! dropped, an owner's function's body replaced, a grant to a role
//! login-etl does not know, an owner that may do more than own. Read from
//! the catalog alone: doctor may run as a superuser over the schema it
//! audits, so it runs nothing of that schema.

use tokio_postgres::Client;

use super::{Report, ident};
use crate::profile::Profile;
use crate::table::schema::functions::{self, FunctionFile};
use crate::table::schema::lock_rows_missing_sql;
use crate::table::schema::triggers;

/// The tables' owner, and whether this session should become it: a
/// superuser, or a member of the owner, examines as the owner, so that
/// whatever the owner planted in its schema runs, if anything runs it,
/// with no more than the owner's own rights. `None`: no `user_logins`.
pub(super) async fn drop_privileges(
    client: &Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "SELECT o.rolname::pg_catalog.text, \
                    o.rolname OPERATOR(pg_catalog.<>) CURRENT_USER \
                    AND ((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) \
                         OR pg_catalog.pg_has_role(CURRENT_USER, o.oid, 'MEMBER')) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) c.relowner \
             WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', \
                   pg_catalog.current_schema(), 'user_logins'))::pg_catalog.oid",
            &[],
        )
        .await?
    else {
        return Ok(None);
    };
    let (owner, become_it): (String, bool) = (row.get(0), row.get(1));
    if become_it {
        client
            .batch_execute(&format!("SET LOCAL ROLE {}", ident(&owner)))
            .await?;
    }
    Ok(Some(owner))
}

/// Operators in the tables' schema, whoever made them (a role that could
/// create there once, on PostgreSQL 13/14's defaults), but an extension's;
/// and functions of the tables' owner not named `login_etl_*`: login-etl
/// makes none, and in a query on this schema one
/// could run in place of the catalog's (an operator that matches its
/// argument types exactly wins over the catalog's wherever it is on the
/// path). Found, and doctor runs as someone with more rights than the
/// owner: true, and doctor stops before any other query.
pub(super) async fn planted(
    client: &Client,
    owner: &str,
    report: &mut Report,
) -> Result<bool, tokio_postgres::Error> {
    report.checks.push("planted");
    let rows = client
        .query(
            "SELECT 'operator', o.oid::pg_catalog.regoperator::pg_catalog.text FROM pg_catalog.pg_operator o \
             WHERE o.oprnamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n \
                   WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema()) \
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                   WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass \
                     AND d.objid OPERATOR(pg_catalog.=) o.oid AND d.deptype OPERATOR(pg_catalog.=) 'e') \
             UNION ALL \
             SELECT 'function', p.oid::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n \
                   WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema()) \
               AND p.proowner OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r \
                   WHERE r.rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text) \
               AND pg_catalog.left(p.proname::pg_catalog.text, 10) OPERATOR(pg_catalog.<>) 'login_etl_' \
             ORDER BY 2",
            &[&owner],
        )
        .await?;
    let as_owner: bool = client
        .query_one(
            "SELECT CURRENT_USER::pg_catalog.text OPERATOR(pg_catalog.=) $1::pg_catalog.text",
            &[&owner],
        )
        .await?
        .get(0);
    for row in &rows {
        let (kind, signature): (String, String) = (row.get(0), row.get(1));
        report.found(
            "planted",
            format!("{kind} {signature}"),
            format!(
                "is the tables' owner's and not login-etl's: in a query on this schema it could run in place of the catalog's{}",
                if as_owner { "" } else { " (doctor stopped here: it runs with more rights than the owner; run it as the owner, or as a superuser, to examine the rest)" }
            ),
            format!("as the tables' owner, once you know who added it and why: DROP {} {signature}", kind.to_uppercase()),
        );
    }
    Ok(!rows.is_empty() && !as_owner)
}

/// Each trigger of the profile present, as its migration makes it, and
/// firing; and no trigger on login-etl's tables that it did not make.
pub(super) async fn triggers(
    client: &Client,
    profile: Profile,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("triggers");
    for row in client.query(&triggers::unknown_sql(), &[]).await? {
        let (table, kind, definition): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        report.found(
            "triggers",
            format!("{kind} on {table}"),
            format!("login-etl did not make it, and it can change, keep back or hide what login-etl writes and reads there: {definition}"),
            "as the tables' owner, once you know who added it and why: DROP TRIGGER or DROP RULE it, or ALTER TABLE … DISABLE ROW LEVEL SECURITY".into(),
        );
    }
    if triggers::of(profile).is_empty() {
        return Ok(());
    }
    for row in client.query(&triggers::state_sql(), &[]).await? {
        let (table, name, present, firing, as_made): (String, String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let problem = match (present, as_made, firing) {
            (false, _, _) => "is missing: what it keeps true of the table is not enforced",
            (true, false, _) => {
                "is not what login-etl's migration makes (another function, event, column or WHEN condition): what it keeps true of the table may not be enforced"
            }
            (true, true, false) => "is disabled: what it keeps true of the table is not enforced",
            (true, true, true) => continue,
        };
        report.found(
            "triggers",
            format!("trigger {name} on {table}"),
            problem.into(),
            "as the migrate role: login-etl migrate (it makes login-etl's triggers again as they should be, and enables them)".into(),
        );
    }
    Ok(())
}

/// Each of login-etl's locks has its row in `user_logins_locks`: without
/// it the lock holds nothing, and the owner's functions that take it
/// refuse to run. Read only where this session may, and only from a plain
/// table with no row-level security: a view or a policy in its place would
/// run the owner's code in doctor's session (the function never reads it).
pub(super) async fn locks(
    client: &Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("locks");
    let row = client
        .query_one(
            "SELECT coalesce(c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" AND NOT c.relrowsecurity \
                    AND pg_catalog.has_table_privilege(c.oid, 'SELECT'), false), pg_catalog.current_schema()::pg_catalog.text \
             FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'user_logins_locks'))::pg_catalog.oid AS oid) AS t \
             LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid",
            &[],
        )
        .await?;
    let (readable, schema): (bool, String) = (row.get(0), row.get(1));
    if !readable {
        return Ok(());
    }
    let missing: bool = client
        .query_one(&lock_rows_missing_sql(&schema), &[])
        .await?
        .get(0);
    if missing {
        report.found(
            "locks",
            "table user_logins_locks",
            "lacks a row of login-etl's locks (migration, key_version): someone with the owner's rights deleted it, and maintain, forget and rotate-key refuse to run until it is back".into(),
            "as the migrate role: login-etl migrate (it puts the rows back)".into(),
        );
    }
    Ok(())
}

/// The bodies a file makes (each `$$`-quoted body, in order).
fn bodies(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find("AS $$") {
        let body = &rest[start + 5..];
        let Some(end) = body.find("$$") else { break };
        out.push(body[..end].to_owned());
        rest = &body[end + 2..];
    }
    out
}

/// Every `login_etl_*` function of the schema with the body this binary's
/// file makes; one with no file is planted.
pub(super) async fn function_bodies(
    client: &Client,
    profile: Profile,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("functions");
    let rows = client
        .query(
            "SELECT p.proname::text, p.oid::regprocedure::text, p.prosrc FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = pg_catalog.current_schema()) \
               AND p.proname LIKE 'login\\_etl\\_%' ORDER BY 2",
            &[],
        )
        .await?;
    let files = functions::files(profile);
    let known =
        |name: &str| -> Option<&FunctionFile> { files.iter().copied().find(|f| f.name == name) };
    for row in rows {
        let (name, signature, body): (String, String, String) =
            (row.get(0), row.get(1), row.get(2));
        let problem = match known(&name) {
            None => "is not one of login-etl's: nothing of this binary makes it, so it was added by hand".to_owned(),
            Some(file) if !bodies(&file.text()).contains(&body) => {
                "has a body this binary's file does not make: replaced by hand, or another version's".to_owned()
            }
            Some(_) => continue,
        };
        let fix = if known(&name).is_some() {
            "as the migrate role: login-etl migrate (it makes every owner's function from the binary's files)".to_owned()
        } else {
            format!(
                "as the tables' owner, once you know who added it and why: DROP FUNCTION {signature}"
            )
        };
        report.found("functions", format!("function {signature}"), problem, fix);
    }
    Ok(())
}

/// The tables' owner: no attribute beyond owning (its functions run with
/// its rights), no membership in another role.
pub(super) async fn owner(
    client: &Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("owner");
    let Some(row) = client
        .query_opt(
            "SELECT a.rolname::text, a.rolsuper, a.rolcreaterole, a.rolbypassrls, a.rolcreatedb, \
                    ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m \
                          JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = a.oid ORDER BY 1) \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles a ON a.oid = c.relowner \
             WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'user_logins'))",
            &[],
        )
        .await?
    else {
        return Ok(());
    };
    let (name, sup, createrole, bypassrls, createdb, member_of): (
        String,
        bool,
        bool,
        bool,
        bool,
        Vec<String>,
    ) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    let subject = format!("owner {name}");
    for (held, attribute) in [
        (sup, "SUPERUSER"),
        (createrole, "CREATEROLE"),
        (bypassrls, "BYPASSRLS"),
        (createdb, "CREATEDB"),
    ] {
        if held {
            report.found(
                "owner",
                subject.clone(),
                format!("is {attribute}: every owner's function runs with its rights, so a flaw in one reaches that far"),
                format!("as the admin: ALTER ROLE {} NO{attribute}", ident(&name)),
            );
        }
    }
    // rds_iam: how the owner logs in with RDS IAM authentication.
    for group in member_of.into_iter().filter(|g| g != "rds_iam") {
        report.found(
            "owner",
            subject.clone(),
            format!(
                "is a member of {group}: the owner's functions run with that role's rights too"
            ),
            format!(
                "as the admin: REVOKE {} FROM {}",
                ident(&group),
                ident(&name)
            ),
        );
    }
    Ok(())
}

/// Privileges on login-etl's tables (partitions and the legacy table
/// included) and functions held by a role that is neither the owner nor
/// registered (`user_logins_roles`) nor PUBLIC (which the privileges check
/// reports).
pub(super) async fn unknown_grantees(
    client: &Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("grantees");
    let rows = client
        .query(
            "WITH objs AS ( \
                 SELECT 'TABLE' AS kind, c.oid::regclass::text AS obj, c.relacl AS acl, c.relowner AS owner \
                 FROM pg_catalog.pg_class c \
                 WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = pg_catalog.current_schema()) \
                   AND c.relname LIKE 'user\\_logins%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S') \
                 UNION ALL \
                 SELECT 'FUNCTION', p.oid::regprocedure::text, p.proacl, p.proowner FROM pg_catalog.pg_proc p \
                 WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = pg_catalog.current_schema()) \
                   AND p.proname LIKE 'login\\_etl\\_%') \
             SELECT DISTINCT o.kind, o.obj, r.rolname::text \
             FROM objs o CROSS JOIN LATERAL pg_catalog.aclexplode(o.acl) a \
             JOIN pg_catalog.pg_roles r ON r.oid = a.grantee \
             WHERE a.grantee <> o.owner \
               AND r.rolname NOT IN (SELECT role_name FROM user_logins_roles) \
             ORDER BY 2, 3",
            &[],
        )
        .await?;
    for row in rows {
        let (kind, object, role): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        report.found(
            "grantees",
            format!("{} {object}", kind.to_lowercase()),
            format!("grants to {role}, a role login-etl does not know (not registered in user_logins_roles)"),
            format!("as the tables' owner: REVOKE ALL ON {kind} {object} FROM {}", ident(&role)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_between_their_quotes_in_order() {
        let sql = "CREATE FUNCTION a() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n\
                   CREATE FUNCTION a(x int) RETURNS int LANGUAGE sql AS $$\nSELECT x\n$$;";
        assert_eq!(bodies(sql), [" SELECT 1 ", "\nSELECT x\n"]);
    }

    #[test]
    fn every_file_has_one_body_per_overload() {
        for file in functions::FUNCTION_FILES {
            assert_eq!(
                bodies(&file.text()).len(),
                file.overloads(),
                "{}",
                file.name
            );
        }
    }
}
