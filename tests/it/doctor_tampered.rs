//! doctor over a schema tampered with by someone holding the owner's or a
//! superuser's rights (issue 63, item 4): it names each change, runs none
//! of the schema's functions (a replaced one would run as the superuser
//! doctor runs as), and `migrate` mends what it made.

use crate::common::*;
use login_etl::database::DbConfig;
use login_etl::grants::Role;
use login_etl::startup;
use login_etl::table::doctor::{Report, examine};

fn db_config(url: &str) -> DbConfig {
    let url = url.to_owned();
    DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap()
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
    startup::migrate(&db_config(&owner_url), login_etl::profile::Profile::Full)
        .await
        .expect("the migrate role migrates");
    db.role_url(Role::Ingest).await;
    let owner = db.role_name(Role::Migrate);
    let stranger = format!("{}_stranger", db.name);
    db.bare_named_role(&stranger).await;
    let admin = db.client().await; // a superuser
    let today = chrono::Utc::now().date_naive();
    let clean = examine(&admin, today, None).await.expect("doctor runs");
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
    let report = examine(&admin, today, None)
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
        ("schema_version", "login_etl_schema_version()"),
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
    startup::migrate(&db_config(&owner_url), login_etl::profile::Profile::Full)
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
    let mended = examine(&admin, today, None).await.unwrap();
    assert!(
        !mended
            .findings
            .iter()
            .any(|f| tampering_checks.contains(&f.check)),
        "mended: {:#?}",
        mended.findings
    );
}
