//! `login-etl doctor`: what an operator must keep true of a deployment's
//! database, read from the live catalogue, each finding with its fix.
//!
//! Run as the tables' owner (the migrate role), an admin or a superuser:
//! it reads the catalogue and whether the DEFAULT partition holds a row
//! (and how many, of which days, are dated past the partitions made
//! ahead), never a row's other values, changes nothing, and runs no function of the
//! schema it audits (a replaced one would run with the caller's rights).
//! The checks:
//! - who besides the owner may CREATE in the schema the owner's functions
//!   run in ([`SCHEMA_WRITERS_SQL`]);
//! - the schema's version against this binary's;
//! - every owner's function resolving names with pg_catalog first;
//! - each registered role existing, able to log in and to use the schema,
//!   and holding what `login-etl grants` gives its kind in the database's
//!   profile, no less and no more ([`privileges`]);
//! - the partitions made ahead, the DEFAULT partition empty, and retention
//!   applied (no partition past `RETENTION_DAYS` by more than a day);
//! - what the owner or a superuser could switch off without a grant
//!   changing ([`tampering`]): triggers disabled or missing, function
//!   bodies the binary's files do not make, grants to roles login-etl does
//!   not know, an owner with more than ownership, settings a role stored
//!   for itself;
//! - whether a commit the function sees acknowledged survives a failover
//!   (standbys without synchronous replication), and not a standby itself.

mod privileges;
mod replication;
mod tampering;


use chrono::NaiveDate;
use serde::Serialize;
use tokio_postgres::Client;

use crate::database::stored_settings::{
    path_elsewhere, reset_statement, search_path_fix, stored_setting_problem,
};
use crate::table::partitions::{days_ahead, partitions_in_catalog};
use crate::table::privileges::FUNCTION_SETTINGS;
use crate::table::privileges::{SCHEMA_WRITERS_SQL, schema_writers_fix};
use crate::table::retention::{self, Kept};
use crate::table::schema::SCHEMA_VERSION;

/// Fewer days of partitions ahead than this is a finding (the template's
/// `PartitionDaysAheadAlarm` fires below it too).
pub const MIN_DAYS_AHEAD: i64 = 2;

/// One thing to mend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check that found it.
    pub check: &'static str,
    /// What it is about: a role, a function, the schema, the server.
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// What to do, and as whom.
    pub fix: String,
}

/// The checks run and what they found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The schema examined.
    pub schema: String,
    /// Its profile (`masking` or `full`; empty where login-etl's schema
    /// is not there).
    pub profile: &'static str,
    /// Every check run, found something or not.
    pub checks: Vec<&'static str>,
    /// What they found; empty when the deployment is sound.
    pub findings: Vec<Finding>,
    /// What they saw that needs nothing now (the built-in CA that
    /// expires first).
    pub notes: Vec<String>,
}

impl Report {
    fn found(
        &mut self,
        check: &'static str,
        subject: impl Into<String>,
        problem: String,
        fix: String,
    ) {
        self.findings.push(Finding {
            check,
            subject: subject.into(),
            problem,
            fix,
        });
    }

    /// The command that prints `name`'s grants as a `kind` role in this
    /// schema and profile, its words quoted for a POSIX shell where they
    /// need it (a role's name may hold anything).
    fn grants_command(&self, kind: &str, name: &str) -> String {
        let quote = |w: &str| shlex::try_quote(w).map_or_else(|_| w.to_owned(), |q| q.into_owned());
        let schema = if self.schema == "public" {
            String::new()
        } else {
            format!(" --schema {}", quote(&self.schema))
        };
        format!(
            "login-etl grants --role {kind} --to {}{schema} --profile {}",
            quote(name),
            self.profile
        )
    }
}

/// `name` as an SQL identifier, quoted (the fixes print names as they are
/// in the catalog, whatever they hold).
fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// Runs every check on `client`'s database, `today` being the UTC day and
/// `retention_days` the deployment's `RETENTION_DAYS` (unset: the owner's
/// recorded retention is the one checked), `premake_days` maintenance's
/// `PREMAKE_DAYS` (rows dated past its horizon are named apart).
pub async fn examine(
    client: &Client,
    today: NaiveDate,
    retention_days: Option<u32>,
    premake_days: u32,
) -> Result<Report, tokio_postgres::Error> {
    // One read-only transaction, dates printed as ISO whatever the
    // session stored (the partition bounds are read as text).
    client
        .batch_execute(
            "BEGIN READ ONLY; SET LOCAL DateStyle = 'ISO, MDY'; SET LOCAL TimeZone = 'UTC'; \
             SET LOCAL IntervalStyle = 'postgres'",
        )
        .await?;
    let examined = examine_in_transaction(client, today, retention_days, premake_days).await;
    let _ = client
        .batch_execute(if examined.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        })
        .await;
    examined
}

async fn examine_in_transaction(
    client: &Client,
    today: NaiveDate,
    retention_days: Option<u32>,
    premake_days: u32,
) -> Result<Report, tokio_postgres::Error> {
    let mut report = Report::default();
    // Before any query that names an operator or a function unqualified.
    if let Some(owner) = tampering::drop_privileges(client).await?
        && tampering::planted(client, &owner, &mut report).await?
    {
        return Ok(report);
    }
    schema_writers(client, &mut report).await?;
    if schema_version(client, &mut report).await?.is_none() {
        return Ok(report); // nothing of login-etl to examine further
    }
    search_paths(client, &mut report).await?;
    let profile = crate::table::schema::profile(client).await?;
    report.profile = profile.as_str();
    roles(client, &mut report).await?;
    if registry(client).await? {
        privileges::check(client, profile, &mut report).await?;
        tampering::unknown_grantees(client, &mut report).await?;
    }
    tampering::triggers(client, profile, &mut report).await?;
    tampering::locks(client, &mut report).await?;
    tampering::function_bodies(client, profile, &mut report).await?;
    tampering::owner(client, &mut report).await?;
    partitions_ahead(client, today, premake_days, &mut report).await?;
    retention(client, today, retention_days, &mut report).await?;
    timeouts(client, &mut report).await?;
    replication::check(client, &mut report).await?;
    Ok(report)
}

async fn schema_writers(client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    report.checks.push("schema_writers");
    let row = client.query_one(SCHEMA_WRITERS_SQL, &[]).await?;
    let (schema, writers): (String, Vec<String>) = (row.get(0), row.get(1));
    report.schema = schema.clone();
    if !writers.is_empty() {
        report.found(
            "schema_writers",
            format!("schema {schema}"),
            format!(
                "{} may CREATE in it, where the owner's functions run: an object planted there could run with the owner's rights",
                writers.join(", ")
            ),
            format!(
                "as the schema's owner: {}",
                schema_writers_fix(&schema, &writers)
            ),
        );
    }
    Ok(())
}

/// The schema's version, or `None` (with a finding) where login-etl's
/// schema is not there.
async fn schema_version(
    client: &Client,
    report: &mut Report,
) -> Result<Option<i32>, tokio_postgres::Error> {
    report.checks.push("schema_version");
    // The owner's record, locked, then read only where it is the table
    // migrate makes (state::find checks that first); no function of the
    // schema runs.
    use crate::table::schema::state::{SchemaRecord, find};
    let version = match find(client, true).await? {
        SchemaRecord::Recorded(recorded) => Some(recorded.version),
        SchemaRecord::Empty => {
            report.found(
                "schema_version",
                "table user_logins_schema",
                "holds no record of the schema's version (its row was deleted or emptied)".into(),
                "as the migrate role: login-etl migrate (it records the version again)".into(),
            );
            return Ok(Some(SCHEMA_VERSION)); // examine the rest as this version's
        }
        SchemaRecord::Unreadable => {
            report.found(
                "schema_version",
                "table user_logins_schema",
                "is not the plain table of the tables' owner that migrate makes (a view or another role's table in its place, row-level security, a child table, a column of another type, or PUBLIC's SELECT revoked): doctor does not read it, and the schema's recorded version is unknown".into(),
                "as the tables' owner: drop what stands in its place (or, if another role made it, have that role drop it), then as the migrate role: login-etl migrate".into(),
            );
            return Ok(Some(SCHEMA_VERSION)); // examine the rest as this version's
        }
        // A schema migrated before the record (0.2.0) has the function
        // whose body held its version: found, not run, not read.
        SchemaRecord::Absent => client
            .query_one(
                "SELECT pg_catalog.to_regprocedure(pg_catalog.format('%I.%I()', \
                     pg_catalog.current_schema(), $1::pg_catalog.text)) IS NOT NULL",
                &[&crate::table::schema::functions::SCHEMA_VERSION_FUNCTION],
            )
            .await?
            .get::<_, bool>(0)
            .then_some(0),
    };
    if let Some(finding) = version_finding(version, SCHEMA_VERSION) {
        report.findings.push(finding);
    }
    Ok(version)
}

/// A schema at `found` examined by a binary of `binary`.
pub fn version_finding(found: Option<i32>, binary: i32) -> Option<Finding> {
    let (problem, fix) = match found {
        None => (
            "no login-etl schema in this database (or this role cannot see it)".to_owned(),
            "as the migrate role: login-etl migrate; or run doctor as the tables' owner".to_owned(),
        ),
        Some(0) => (
            format!("the schema was migrated before login-etl 0.3.0 (it has no user_logins_schema), this binary's is at version {binary}: migrations are pending"),
            "as the migrate role: login-etl migrate (online; docs/deploy.md \"Upgrading an existing table\")".to_owned(),
        ),
        Some(v) if v < binary => (
            format!("the schema is at version {v}, this binary's is {binary}: migrations are pending"),
            "as the migrate role: login-etl migrate (online; docs/deploy.md \"Upgrading an existing table\")".to_owned(),
        ),
        Some(v) if v > binary => (
            format!("the schema is at version {v}, newer than this binary's {binary}"),
            "run the doctor of the version deployed".to_owned(),
        ),
        Some(_) => return None,
    };
    Some(Finding {
        check: "schema_version",
        subject: "schema".into(),
        problem,
        fix,
    })
}

async fn search_paths(client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    report.checks.push("search_path");
    let rows = client
        .query(
            "SELECT p.oid::regprocedure::text, coalesce(array_to_string(p.proconfig, ';'), '') \
             FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) \
               AND p.proname LIKE 'login\\_etl\\_%' ORDER BY 1",
            &[],
        )
        .await?;
    for row in rows {
        let (function, config): (String, String) = (row.get(0), row.get(1));
        let unpinned: Vec<&str> = FUNCTION_SETTINGS
            .iter()
            .filter(|(name, value)| !config.split(';').any(|c| c == format!("{name}={value}")))
            .map(|(name, _)| *name)
            .collect();
        if !unpinned.is_empty() {
            report.found(
                "search_path",
                format!("function {function}"),
                format!("runs with the caller's {}: a role's stored settings would change what it computes", unpinned.join(", ")),
                "as the migrate role: login-etl migrate (it pins every owner's function's settings)".into(),
            );
        }
        if !search_path_first_is_catalog(&config) {
            report.found(
                "search_path",
                format!("function {function}"),
                "does not resolve names with pg_catalog first: an object in a schema before it could run with the owner's rights".into(),
                "as the migrate role: login-etl migrate (it sets every owner's function's search path)".into(),
            );
        }
    }
    Ok(())
}

/// Whether a function's settings (`proconfig`, `;`-joined) put pg_catalog
/// first in its search path.
pub fn search_path_first_is_catalog(config: &str) -> bool {
    config
        .split(';')
        .find_map(|s| s.strip_prefix("search_path="))
        .is_some_and(|path| path.split(',').next().map(str::trim) == Some("pg_catalog"))
}

/// The role registry exists (migrations/0011).
async fn registry(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT relkind = 'r' FROM pg_catalog.pg_class \
               WHERE oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'user_logins_roles'))), false)",
            &[],
        )
        .await?
        .get(0))
}

async fn roles(client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    report.checks.push("roles");
    if !registry(client).await? {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT r.role_name::text, r.kind::text, a.oid IS NOT NULL, coalesce(a.rolcanlogin, false), \
                    a.oid IS NOT NULL AND has_schema_privilege(a.oid, (SELECT oid FROM pg_namespace WHERE nspname = current_schema()), 'USAGE') \
             FROM user_logins_roles r LEFT JOIN pg_roles a ON a.rolname = r.role_name ORDER BY 1",
            &[],
        )
        .await?;
    for row in rows {
        let (name, kind, exists, login, usage): (String, String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let subject = format!("role {name} ({kind})");
        if !exists {
            report.found(
                "roles",
                subject,
                "is registered for login-etl but does not exist".into(),
                format!(
                    "as the admin: CREATE ROLE {} LOGIN, then its grants ({}) as the tables' owner",
                    ident(&name),
                    report.grants_command(&kind, &name)
                ),
            );
            continue;
        }
        if !login {
            report.found(
                "roles",
                subject.clone(),
                "cannot log in".into(),
                format!("as the admin: ALTER ROLE {} LOGIN", ident(&name)),
            );
        }
        if !usage {
            report.found(
                "roles",
                subject,
                format!(
                    "may not use schema {}: it sees none of login-etl's tables or functions",
                    report.schema
                ),
                format!(
                    "as the admin: GRANT USAGE ON SCHEMA {} TO {}",
                    ident(&report.schema),
                    ident(&name)
                ),
            );
        }
    }
    stored_settings(client, report).await
}

/// What each login-etl role stored for itself (or an admin for it): every
/// setting that would change what login-etl's statements do, which the
/// program refuses to connect under ([`stored_setting_problem`]).
async fn stored_settings(
    client: &Client,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT a.rolname::text, s.setdatabase <> 0, split_part(c, '=', 1), substr(c, strpos(c, '=') + 1) \
             FROM pg_db_role_setting s JOIN pg_roles a ON a.oid = s.setrole \
             CROSS JOIN LATERAL unnest(s.setconfig) AS c \
             WHERE a.rolname IN (SELECT role_name FROM user_logins_roles) \
               AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database())) \
             ORDER BY 1, 3",
            &[],
        )
        .await?;
    let database: String = client
        .query_one("SELECT pg_catalog.current_database()::text", &[])
        .await?
        .get(0);
    for row in rows {
        let (role, in_db, name, value): (String, bool, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // One schema, but not the one examined: where the role may create,
        // a plant (the connect check refuses it too).
        let elsewhere = name.eq_ignore_ascii_case("search_path")
            && path_elsewhere(&value, &role, &report.schema);
        let why = stored_setting_problem(&name, &value).or(elsewhere.then_some(
            "its schema is not the one login-etl's tables are in, so objects there could stand in for login-etl's",
        ));
        if let Some(why) = why {
            let source = if in_db { "database user" } else { "user" };
            let fix = if name.eq_ignore_ascii_case("search_path") {
                search_path_fix(&role, &database, source, Some(&report.schema))
            } else {
                reset_statement(&role, &database, source, &name)
            };
            report.found(
                "roles",
                format!("role {role}"),
                format!("stores {name} = '{value}' for its sessions: {why} (login-etl refuses to connect under it)"),
                format!("as the admin: {fix}"),
            );
        }
    }
    Ok(())
}

/// What every login role of login-etl should have, unless the server
/// sets one for all: an `idle_in_transaction_session_timeout`, so that a
/// session of it left idle inside a transaction (an analyst's tool, a
/// stolen credential) does not hold its locks, and with them retention,
/// until someone ends it. README's block sets it per role; a role can
/// still lift it in a session of its own (docs/insiders.md).
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "10min";

/// What the reader role should have besides: a `statement_timeout`, so
/// that an analyst's forgotten query does not hold retention (a dropped
/// partition waits for it) for hours. The other roles' statements are
/// bounded by their commands (the function's `DB_STATEMENT_TIMEOUT_MS`),
/// or must not be cut off (a migration, a purge, a re-key's chunk).
pub const READER_STATEMENT_TIMEOUT: &str = "30min";

/// The timeouts [`timeouts`] checks: the setting, the value README's
/// block gives it, the role kind it is for (`None`: every kind), and why.
const TIMEOUTS: [(&str, &str, Option<&str>, &str); 2] = [
    (
        "idle_in_transaction_session_timeout",
        IDLE_IN_TRANSACTION_TIMEOUT,
        None,
        "a session of it left idle in a transaction holds its locks (and maintain's retention behind them) until someone ends it",
    ),
    (
        "statement_timeout",
        READER_STATEMENT_TIMEOUT,
        Some("reader"),
        "an analyst's query that runs for hours holds maintain's retention (a partition's drop) behind it",
    ),
];

/// Each registered login role without a timeout of [`TIMEOUTS`] its kind
/// should have: the first of its own in this database, its own in all,
/// the database's, or the server's (its configuration file or command
/// line) that is set, is 0 or none is.
async fn timeouts(client: &Client, report: &mut Report) -> Result<(), tokio_postgres::Error> {
    report.checks.push("timeouts");
    if !registry(client).await? {
        return Ok(());
    }
    for (setting, value, kind, why) in TIMEOUTS {
        let rows = client
            .query(
                "WITH here AS (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()), \
                 setting AS (SELECT d.setrole, d.setdatabase, trim(both '''' from substr(c, strpos(c, '=') + 1)) AS value \
                     FROM pg_catalog.pg_db_role_setting d CROSS JOIN LATERAL unnest(d.setconfig) AS c \
                     WHERE split_part(c, '=', 1) = $1 \
                       AND d.setdatabase IN (0, (SELECT oid FROM here))) \
                 SELECT r.role_name::text, pg_catalog.current_database()::text FROM user_logins_roles r \
                 JOIN pg_catalog.pg_roles a ON a.rolname = r.role_name AND a.rolcanlogin \
                 WHERE ($2::text IS NULL OR r.kind = $2) AND coalesce( \
                     (SELECT s.value FROM setting s WHERE s.setrole IN (a.oid, 0) \
                      ORDER BY s.setrole = a.oid AND s.setdatabase <> 0 DESC, s.setrole = a.oid DESC, s.setdatabase <> 0 DESC \
                      LIMIT 1), \
                     (SELECT p.setting FROM pg_catalog.pg_settings p WHERE p.name = $1 \
                        AND p.source IN ('configuration file', 'command line')), \
                     '0') ~ '^\\s*0*(\\.0*)?\\s*[a-z]*\\s*$' \
                 ORDER BY 1",
                &[&setting, &kind],
            )
            .await?;
        for row in rows {
            let (role, database): (String, String) = (row.get(0), row.get(1));
            report.found(
                "timeouts",
                format!("role {role}"),
                format!("has no {setting}: {why}"),
                format!(
                    "as the admin: ALTER ROLE {} IN DATABASE {} SET {setting} = '{value}' (README's block sets it)",
                    ident(&role),
                    ident(&database)
                ),
            );
        }
    }
    Ok(())
}

async fn partitions_ahead(
    client: &Client,
    today: NaiveDate,
    premake_days: u32,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("partitions");
    let listed = partitions_in_catalog(client).await?;
    if let Some(days) = days_ahead(&listed, today)
        && days < MIN_DAYS_AHEAD
    {
        report.found(
            "partitions",
            "user_logins",
            match days {
                -1 => "no partition for today: today's rows go to the DEFAULT partition".to_owned(),
                d => format!("partitions are made {d} day(s) ahead (fewer than {MIN_DAYS_AHEAD}): rows reach the DEFAULT partition when they run out"),
            },
            "as the maintain role: login-etl maintain; and check that the scheduled maintenance runs (its log, MaintenanceErrorsAlarm)".into(),
        );
    }
    if let Some(default) = listed.iter().find(|p| p.is_default) {
        // Read where this role may (the owner), else the planner's
        // estimate (an admin that may not read it).
        let name = ident(&default.name);
        let readable: bool = client
            .query_one(
                "SELECT pg_catalog.has_table_privilege(pg_catalog.format('%I.%I', pg_catalog.current_schema(), $1::text), 'SELECT')",
                &[&default.name],
            )
            .await?
            .get(0);
        // Rows dated past maintain's horizon (today + PREMAKE_DAYS,
        // `maintain::horizon`): no SQS message is, and maintain makes no
        // partition for them (named apart, with their count and days).
        let far_from = (crate::table::maintain::horizon(today, premake_days)
            + chrono::TimeDelta::days(1))
        .and_time(chrono::NaiveTime::MIN)
        .and_utc();
        let held: bool = if readable {
            let far = client
                .query_one(
                    &format!(
                        "SELECT pg_catalog.count(*), pg_catalog.min(sent_at), pg_catalog.max(sent_at) \
                         FROM {name} WHERE sent_at OPERATOR(pg_catalog.>=) $1"
                    ),
                    &[&far_from],
                )
                .await?;
            let count: i64 = far.get(0);
            if count > 0 {
                let day = |i| {
                    far.get::<_, chrono::DateTime<chrono::Utc>>(i)
                        .date_naive()
                };
                report.found(
                    "partitions",
                    default.name.clone(),
                    format!(
                        "holds {count} row(s) dated {} to {}, past the partitions made ahead: no SQS message is dated ahead, so a credential wrote them, not the function; maintain makes no partition for them",
                        day(1),
                        day(2)
                    ),
                    format!(
                        "as the tables' owner: look at them (SELECT * FROM {name} WHERE sent_at >= '{far_from}'), then delete them; and rotate the password of the role that can write the table (the ingest role's)"
                    ),
                );
            }
            client
                .query_one(
                    &format!("SELECT EXISTS (SELECT 1 FROM {name} WHERE sent_at IS NULL OR sent_at OPERATOR(pg_catalog.<) $1)"),
                    &[&far_from],
                )
                .await?
                .get(0)
        } else {
            client
                .query_one(
                    "SELECT coalesce((SELECT reltuples > 0 FROM pg_catalog.pg_class \
                       WHERE oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), $1::text))), false)",
                    &[&default.name],
                )
                .await?
                .get(0)
        };
        if held {
            report.found(
                "partitions",
                default.name.clone(),
                "holds rows: a day had no partition when they arrived".into(),
                "as the maintain role: login-etl maintain (it makes their days' partitions and moves the rows there)".into(),
            );
        }
    }
    Ok(())
}

/// Whether `user_logins_retention` is the owner's record as migrations/0016
/// makes it (a plain table of `user_logins`'s owner, no row-level security
/// or child, `keep_days` an int4, readable here), and its schema: read
/// only then, as `state::find` reads the schema's record, so that nothing
/// of anyone's runs with doctor's rights.
const RETENTION_READABLE_SQL: &str = "SELECT coalesce(c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" \
        AND NOT c.relrowsecurity AND NOT c.relhassubclass \
        AND c.relowner OPERATOR(pg_catalog.=) (SELECT u.relowner FROM pg_catalog.pg_class u \
            WHERE u.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', \
                pg_catalog.current_schema(), 'user_logins'))::pg_catalog.oid) \
        AND pg_catalog.has_table_privilege(c.oid, 'SELECT') \
        AND (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid \
             AND NOT a.attisdropped AND a.attname OPERATOR(pg_catalog.=) 'keep_days'::pg_catalog.name) \
            OPERATOR(pg_catalog.=) 'int4'::pg_catalog.regtype::pg_catalog.oid, false), \
        pg_catalog.current_schema()::pg_catalog.text \
     FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), \
         'user_logins_retention'))::pg_catalog.oid AS oid) AS t \
     LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid";

/// The retention the tables' owner recorded, where its table is the one
/// migrate makes (see [`RETENTION_READABLE_SQL`]).
async fn recorded_retention(client: &Client) -> Result<Option<Kept>, tokio_postgres::Error> {
    let row = client.query_typed_one(RETENTION_READABLE_SQL, &[]).await?;
    let (readable, schema): (bool, Option<String>) = (row.get(0), row.get(1));
    let (true, Some(schema)) = (readable, schema) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT r.keep_days FROM ONLY {}.user_logins_retention r",
        postgres_protocol::escape::escape_identifier(&schema)
    );
    Ok(client.query_typed(&sql, &[]).await?.first().map(|row| {
        row.get::<_, Option<i32>>(0).map_or(Kept::Everything, |d| {
            Kept::Days(u32::try_from(d).unwrap_or(1).max(1))
        })
    }))
}

/// `RETENTION_DAYS`, where given, against the owner's record (they
/// disagree: which one maintain applies, and the command that makes them
/// one), then a
/// partition whose every day is past the applied retention by more than a
/// day: the scheduled maintenance (hourly) has not applied it.
async fn retention(
    client: &Client,
    today: NaiveDate,
    retention_days: Option<u32>,
    report: &mut Report,
) -> Result<(), tokio_postgres::Error> {
    report.checks.push("retention");
    let configured = Kept::configured(retention_days);
    let applied = match recorded_retention(client).await? {
        // Not told maintenance's setting: the record is the retention.
        Some(recorded) if retention_days.is_none() => recorded,
        Some(recorded) => {
            let (applied, disagreement) = retention::reconcile(configured, recorded);
            if let Some(d) = disagreement {
                report.found("retention", "table user_logins_retention", d.problem, d.fix);
            }
            applied
        }
        None => configured,
    };
    let Some(days) = applied.days() else {
        return Ok(());
    };
    let options = crate::table::maintain::MaintainOptions {
        retention_days: Some(days),
        ..Default::default()
    };
    let Some(cutoff) = options.cutoff(today) else {
        return Ok(());
    };
    let overdue = cutoff - chrono::TimeDelta::days(1);
    let stale: Vec<String> = partitions_in_catalog(client)
        .await?
        .into_iter()
        .filter(|p| !p.is_default && p.hi.is_some_and(|hi| hi <= overdue))
        .map(|p| p.name)
        .collect();
    if !stale.is_empty() {
        report.found(
            "retention",
            stale.join(", "),
            format!(
                "{} partition(s) hold only days before {cutoff}, past the retention of {days} days by more than a day: retention is not being applied",
                stale.len()
            ),
            format!("as the maintain role: RETENTION_DAYS={days} login-etl maintain; and check that the scheduled maintenance runs (its log, MaintenanceErrorsAlarm)"),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_paths_with_pg_catalog_first_pass_and_others_fail() {
        assert!(search_path_first_is_catalog(
            "search_path=pg_catalog, public, pg_temp"
        ));
        assert!(search_path_first_is_catalog(
            "work_mem=64kB;search_path=pg_catalog,public"
        ));
        assert!(!search_path_first_is_catalog(
            "search_path=public, pg_catalog, pg_temp"
        ));
        assert!(!search_path_first_is_catalog(""));
        assert!(!search_path_first_is_catalog("work_mem=64kB"));
    }

    #[test]
    fn versions_pending_newer_or_missing_are_findings() {
        assert_eq!(version_finding(Some(11), 11), None);
        assert!(
            version_finding(Some(10), 11)
                .unwrap()
                .problem
                .contains("pending")
        );
        assert!(
            version_finding(Some(12), 11)
                .unwrap()
                .problem
                .contains("newer")
        );
        assert!(
            version_finding(Some(0), 11)
                .unwrap()
                .problem
                .contains("before login-etl 0.3.0")
        );
        assert!(
            version_finding(None, 11)
                .unwrap()
                .fix
                .contains("login-etl migrate")
        );
    }

    #[test]
    fn a_grants_fix_names_the_schema_and_quotes_what_the_shell_would_split() {
        let mut report = Report {
            schema: "public".into(),
            profile: "masking",
            ..Report::default()
        };
        assert_eq!(
            report.grants_command("ingest", "login_etl_ingest"),
            "login-etl grants --role ingest --to login_etl_ingest --profile masking"
        );
        report.schema = "login etl".into();
        let command = report.grants_command("ingest", "it's; rm -rf ~");
        assert_eq!(
            shlex::split(&command).unwrap(),
            [
                "login-etl",
                "grants",
                "--role",
                "ingest",
                "--to",
                "it's; rm -rf ~",
                "--schema",
                "login etl",
                "--profile",
                "masking"
            ]
        );
    }
}
