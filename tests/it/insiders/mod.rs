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
use login_etl::BatchHandler;
use login_etl::database::settings::DbConfig;
use login_etl::privacy::rekey::{self, RekeyOptions};
use login_etl::synth::{self, Options};
use login_etl::table::maintain::{self, MaintainOptions};
use login_etl::table::privileges::Role;
use login_etl::table::schema::functions::FUNCTION_FILES;
use login_etl::{Deadline, SqsBatch, startup};
use tokio_postgres::Client;

mod attempts;
mod commands;
mod oracle;

use attempts::*;
use commands::*;
use oracle::*;

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
        let refused = startup::migrate(&db_config(&owner), login_etl::Profile::Full)
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
    startup::migrate(&db_config(&owner), login_etl::Profile::Full)
        .await
        .expect("the migrate role migrates");
    let owner_client = connect(&owner).await;
    for role in ROLES {
        let name = db.role_name(role);
        db.bare_named_role(&name).await;
        let grants =
            login_etl::grants::sql(role, &name, "public", login_etl::Profile::Full).unwrap();
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
    login_etl::privacy::forget::forget(&mut erase, user, masker(1).users(), CALLER)
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
    let state = login_etl::table::schema::inspect(&c).await.unwrap();
    assert_eq!(
        state.schema_writers,
        ["PUBLIC"],
        "what the function warns of"
    );
    let again = startup::migrate(&db_config(&d.owner), login_etl::Profile::Full)
        .await
        .expect_err("migrate refuses the opened schema")
        .to_string();
    assert!(
        again.contains("REVOKE CREATE ON SCHEMA \"public\" FROM PUBLIC;"),
        "{again}"
    );
}

/// Issue 76, finding 3: `defects` holds codes only, by the table's check
/// as well as by the function. Every code the function can write (each
/// defect of every field, a declared extra field's, all at once) is
/// stored by the ingest role; an address, an email, an SSN, a code with
/// a value beside it or a second dot, or an empty list is refused
/// (23514), and nothing of it is stored.
#[tokio::test]
async fn defects_hold_codes_only_whoever_writes_the_row() {
    use login_etl::app_version::{Derivation, VersionError};
    use login_etl::contract::{Defect, ExtraProblem, FIELDS, FieldName};
    let d = deploy(false).await;
    let c = d.connect(Role::Ingest).await;
    let extra = FieldName::of("os_name_2");
    let mut codes: Vec<String> = Vec::new();
    for f in FIELDS {
        for defect in [
            Defect::Missing(f),
            Defect::WrongType(f),
            Defect::Empty(f),
            Defect::TooLong(f),
            Defect::Nul(f),
            Defect::Duplicate(f),
        ] {
            codes.push(defect.code().into_owned());
        }
    }
    for defect in [
        Defect::UserIdInteger,
        Defect::DeviceIdInteger,
        Defect::IpPort,
        Defect::IpZone,
        Defect::IpList,
        Defect::IpUnparseable,
        Defect::RebuiltFromCopy,
    ] {
        codes.push(defect.code().into_owned());
    }
    for d in [
        Derivation::Prefix,
        Derivation::FourthPart,
        Derivation::Suffix,
        Derivation::Unparsed,
        Derivation::OutOfRange,
        Derivation::TextWithheld,
    ] {
        codes.push(
            Defect::AppVersion(d, VersionError::Shape)
                .code()
                .into_owned(),
        );
    }
    for p in [
        ExtraProblem::Duplicate,
        ExtraProblem::TooLong,
        ExtraProblem::NulCharacter,
        ExtraProblem::Invalid,
        ExtraProblem::NotScalar,
    ] {
        codes.push(Defect::Extra(p, extra).code().into_owned());
    }
    let insert = |i: usize| {
        format!(
            "INSERT INTO user_logins (message_id, user_id, defects, sent_at, create_date) \
             VALUES ('codes-{i}', 'u', $1, now(), (now() AT TIME ZONE 'UTC')::date)"
        )
    };
    for (i, code) in codes.iter().enumerate() {
        c.execute(&insert(i), &[&vec![code.as_str()]])
            .await
            .unwrap_or_else(|e| panic!("{code}: {e:?}"));
    }
    let all: Vec<&str> = codes.iter().take(32).map(String::as_str).collect();
    c.execute(&insert(1000), &[&all])
        .await
        .expect("32 codes at once");
    let rejected: [&[&str]; 10] = [
        &["203.0.113.77"],
        &["ip_203.0.113.77"],
        &["alice@example.com"],
        &["593-47-5928"],
        &["ip.port", "ip.port 203.0.113.77"],
        &["ip.port", "ip.port,203"],
        &["ip.port.x"],
        &["1ip.port"],
        &[],
        &["ip.port"; 33],
    ];
    for (i, defects) in rejected.iter().enumerate() {
        let e = c
            .execute(&insert(2000 + i), &[&defects.to_vec()])
            .await
            .expect_err("not codes");
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("23514"),
            "{defects:?}: {e:?}"
        );
    }
    let stored: i64 = d
        .admin
        .query_one(
            "SELECT count(*) FROM user_logins WHERE message_id LIKE 'codes-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored as usize, codes.len() + 1);
}

/// Issue 98, finding 3: a canonical user id can be stored as text by
/// whoever writes the table (`user_id` NULL, `user_id_text` the id); the
/// view shows that row under the id, so the user's forget deletes it, and
/// the audit counts it. Another spelling (upper case) is another id, kept.
#[tokio::test]
async fn forget_deletes_every_row_the_view_shows_under_its_user_id() {
    let d = deploy(false).await;
    let user = "6f1c2a4e-0000-4000-8000-000000000001";
    d.connect(Role::Ingest)
        .await
        .batch_execute(&format!(
            "INSERT INTO user_logins_rows (message_id, user_id, user_id_text, sent_at) VALUES \
             (gen_random_uuid(), '{user}', NULL, now()), \
             (gen_random_uuid(), NULL, '{user}', now()), \
             (gen_random_uuid(), gen_random_uuid(), '{user}', now()), \
             (gen_random_uuid(), NULL, upper('{user}'), now()), \
             (gen_random_uuid(), '{user}', 'someone-else', now())"
        ))
        .await
        .expect("the ingest role writes rows as it likes");
    let shown = || async {
        d.admin
            .query_one(
                "SELECT count(*) FROM user_logins WHERE user_id = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(shown().await, 3);
    assert_eq!(forget(&d, user).await, 3, "forget's count");
    assert_eq!(shown().await, 0, "a row still shows under the erased id");
    let audited: i64 = d
        .admin
        .query_one(
            "SELECT rows_deleted FROM user_logins_pii_audit \
             WHERE action = 'forget' AND rows_deleted IS NOT NULL ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(audited, 3, "the audit's count");
    let kept: i64 = d
        .admin
        .query_one(
            "SELECT count(*) FROM user_logins WHERE user_id IN (upper($1), 'someone-else')",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 2, "other ids' rows are kept");
}

/// Issue 98, finding 2: rows an ingest credential dates 20 to 219 days
/// ahead make maintain build no partition past its premake horizon; they
/// wait in the DEFAULT partition and doctor names them, and a wider
/// horizon takes in exactly the days it reaches.
#[tokio::test]
async fn far_dated_rows_make_no_partition_past_the_premake_horizon() {
    use chrono::TimeDelta;
    let d = deploy(false).await;
    d.connect(Role::Ingest)
        .await
        .batch_execute(
            "INSERT INTO user_logins_rows (message_id, user_id_text, sent_at) \
             SELECT gen_random_uuid(), 'far', now() + make_interval(days => n) \
             FROM generate_series(20, 219) n",
        )
        .await
        .expect("the ingest role dates a row as it likes");
    let m = d.connect(Role::Maintain).await;
    let run = |premake_days| {
        let m = &m;
        async move {
            maintain::run(
                m,
                &MaintainOptions {
                    premake_days,
                    ..Default::default()
                },
            )
            .await
            .expect("maintain as the maintain role")
        }
    };
    let today = chrono::Utc::now().date_naive();
    let made = run(7).await;
    let partitions = login_etl::table::partitions::partitions_in_catalog(&d.admin)
        .await
        .unwrap();
    let past: Vec<&str> = partitions
        .iter()
        .filter(|p| p.hi.is_some_and(|hi| hi > today + TimeDelta::days(8)))
        .map(|p| p.name.as_str())
        .collect();
    assert!(past.is_empty(), "partitions past the horizon: {past:?}");
    assert_eq!(made.default_rows, 200, "the far rows wait in DEFAULT");
    let owner = connect(&d.owner).await;
    let report = login_etl::table::doctor::examine(
        &owner,
        today,
        None,
        login_etl::table::maintain::DEFAULT_PREMAKE_DAYS,
    )
    .await
    .unwrap();
    let named = report
        .findings
        .iter()
        .find(|f| f.check == "partitions" && f.problem.contains("200 row(s) dated"))
        .unwrap_or_else(|| panic!("doctor names the far rows: {:?}", report.findings));
    assert!(
        named.problem.contains("a credential wrote them"),
        "{named:?}"
    );
    assert!(
        !report
            .findings
            .iter()
            .any(|f| f.problem.starts_with("holds rows: a day had no partition")),
        "the far rows are not the rows maintain would move"
    );
    // A horizon of 30 days takes in the rows 20 to 30 days ahead.
    assert_eq!(run(30).await.default_rows, 189);
}
