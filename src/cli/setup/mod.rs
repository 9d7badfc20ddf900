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
pub struct Report {
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
                "--prefix {:?} is empty, holds a $, or is longer than 54 bytes (a role's name is PREFIX_maintain, at most 63): give one such as login_etl",
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
) -> Result<Report, String> {
    plan.check()?;
    let aws = crate::secrets::sdk_config().await;
    let admin = Admin::connect(
        admin_db,
        &aws,
        plan.admin_arn.clone(),
        plan.rewriters.clone(),
    )
    .await?;
    let mut report = Report::default();
    let roles = plan.roles();
    admin
        .client
        .batch_execute(&admin_statements(plan, &roles))
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

/// The admin's statements, one transaction: the schema and each login
/// role where missing (roles belong to the server: a second database
/// reuses them), each allowed to use the schema, with its settings in this
/// database, and `rds_iam` for IAM.
fn admin_statements(plan: &Plan, roles: &[Role]) -> String {
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
             GRANT USAGE ON SCHEMA {schema} TO {ident};\n\
             DO $setup$ BEGIN EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L', {}, current_database(), {}); END $setup$;\n",
            escape_literal(&name),
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
        let sql = admin_statements(&odd, &odd.roles());
        assert!(sql.contains("CREATE ROLE \"a\"\"b_ingest\" LOGIN"), "{sql}");
        assert!(
            !sql.contains("rds_iam") && !sql.contains("search_path"),
            "{sql}"
        );
        let iam = plan(Profile::Masking, Auth::Iam, "etl");
        let sql = admin_statements(&iam, &iam.roles());
        assert!(sql.contains("GRANT rds_iam TO \"app_reader\""), "{sql}");
        assert!(
            sql.contains("SET search_path = %I', 'app_ingest', current_database(), 'etl')"),
            "{sql}"
        );
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"));
    }
}
