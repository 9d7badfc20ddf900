//! `login-etl setup`: README's setup block as one command, and what the
//! stack's setup resource ([`resource`]) runs inside the VPC. As the admin
//! (a connection that may create roles and schemas): the schema and the
//! login roles, made where missing, each allowed to use the schema, with
//! its search_path and an idle-transaction timeout in this database, and
//! its password in its own secret (or `rds_iam`); the migrate role's
//! grants. Then as the migrate role: the tables of the profile, with the
//! retention recorded, and each role's grants; as the maintain role: one
//! maintenance run. Each step is idempotent, so it runs again after a
//! deploy, on an upgrade, or with a wider profile; nothing is dropped.

pub mod resource;

use postgres_protocol::escape::{escape_identifier, escape_literal};

use super::PasswordArgs;
use super::password::Admin;
use crate::database::settings::DbConfig;
use crate::profile::Profile;
use crate::table::doctor::{IDLE_IN_TRANSACTION_TIMEOUT, READER_STATEMENT_TIMEOUT};
use crate::table::privileges::Role;
use crate::table::retention::Kept;

/// How the roles prove who they are (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Auth {
    /// A password, generated, in the role's own secret `<SECRETS>/<role>`.
    Password,
    /// RDS IAM database authentication: each role granted `rds_iam`.
    Iam,
}

/// What setup does, wherever it is run from.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Roles are `<prefix>_<role>`.
    pub prefix: String,
    /// The tables' schema (made where missing).
    pub schema: String,
    /// The database's profile: its tables, and which roles it has.
    pub profile: Profile,
    /// The retention `migrate` records (`RETENTION_DAYS`).
    pub retention: Kept,
    /// Passwords in secrets, or IAM.
    pub auth: Auth,
    /// Each role's secret is `<secrets>/<role>`.
    pub secrets: String,
    /// The host and port the secrets name, where they differ from the
    /// admin's connection (a proxy's endpoint).
    pub secret_host: Option<String>,
    /// See `secret_host`.
    pub secret_port: Option<u16>,
    /// Principals that may read a role's secret besides the admin: (role, ARN).
    pub readers: Vec<(Role, String)>,
    /// Who runs setup (an IAM principal's ARN, named in each secret's
    /// policy) where known; else STS is asked.
    pub admin_arn: Option<String>,
    /// Who besides setup may rewrite a secret's policy or delete it (the
    /// stack's `DeployPrincipalArns`); empty: IAM decides.
    pub rewriters: Vec<String>,
}

/// What setup leaves: each role's secret ARN (password auth) and what
/// `migrate` said.
#[derive(Debug, Default)]
pub struct SetupReport {
    /// (role, the ARN of its secret).
    pub secrets: Vec<(Role, String)>,
    /// `migrate`'s line: the target, applied or already current.
    pub schema: String,
}

/// A reader as `--reader-arn` and the resource's `Readers` give it:
/// `role=ARN` (`ingest=arn:aws:iam::123456789012:role/fn`).
pub fn reader(entry: &str) -> Option<(Role, String)> {
    let (role, arn) = entry.split_once('=')?;
    let role = Role::ALL.into_iter().find(|r| r.as_str() == role)?;
    Some((role, arn.to_owned()))
}

impl Plan {
    /// The login roles of the profile, migrate first.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Migrate, Role::Ingest, Role::Maintain, Role::Reader];
        if self.profile == Profile::Full {
            roles.extend([Role::Reveal, Role::Erase, Role::Audit, Role::Rotate]);
        }
        roles
    }

    /// The database role's name of `role`.
    pub fn name(&self, role: Role) -> String {
        format!("{}_{}", self.prefix, role.as_str())
    }

    /// The prefix and schema as names setup can quote (no `$`, which its
    /// `DO` blocks' quoting reserves), each role's name within
    /// PostgreSQL's 63 bytes (a longer one is cut short, and would no
    /// longer be the secret's username).
    pub fn check(&self) -> Result<(), String> {
        let fits = |s: &str, most: usize| !s.is_empty() && !s.contains('$') && s.len() <= most;
        if !fits(&self.prefix, 63 - "_maintain".len()) {
            return Err(format!(
                "the role prefix {:?} (setup's --prefix; the stack's DbRolePrefix, which left empty is the stack's name with _ for -) is empty, holds a $, or is longer than 54 bytes (a role's name is PREFIX_maintain, at most 63): give a shorter one of this deployment's own, such as login_etl_prod",
                self.prefix
            ));
        }
        if !fits(&self.schema, 63) {
            return Err(format!(
                "--schema {:?} is empty, holds a $, or is longer than 63 bytes: give public or one such as login_etl",
                self.schema
            ));
        }
        Ok(())
    }

    /// The Secrets Manager id of `role`'s secret.
    pub fn secret_id(&self, role: Role) -> String {
        format!("{}/{}", self.secrets, role.as_str())
    }
}

/// Runs the plan: the admin connects as `admin_db` says; the roles'
/// connections take the rest of their settings (TLS, timeouts, the host
/// for IAM) from `base`, as the environment would give them. `progress`
/// gets one line per step done.
pub async fn run(
    plan: &Plan,
    admin_db: &DbConfig,
    base: &(dyn Fn(&str) -> Option<String> + Sync),
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<SetupReport, String> {
    plan.check()?;
    let aws = crate::secrets::sdk_config().await;
    let admin = Admin::connect(
        admin_db,
        &aws,
        plan.admin_arn.clone(),
        plan.rewriters.clone(),
    )
    .await?;
    // The admin (RDS's master) runs no function of anyone's: its session
    // finds names in pg_catalog alone, so an overload planted in public
    // (open on PostgreSQL 14 and older) or in a schema named as the
    // admin ("$user") is never called with its rights.
    admin
        .client
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .await
        .map_err(|e| {
            format!(
                "pinning the admin's search_path failed: {}",
                crate::error::describe(&e)
            )
        })?;
    let plan = &Plan {
        schema: resolve_schema(&admin.client, plan).await?,
        ..plan.clone()
    };
    progress(&format!("schema {}", plan.schema));
    let mut report = SetupReport::default();
    let roles = plan.roles();
    // Whose roles: this deployment's secrets, in its account and region
    // (a stack of the same name elsewhere is another deployment).
    let mark = format!(
        "{MARK_PREFIX}{}, account {}, region {}",
        plan.secrets,
        admin.account(),
        aws.region().map(|r| r.to_string()).unwrap_or_default()
    );
    claim_roles(
        &admin.client,
        plan,
        &roles,
        &mark,
        &crate::secrets::Secrets::new(&aws),
    )
    .await?;
    admin
        .client
        .batch_execute(&admin_statements(plan, &roles, &mark))
        .await
        .map_err(|e| {
            format!(
                "making the schema {} and the login roles failed: {}; run setup as an admin that may CREATE ROLE and CREATE SCHEMA in this database (RDS's master user may)",
                plan.schema,
                crate::error::describe(&e)
            )
        })?;
    progress(&format!(
        "schema {} and roles {} ready",
        plan.schema,
        roles
            .iter()
            .map(|r| plan.name(*r))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if plan.auth == Auth::Password {
        for &role in &roles {
            let set = admin
                .set_password(&PasswordArgs {
                    role: plan.name(role),
                    secret_id: plan.secret_id(role),
                    secret_host: plan.secret_host.clone(),
                    secret_port: plan.secret_port,
                    reader_arn: plan
                        .readers
                        .iter()
                        .filter(|(r, _)| *r == role)
                        .map(|(_, arn)| arn.clone())
                        .collect(),
                    new_password: false,
                })
                .await?;
            progress(&set.line);
            report.secrets.push((role, set.arn));
        }
    }
    let migrate_grants = crate::grants::sql(
        Role::Migrate,
        &plan.name(Role::Migrate),
        &plan.schema,
        plan.profile,
    )
    .map_err(|e| e.to_string())?;
    admin.client.batch_execute(&migrate_grants).await.map_err(|e| {
        format!(
            "granting the migrate role its schema failed: {}; run setup as the admin that owns the schema {}",
            crate::error::describe(&e),
            plan.schema
        )
    })?;
    // Where the secrets name another host (a proxy's: DbProxyHost,
    // --secret-host), the roles connect where the admin did: the proxy may
    // not list them yet. Not over a Unix socket (a secret's connection
    // takes TLS, which a socket does not speak).
    let (host, port) = admin.address();
    let port = port.to_string();
    let elsewhere =
        (plan.secret_host.is_some() || plan.secret_port.is_some()) && !host.starts_with('/');
    let base = &|name: &str| match name {
        "DB_CONNECT_HOST" if elsewhere => Some(host.clone()),
        "DB_CONNECT_PORT" if elsewhere => Some(port.clone()),
        _ => base(name),
    };
    drop(admin);

    // As the migrate role: the tables (it owns them), then each role's grants.
    let migrate_db = role_db(plan, Role::Migrate, base)?;
    let options = crate::table::schema::MigrateOptions {
        premake_days: crate::table::maintain::DEFAULT_PREMAKE_DAYS,
        profile: Some(plan.profile),
        retention: Some(plan.retention),
        ..Default::default()
    };
    report.schema = crate::startup::migrate_with(&migrate_db, &options)
        .await
        .map_err(|e| format!("migrate, as {}: {e}", plan.name(Role::Migrate)))?;
    progress(&format!("schema applied: {}", report.schema));
    let owner = crate::startup::operator_connection(&migrate_db)
        .await
        .map_err(|e| e.to_string())?;
    for &role in roles.iter().filter(|r| **r != Role::Migrate) {
        let sql = crate::grants::sql(role, &plan.name(role), &plan.schema, plan.profile)
            .map_err(|e| e.to_string())?;
        owner.batch_execute(&sql).await.map_err(|e| {
            format!(
                "applying the grants of {} to {} failed: {}; nothing of them was granted (one transaction)",
                role.as_str(),
                plan.name(role),
                crate::error::describe(&e)
            )
        })?;
    }
    progress("each role's grants applied");
    drop(owner);

    // As the maintain role: what the scheduled maintenance does.
    let options = crate::table::maintain::MaintainOptions {
        retention_days: plan.retention.days(),
        ..Default::default()
    };
    let maintained = crate::startup::maintain(&role_db(plan, Role::Maintain, base)?, &options)
        .await
        .map_err(|e| format!("maintain, as {}: {e}", plan.name(Role::Maintain)))?;
    progress(&format!(
        "maintained: {} partitions made, {} dropped",
        maintained.created.len(),
        maintained.dropped.len()
    ));
    Ok(report)
}

/// `--schema auto` (the stack's `DbSchema` default): where the plan's
/// migrate role already owns the tables, there; else `public`, unless a
/// role other than its owner, the admin and the plan's own may create in
/// it (PUBLIC on PostgreSQL 14 and older, another application's or
/// another deployment's roles), where migrate would refuse it, or it
/// holds another deployment's tables (a second stack in this database);
/// then a schema named as the prefix, the plan's own.
pub const AUTO_SCHEMA: &str = "auto";

async fn resolve_schema(client: &tokio_postgres::Client, plan: &Plan) -> Result<String, String> {
    if plan.schema != AUTO_SCHEMA {
        return Ok(plan.schema.clone());
    }
    let describe = |e: tokio_postgres::Error| {
        format!(
            "choosing the schema (auto) failed: {}; give one (DbSchema, --schema)",
            crate::error::describe(&e)
        )
    };
    let migrate = plan.name(Role::Migrate);
    // The tables' record, a plain table of the migrate role's, in no
    // temporary schema (one a migrate credential made would point every
    // role's search_path at it).
    let owned: Vec<String> = client
        .query(
            "SELECT n.nspname::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner \
             WHERE c.relname OPERATOR(pg_catalog.=) 'user_logins_schema' AND r.rolname OPERATOR(pg_catalog.=) $1 \
               AND c.relkind OPERATOR(pg_catalog.=) 'r' AND c.relpersistence OPERATOR(pg_catalog.=) 'p'",
            &[&migrate],
        )
        .await
        .map_err(describe)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    match owned.as_slice() {
        [] => {}
        [schema] => return Ok(schema.clone()),
        many => {
            return Err(format!(
                "{migrate} owns login-etl's tables in more than one schema ({}): give the one this deployment writes (DbSchema, --schema)",
                many.join(", ")
            ));
        }
    }
    // Another deployment's tables in public (a second stack in this
    // database): this one takes a schema of its own.
    let taken: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
               WHERE n.nspname OPERATOR(pg_catalog.=) 'public' AND c.relname OPERATOR(pg_catalog.=) 'user_logins_schema')",
            &[],
        )
        .await
        .map_err(describe)?
        .get(0);
    let own: Vec<String> = plan.roles().iter().map(|r| plan.name(*r)).collect();
    let open: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n, \
                 pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a \
               WHERE n.nspname OPERATOR(pg_catalog.=) 'public' AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE' \
                 AND a.grantee OPERATOR(pg_catalog.<>) n.nspowner \
                 AND (a.grantee OPERATOR(pg_catalog.=) 0::pg_catalog.oid OR a.grantee NOT IN ( \
                      SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($1::text[]) \
                         OR r.rolname OPERATOR(pg_catalog.=) current_user)))",
            &[&own],
        )
        .await
        .map_err(describe)?
        .get(0);
    if !open && !taken {
        return Ok("public".into());
    }
    // A schema of its own, named as the prefix: one someone else made
    // first (and so owns, and may plant in) is refused.
    let squatted: Option<String> = client
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text FROM pg_catalog.pg_namespace n \
             WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND n.nspowner OPERATOR(pg_catalog.<>) \
               (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) current_user)",
            &[&plan.prefix],
        )
        .await
        .map_err(describe)?
        .map(|row| row.get(0));
    if let Some(owner) = squatted {
        return Err(format!(
            "public is {}, and the schema {} that setup would use instead already exists, owned by {owner}, not by this admin: it may hold objects login-etl's functions would find; give a schema this admin owns or will make (DbSchema, --schema), or drop that one",
            if taken {
                "another deployment's (its tables are there)"
            } else {
                "open to other roles"
            },
            plan.prefix
        ));
    }
    Ok(plan.prefix.clone())
}

/// How the comment setup puts on each login role it makes or keeps
/// begins: whose secrets hold its password, in which account and region.
/// Roles belong to the server, so another deployment (a second stack,
/// README's block with other secrets) naming the same roles would set new
/// passwords its functions never read, or grant them `rds_iam`.
const MARK_PREFIX: &str = "login-etl setup, secrets ";

/// Refuses, with nothing changed, where a login role of the plan exists
/// and is not this deployment's: its comment names other secrets, or it
/// has none and this deployment has no secret for it (made by another
/// deployment before roles carried the comment, or by hand). A role this
/// deployment's secret already names (made before the comment) is kept.
async fn claim_roles(
    client: &tokio_postgres::Client,
    plan: &Plan,
    roles: &[Role],
    mark: &str,
    secrets: &crate::secrets::Secrets,
) -> Result<(), String> {
    let names: Vec<String> = roles.iter().map(|r| plan.name(*r)).collect();
    let found = client
        .query(
            "SELECT r.rolname::text, pg_catalog.shobj_description(r.oid, 'pg_authid') \
             FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) ANY ($1::text[])",
            &[&names],
        )
        .await
        .map_err(|e| {
            format!(
                "reading which login roles exist failed: {}",
                crate::error::describe(&e)
            )
        })?;
    let existing: std::collections::HashMap<String, Option<String>> =
        found.iter().map(|row| (row.get(0), row.get(1))).collect();
    let other_prefix = "the stack's DbRolePrefix, or setup's --prefix";
    // This deployment's roles under another prefix (the stack's default
    // prefix is now its name; an older stack's roles are login_etl_*):
    // new roles would not own its tables, and its rows would stay with
    // the old ones.
    let elsewhere: Vec<String> = client
        .query(
            "SELECT r.rolname::text FROM pg_catalog.pg_roles r \
             WHERE pg_catalog.shobj_description(r.oid, 'pg_authid') OPERATOR(pg_catalog.=) $1 \
               AND NOT r.rolname OPERATOR(pg_catalog.=) ANY ($2::text[]) ORDER BY 1",
            &[&mark, &names],
        )
        .await
        .map_err(|e| {
            format!(
                "reading which login roles this deployment has failed: {}",
                crate::error::describe(&e)
            )
        })?
        .iter()
        .map(|row| row.get::<_, String>(0))
        // This prefix's other roles (a profile's that this plan leaves
        // out) are this deployment's, under this prefix.
        .filter(|name| {
            !Role::ALL
                .iter()
                .any(|r| *name == format!("{}_{}", plan.prefix, r.as_str()))
        })
        .collect();
    if let Some(first) = elsewhere.first() {
        let theirs = Role::ALL
            .iter()
            .find_map(|r| first.strip_suffix(&format!("_{}", r.as_str())))
            .unwrap_or(first);
        return Err(format!(
            "this deployment's login roles are {} (prefix {theirs}), not {}_*: new roles would not own its tables; nothing was changed. Keep its prefix: DbRolePrefix={theirs} (setup's --prefix {theirs})",
            elsewhere.join(", "),
            plan.prefix
        ));
    }
    // In the plan's order (migrate first): the same role named each run.
    for (role, name) in roles.iter().zip(names) {
        let Some(comment) = existing.get(&name) else {
            continue;
        };
        match comment.as_deref() {
            Some(c) if c == mark => {}
            Some(c) if c.starts_with(MARK_PREFIX) => {
                return Err(format!(
                    "the role {name} belongs to another login-etl deployment ({c:?}): its functions read its password there, and this setup would set a new one; nothing was changed. Give this deployment roles of its own ({other_prefix}, e.g. {}_2)",
                    plan.prefix
                ));
            }
            // Made before roles carried the mark: this deployment's when
            // its secret names it (passwords), or when it is in rds_iam
            // already (IAM, which has no secret).
            _ => {
                let (ours, evidence) = match plan.auth {
                    Auth::Password => {
                        let id = plan.secret_id(*role);
                        let found = secrets
                            .string_if_any(&id)
                            .await
                            .map_err(|e| e.to_string())?;
                        (found.is_some(), format!("no secret {id}"))
                    }
                    Auth::Iam => {
                        let member: bool = client
                            .query_one(
                                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m \
                                   JOIN pg_catalog.pg_roles g ON g.oid OPERATOR(pg_catalog.=) m.roleid \
                                   JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) m.member \
                                   WHERE g.rolname OPERATOR(pg_catalog.=) 'rds_iam' \
                                     AND r.rolname OPERATOR(pg_catalog.=) $1)",
                                &[&name],
                            )
                            .await
                            .map_err(|e| crate::error::describe(&e))?
                            .get(0);
                        (member, "not in rds_iam".to_owned())
                    }
                };
                if !ours {
                    return Err(format!(
                        "the role {name} exists but was not made by this deployment (no comment {mark:?}, {evidence}): another deployment's or one made by hand, whose password or authentication this setup would change; nothing was changed. Give this deployment roles of its own ({other_prefix}); or, to hand the role to it, as the admin: COMMENT ON ROLE {} IS {}",
                        escape_identifier(&name),
                        escape_literal(mark)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The admin's statements, one transaction: the schema and each login
/// role where missing (roles belong to the server: a second database
/// reuses them), each allowed to use the schema, with its settings in this
/// database, and `rds_iam` for IAM.
fn admin_statements(plan: &Plan, roles: &[Role], mark: &str) -> String {
    let schema = escape_identifier(&plan.schema);
    let mut sql = format!(
        "DO $setup$ BEGIN IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = {}) THEN CREATE SCHEMA {schema}; END IF; END $setup$;\n",
        escape_literal(&plan.schema)
    );
    for &role in roles {
        let name = plan.name(role);
        let ident = escape_identifier(&name);
        sql.push_str(&format!(
            "DO $setup$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {}) THEN CREATE ROLE {ident} LOGIN; END IF; END $setup$;\n\
             COMMENT ON ROLE {ident} IS {};\n\
             GRANT USAGE ON SCHEMA {schema} TO {ident};\n\
             DO $setup$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L', {}, current_database(), {}); END $setup$;\n",
            escape_literal(&name),
            escape_literal(mark),
            escape_literal(&name),
            escape_literal(IDLE_IN_TRANSACTION_TIMEOUT),
        ));
        if role == Role::Reader {
            sql.push_str(&format!(
                "DO $setup$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L', {}, current_database(), {}); END $setup$;\n",
                escape_literal(&name),
                escape_literal(READER_STATEMENT_TIMEOUT),
            ));
        }
        if plan.schema != "public" {
            sql.push_str(&format!(
                "DO $setup$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET search_path = %I', {}, current_database(), {}); END $setup$;\n",
                escape_literal(&name),
                escape_literal(&plan.schema),
            ));
        }
        if plan.auth == Auth::Iam {
            sql.push_str(&format!("GRANT rds_iam TO {ident};\n"));
        }
    }
    format!("BEGIN;\n{sql}COMMIT;")
}

/// `role`'s connection settings: its secret (passwords), or its name and
/// an IAM token; everything else as `base` gives it.
fn role_db(
    plan: &Plan,
    role: Role,
    base: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<DbConfig, String> {
    let (secret, user) = (plan.secret_id(role), plan.name(role));
    DbConfig::from_lookup(&|name: &str| match (plan.auth, name) {
        (_, "DATABASE_URL") => None,
        (Auth::Password, "DB_SECRET_ID") => Some(secret.clone()),
        (Auth::Password, "DB_AUTH") => Some("password".into()),
        (Auth::Iam, "DB_SECRET_ID") => None,
        (Auth::Iam, "DB_AUTH") => Some("iam".into()),
        (Auth::Iam, "PGUSER") => Some(user.clone()),
        (Auth::Iam, "PGPASSWORD") => None,
        _ => base(name),
    })
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(profile: Profile, auth: Auth, schema: &str) -> Plan {
        Plan {
            prefix: "app".into(),
            schema: schema.into(),
            profile,
            retention: Kept::configured(Some(90)),
            auth,
            secrets: "login-etl".into(),
            secret_host: None,
            secret_port: None,
            readers: Vec::new(),
            admin_arn: None,
            rewriters: Vec::new(),
        }
    }

    #[test]
    fn the_profile_decides_the_roles_migrate_first() {
        let masking = plan(Profile::Masking, Auth::Password, "public");
        assert_eq!(
            masking.roles(),
            [Role::Migrate, Role::Ingest, Role::Maintain, Role::Reader]
        );
        assert_eq!(
            plan(Profile::Full, Auth::Password, "public").roles().len(),
            8
        );
        assert_eq!(masking.name(Role::Ingest), "app_ingest");
        assert_eq!(masking.secret_id(Role::Maintain), "login-etl/maintain");
    }

    #[test]
    fn a_prefix_or_schema_setup_cannot_quote_or_too_long_is_refused() {
        assert!(
            plan(Profile::Masking, Auth::Password, "public")
                .check()
                .is_ok()
        );
        for (prefix, schema) in [
            ("a$setup$b", "public"),
            ("app", "a$b"),
            (&*"p".repeat(60), "public"),
        ] {
            let mut p = plan(Profile::Masking, Auth::Password, schema);
            p.prefix = prefix.into();
            assert!(p.check().is_err(), "{prefix} {schema}");
        }
    }

    #[test]
    fn names_are_quoted_and_iam_and_the_search_path_only_when_asked() {
        let mut odd = plan(Profile::Masking, Auth::Password, "public");
        odd.prefix = "a\"b".into();
        let sql = admin_statements(&odd, &odd.roles(), "m");
        assert!(sql.contains("CREATE ROLE \"a\"\"b_ingest\" LOGIN"), "{sql}");
        assert!(
            !sql.contains("rds_iam") && !sql.contains("search_path"),
            "{sql}"
        );
        let iam = plan(Profile::Masking, Auth::Iam, "etl");
        let sql = admin_statements(&iam, &iam.roles(), "m");
        assert!(sql.contains("GRANT rds_iam TO \"app_reader\""), "{sql}");
        assert!(
            sql.contains("SET search_path = %I', 'app_ingest', current_database(), 'etl')"),
            "{sql}"
        );
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"));
    }
}
