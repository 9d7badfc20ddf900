//! doctor over a schema tampered with by someone holding the owner's or a
//! superuser's rights (issue 63, item 4): it names each change, runs none
//! of the schema's functions (a replaced one would run as the superuser
//! doctor runs as), and `migrate` mends what it made.

use crate::common::*;
use login_etl::database::settings::DbConfig;
use login_etl::startup;
use login_etl::table::doctor::{Report, examine};
use login_etl::table::maintain::DEFAULT_PREMAKE_DAYS;
use login_etl::table::privileges::Role;

fn db_config(url: &str) -> DbConfig {
    let url = url.to_owned();
    DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap()
}

/// doctor with no RETENTION_DAYS and the default PREMAKE_DAYS.
async fn doctor(
    client: &tokio_postgres::Client,
    today: chrono::NaiveDate,
) -> Result<Report, tokio_postgres::Error> {
    examine(client, today, None, DEFAULT_PREMAKE_DAYS).await
}

fn names(report: &Report, check: &str, subject: &str) -> bool {
    report
        .findings
        .iter()
        .any(|f| f.check == check && f.subject.contains(subject))
}

#[tokio::test]
async fn doctor_as_a_superuser_names_each_tampering_and_runs_nothing_of_the_schema() {
    let db = TestDb::create().await;
    let owner_url = db.role_url(Role::Migrate).await;
    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("the migrate role migrates");
    db.role_url(Role::Ingest).await;
    let owner = db.role_name(Role::Migrate);
    let stranger = format!("{}_stranger", db.name);
    db.bare_named_role(&stranger).await;
    let admin = db.client().await; // a superuser
    let today = chrono::Utc::now().date_naive();
    let clean = doctor(&admin, today).await.expect("doctor runs");
    let tampering_checks = [
        "schema_version",
        "triggers",
        "functions",
        "owner",
        "grantees",
    ];
    assert!(
        !clean
            .findings
            .iter()
            .any(|f| tampering_checks.contains(&f.check)),
        "a fresh schema: {:?}",
        clean.findings
    );

    // Bodies that would escalate if doctor ran them as the superuser it is.
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.doctor_ran (what text, who text DEFAULT current_user); \
             GRANT INSERT ON public.doctor_ran TO PUBLIC; \
             CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO public.doctor_ran VALUES ('schema_version'); \
                   ALTER ROLE \"{owner}\" SUPERUSER; RETURN 18; END $$; \
             CREATE OR REPLACE FUNCTION login_etl_partitions() \
               RETURNS TABLE(name text, lo date, hi date, is_default boolean, rows_estimate bigint) \
               LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.doctor_ran VALUES ('partitions'); RETURN; END $$; \
             CREATE FUNCTION login_etl_backdoor() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$; \
             ALTER TABLE user_logins_erased DISABLE TRIGGER user_logins_erased_no_delete; \
             DROP TRIGGER user_logins_pii_audit_no_delete ON user_logins_pii_audit; \
             DROP TRIGGER user_logins_erased_rekey_only ON user_logins_erased; \
             GRANT SELECT ON user_logins_pii_vault TO \"{stranger}\"; \
             ALTER ROLE \"{owner}\" CREATEROLE; \
             CREATE FUNCTION public.stranger_eq(oid, integer) RETURNS boolean LANGUAGE sql \
               AS 'SELECT $1 OPERATOR(pg_catalog.=) $2::oid'; \
             CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = public.stranger_eq)"
        ))
        .await
        .unwrap();

    // The owner's own plant: an operator that matches `oid = regclass`
    // exactly, so it wins over the catalog's wherever the path has it.
    let owner_client = connect(&owner_url).await;
    owner_client
        .batch_execute(
            "CREATE FUNCTION public.evil_eq(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_catalog.set_config('doctor.ran_as', \
                       pg_catalog.concat_ws(',', pg_catalog.current_setting('doctor.ran_as', true), current_user), false); \
                   RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $$; \
             CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.evil_eq)",
        )
        .await
        .unwrap();
    let report = doctor(&admin, today)
        .await
        .expect("doctor reads a tampered schema without failing");
    // The replaced functions never ran (they would have written); the
    // planted operator, if a query ran it, ran as the owner who planted
    // it, never as the superuser doctor was run as.
    let ran: i64 = admin
        .query_one("SELECT count(*) FROM public.doctor_ran", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ran, 0, "doctor ran a replaced function of the schema");
    let ran_as: Option<String> = admin
        .query_one("SELECT current_setting('doctor.ran_as', true)", &[])
        .await
        .unwrap()
        .get(0);
    let ran_as = ran_as.unwrap_or_default();
    assert!(
        ran_as
            .split(',')
            .filter(|w| !w.is_empty())
            .all(|w| w == owner),
        "the planted operator ran as {ran_as}"
    );
    let escalated: bool = admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!escalated);
    for (check, subject) in [
        // Kept for 0.2.0's binaries, made from its file: a replaced body
        // is named as any function's.
        ("functions", "login_etl_schema_version()"),
        ("functions", "login_etl_partitions()"),
        ("functions", "login_etl_backdoor()"),
        ("triggers", "user_logins_erased_no_delete"),
        ("triggers", "user_logins_pii_audit_no_delete"),
        ("triggers", "user_logins_erased_rekey_only"),
        ("planted", "operator =(oid,regclass)"),
        ("planted", "function evil_eq(oid,regclass)"),
        // Another role's (here the admin's, standing for any that could
        // create in the schema once): an operator whoever made it.
        ("planted", "operator =(oid,integer)"),
        ("grantees", "user_logins_pii_vault"),
        ("owner", owner.as_str()),
    ] {
        assert!(
            names(&report, check, subject),
            "{check} names {subject}: {:#?}",
            report.findings
        );
    }
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.check == "owner" && f.problem.contains("CREATEROLE")),
        "{:#?}",
        report.findings
    );

    // migrate mends what it made; the admin, the rest, as the fixes say.
    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("migrate over the tampered schema");
    admin
        .batch_execute(&format!(
            "ALTER ROLE \"{owner}\" NOCREATEROLE; \
             REVOKE ALL ON TABLE user_logins_pii_vault FROM \"{stranger}\"; \
             DROP FUNCTION login_etl_backdoor(); DROP OPERATOR public.= (oid, regclass); \
             DROP FUNCTION public.evil_eq(oid, regclass); DROP TABLE public.doctor_ran; \
             DROP OPERATOR public.= (oid, integer); DROP FUNCTION public.stranger_eq(oid, integer)"
        ))
        .await
        .unwrap();
    let mended = doctor(&admin, today).await.unwrap();
    assert!(
        !mended
            .findings
            .iter()
            .any(|f| tampering_checks.contains(&f.check)),
        "mended: {:#?}",
        mended.findings
    );
}

/// A trigger made again under its own name but doing less (a `WHEN
/// (false)` twin, an `AND` for an `OR`, another function), a trigger
/// login-etl never made, and a lock's row deleted: doctor names each, the
/// owner's functions refuse to take a lock with no row, and `migrate`
/// makes its triggers and rows again.
#[tokio::test]
async fn twins_strangers_and_a_lock_without_its_row_are_named_and_migrate_mends_them() {
    let db = TestDb::create().await;
    let owner_url = db.role_url(Role::Migrate).await;
    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("the migrate role migrates");
    let maintainer = connect(&db.role_url(Role::Maintain).await).await;
    let admin = db.client().await; // a superuser
    let today = chrono::Utc::now().date_naive();
    let checks = ["triggers", "locks"];
    let clean = doctor(&admin, today).await.unwrap();
    assert!(
        !clean.findings.iter().any(|f| checks.contains(&f.check)),
        "a fresh schema: {:#?}",
        clean.findings
    );

    connect(&owner_url)
        .await
        .batch_execute(
            "DROP TRIGGER user_logins_erased_current_version ON user_logins_erased; \
             CREATE TRIGGER user_logins_erased_current_version BEFORE INSERT ON user_logins_erased \
               FOR EACH ROW WHEN (false) EXECUTE FUNCTION login_etl_erased_current_version(); \
             DROP TRIGGER user_logins_pii_vault_seen_forward ON user_logins_pii_vault; \
             CREATE TRIGGER user_logins_pii_vault_seen_forward BEFORE UPDATE OF last_seen ON user_logins_pii_vault \
               FOR EACH ROW WHEN (NEW.last_seen < OLD.last_seen AND NEW.last_seen > (now() AT TIME ZONE 'UTC')::date) \
               EXECUTE FUNCTION login_etl_vault_last_seen(); \
             DROP TRIGGER user_logins_pii_audit_rekey_only ON user_logins_pii_audit; \
             CREATE TRIGGER user_logins_pii_audit_rekey_only BEFORE UPDATE ON user_logins_pii_audit \
               FOR EACH ROW EXECUTE FUNCTION login_etl_erased_rekey_only(); \
             DROP TRIGGER user_logins_pii_vault_seen_today ON user_logins_pii_vault; \
             CREATE TRIGGER user_logins_pii_vault_seen_today BEFORE INSERT ON user_logins_pii_vault \
               FOR EACH ROW WHEN (NEW.last_seen::text > ((now() AT TIME ZONE 'UTC')::date)::text) \
               EXECUTE FUNCTION login_etl_vault_last_seen(); \
             CREATE TRIGGER a_stranger BEFORE DELETE ON user_logins_pii_vault \
               FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only(); \
             CREATE RULE keep_nothing AS ON INSERT TO user_logins_rekeyed DO INSTEAD NOTHING; \
             ALTER TABLE user_logins_erased ENABLE ROW LEVEL SECURITY; \
             DELETE FROM user_logins_locks WHERE name = 'migration'",
        )
        .await
        .unwrap();

    let report = doctor(&admin, today).await.unwrap();
    for subject in [
        "user_logins_erased_current_version",
        "user_logins_pii_vault_seen_forward",
        // A condition on the dates as text: it compares them as strings.
        "user_logins_pii_vault_seen_today",
        "user_logins_pii_audit_rekey_only",
    ] {
        assert!(
            report.findings.iter().any(|f| f.check == "triggers"
                && f.subject.contains(subject)
                && f.problem.contains("not what login-etl's migration makes")),
            "{subject}: {:#?}",
            report.findings
        );
    }
    assert!(
        report.findings.iter().any(|f| f.check == "triggers"
            && f.subject == "trigger on user_logins_pii_vault"
            && f.problem.contains("a_stranger")),
        "{:#?}",
        report.findings
    );
    assert!(
        names(&report, "locks", "user_logins_locks"),
        "{:#?}",
        report.findings
    );
    for subject in [
        "rule on user_logins_rekeyed",
        "row-level security on user_logins_erased",
    ] {
        assert!(
            names(&report, "triggers", subject),
            "{subject}: {:#?}",
            report.findings
        );
    }

    // The lock without its row: maintain refuses, saying what to run.
    let refused = login_etl::table::maintain::run(
        &maintainer,
        &login_etl::table::maintain::MaintainOptions::default(),
    )
    .await
    .expect_err("maintain takes the migration lock, which has no row");
    let text = format!("{refused:#}");
    assert!(
        text.contains("user_logins_locks") && text.contains("login-etl migrate"),
        "{text}"
    );

    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("migrate over the tampered schema");
    let mended = doctor(&admin, today).await.unwrap();
    let left: Vec<_> = mended
        .findings
        .iter()
        .filter(|f| checks.contains(&f.check))
        .collect();
    // What login-etl did not make is the owner's to drop, as the fix says.
    assert_eq!(left.len(), 3, "{left:#?}");
    assert!(
        left.iter()
            .all(|f| f.problem.starts_with("login-etl did not make it")),
        "{left:#?}"
    );
    login_etl::table::maintain::run(
        &maintainer,
        &login_etl::table::maintain::MaintainOptions::default(),
    )
    .await
    .expect("maintain runs once the row is back");
    let erased_ok: bool = admin
        .query_one(
            "SELECT pg_get_triggerdef(oid) NOT LIKE '%WHEN%' FROM pg_trigger \
             WHERE tgname = 'user_logins_erased_current_version'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        erased_ok,
        "the WHEN (false) twin was made again as login-etl makes it"
    );
}

/// The schema's record (`user_logins_schema`) replaced by a view whose
/// column runs the owner's code: doctor, run as a superuser, does not read
/// it (its code never runs), names it, and reads the record again once the
/// table is back.
#[tokio::test]
async fn a_view_in_place_of_the_schema_record_is_named_and_never_read() {
    let db = TestDb::create().await;
    let owner_url = db.role_url(Role::Migrate).await;
    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("the migrate role migrates");
    let admin = db.client().await; // a superuser
    let today = chrono::Utc::now().date_naive();
    admin
        .batch_execute(
            "CREATE TABLE public.doctor_ran (who text); GRANT INSERT ON public.doctor_ran TO PUBLIC",
        )
        .await
        .unwrap();
    let owner = connect(&owner_url).await;
    owner
        .batch_execute(
            "CREATE FUNCTION login_etl_noted() RETURNS integer LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO public.doctor_ran VALUES (current_user); RETURN 21; END $$; \
             ALTER TABLE user_logins_schema RENAME TO user_logins_schema_was; \
             CREATE VIEW user_logins_schema AS SELECT true AS one, login_etl_noted() AS version, \
               profile, functions, migrated_at FROM user_logins_schema_was",
        )
        .await
        .unwrap();
    let report = doctor(&admin, today).await.expect("doctor runs");
    let ran: i64 = admin
        .query_one("SELECT count(*) FROM public.doctor_ran", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ran, 0, "doctor read the view");
    assert!(
        report.findings.iter().any(|f| f.check == "schema_version"
            && f.subject == "table user_logins_schema"
            && f.problem.contains("is not the plain table")),
        "{:#?}",
        report.findings
    );

    owner
        .batch_execute(
            "DROP VIEW user_logins_schema; DROP FUNCTION login_etl_noted(); \
             ALTER TABLE user_logins_schema_was RENAME TO user_logins_schema",
        )
        .await
        .unwrap();
    let mended = doctor(&admin, today).await.unwrap();
    assert!(
        !mended.findings.iter().any(|f| f.check == "schema_version"),
        "{:#?}",
        mended.findings
    );

    // Its version column of the owner's own type, read through the
    // owner's cast: not read either, and named.
    owner
        .batch_execute(
            "CREATE TYPE login_etl_v AS (v integer); \
             CREATE FUNCTION login_etl_v_int(login_etl_v) RETURNS integer LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO public.doctor_ran VALUES (current_user); RETURN ($1).v; END $$; \
             CREATE CAST (login_etl_v AS integer) WITH FUNCTION login_etl_v_int(login_etl_v); \
             ALTER TABLE user_logins_schema ALTER COLUMN version TYPE login_etl_v USING ROW(version)::login_etl_v",
        )
        .await
        .unwrap();
    let report = doctor(&admin, today).await.expect("doctor runs");
    let ran: i64 = admin
        .query_one("SELECT count(*) FROM public.doctor_ran", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ran, 0, "doctor read the retyped column through its cast");
    assert!(
        report.findings.iter().any(|f| f.check == "schema_version"
            && f.subject == "table user_logins_schema"
            && f.problem.contains("a column of another type")),
        "{:#?}",
        report.findings
    );
}

/// A `user_logins_schema` another role made while it could create in the
/// schema (PostgreSQL 13/14's `public`), before this version's migrate:
/// never taken for the record, nor written (its triggers would run as the
/// owner). migrate refuses, saying whose it is not and what to do.
#[tokio::test]
async fn a_record_table_another_role_made_is_refused_by_migrate() {
    let db = TestDb::create().await;
    let owner_url = db.role_url(Role::Migrate).await;
    startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect("the migrate role migrates");
    let stranger = format!("{}_stranger", db.name);
    db.bare_named_role(&stranger).await;
    let admin = db.client().await;
    // As a database migrated before 0.3.0, whose public schema was open.
    connect(&owner_url)
        .await
        .batch_execute("DROP TABLE user_logins_schema")
        .await
        .unwrap();
    admin
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO \"{stranger}\""))
        .await
        .unwrap();
    connect(&with_user(&db.url, &stranger))
        .await
        .batch_execute(
            "CREATE TABLE public.user_logins_schema (one boolean PRIMARY KEY DEFAULT true, \
               version integer, profile text, functions text, migrated_at timestamptz DEFAULT now()); \
             GRANT ALL ON public.user_logins_schema TO PUBLIC",
        )
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM \"{stranger}\""
        ))
        .await
        .unwrap();
    let err = startup::migrate(&db_config(&owner_url), login_etl::Profile::Full)
        .await
        .expect_err("migrate refuses the stranger's table");
    let text = err.to_string();
    assert!(
        text.contains("user_logins_schema exists and is not a table of the tables' owner"),
        "{text}"
    );
    // Its own way out, not the generic "run login-etl migrate".
    assert!(
        text.contains("drop it as that role")
            && !text.contains("run `login-etl migrate` as the tables' owner"),
        "{text}"
    );
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM public.user_logins_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing written into it");
    let report = doctor(&admin, chrono::Utc::now().date_naive())
        .await
        .unwrap();
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.check == "schema_version" && f.subject == "table user_logins_schema"),
        "{:#?}",
        report.findings
    );
}
