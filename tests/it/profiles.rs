//! The masking-only profile (`login-etl migrate --profile masking`): masked
//! rows without the vault, the erasure list or the audit trail, its three
//! roles only, and the widening to the full profile online, beside a
//! function that keeps writing.

use std::time::Duration;

use crate::common;

use common::*;
use login_etl::Profile;
use login_etl::database::settings::DbConfig;
use login_etl::grants::GrantsError;
use login_etl::synth::{self, Options};
use login_etl::table::maintain::MaintainOptions;
use login_etl::table::privileges::FULL_ONLY_TABLES;
use login_etl::table::privileges::Role;
use login_etl::table::schema::MigrateOptions;
use login_etl::table::schema::functions::{FUNCTION_FILES, PROFILE_FUNCTION};
use login_etl::table::schema::state;
use login_etl::{Deadline, SqsBatch, startup};
use tokio_postgres::Client;

fn db_config(url: &str) -> DbConfig {
    let url = url.to_owned();
    DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap()
}

async fn migrate(url: &str, profile: Option<Profile>) -> Result<String, String> {
    let options = MigrateOptions {
        premake_days: 3,
        profile,
        ..MigrateOptions::default()
    };
    startup::migrate_with(&db_config(url), &options)
        .await
        .map_err(|e| e.to_string())
}

/// The role `name` with what `login-etl grants --profile <profile>` prints.
async fn role(db: &TestDb, role: Role, profile: Profile) -> String {
    let name = db.role_name(role);
    db.bare_named_role(&name).await;
    let sql = login_etl::grants::sql(role, &name, "public", profile).unwrap();
    db.client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("grants --profile {}: {e}\n{sql}", profile.as_str()));
    with_user(&db.url, &name)
}

/// The full profile's tables and functions that exist.
async fn full_only_objects(client: &Client) -> Vec<String> {
    let mut found = Vec::new();
    for table in FULL_ONLY_TABLES {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await
            .unwrap()
            .get(0);
        if exists {
            found.push((*table).to_owned());
        }
    }
    for f in FUNCTION_FILES.iter().filter(|f| f.full_only()) {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_proc WHERE proname = $1 \
                 AND pronamespace = to_regnamespace(current_schema())",
                &[&f.name],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            found.push(f.name.to_owned());
        }
    }
    found
}

/// The profile migrate recorded, which the one 0.2.0's binaries read from
/// `login_etl_profile()`'s body agrees with.
async fn profile_of(client: &Client) -> String {
    let recorded = state::read(client).await.unwrap().expect("recorded");
    let legacy: String = client
        .query_one(&format!("SELECT {PROFILE_FUNCTION}()"), &[])
        .await
        .unwrap()
        .get(0);
    let recorded = recorded
        .profile
        .expect("a known profile")
        .as_str()
        .to_owned();
    assert_eq!(legacy, recorded, "0.2.0's marker and the record agree");
    recorded
}

fn batch(seed: u64, count: usize) -> aws_lambda_events::event::sqs::SqsEvent {
    synth::event(&Options {
        count,
        seed,
        ..Options::default()
    })
}

#[tokio::test]
async fn a_masking_only_database_takes_masked_rows_with_three_roles_and_nothing_of_the_vault() {
    let db = TestDb::create().await;
    migrate(&db.url, Some(Profile::Masking)).await.unwrap();
    let admin = db.client().await;
    assert_eq!(full_only_objects(&admin).await, Vec::<String>::new());
    assert_eq!(profile_of(&admin).await, "masking");

    // Its roles: the three of the profile; the others are refused by name.
    for other in [
        Role::Reveal,
        Role::Erase,
        Role::Audit,
        Role::Rotate,
        Role::Upgrade,
    ] {
        let e = login_etl::grants::sql(other, "x", "public", Profile::Masking).unwrap_err();
        assert!(matches!(e, GrantsError::NotInProfile { .. }), "{other:?}");
        assert!(e.to_string().contains("--profile full"), "{e}");
    }
    let ingest = role(&db, Role::Ingest, Profile::Masking).await;
    let maintain = role(&db, Role::Maintain, Profile::Masking).await;

    // The function writes masked rows as the ingest role.
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;
    let event = load_event("sqs-valid.json");
    let out = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .unwrap();
    assert!(failures(&out.response).is_empty());
    let want: Vec<_> = event
        .records
        .iter()
        .map(|m| common::oracle::expected_row(TEST_KEY, m))
        .collect();
    common::oracle::assert_table_matches(&admin, &want).await;

    // A function that keeps originals is refused with the fix, nothing written.
    let client = connect(&ingest).await;
    let e = login_etl::table::schema::check(&client, Duration::from_secs(5), true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("masking-only profile") && e.contains("login-etl migrate --profile full"),
        "{e}"
    );

    // maintain runs as its role, retention included (no vault to purge).
    record_retention(&db.client().await, 30).await;
    let report = startup::maintain(
        &db_config(&maintain),
        &MaintainOptions {
            retention_days: Some(30),
            ..MaintainOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.vault_entries_purged, 0);

    // The full profile's commands say what to do instead of failing on a
    // missing table.
    let e = startup::full_profile_connection(&db_config(&db.url), "erasing a user (forget)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("masking-only profile") && e.contains("--profile full"),
        "{e}"
    );

    // A repeated migrate keeps the profile (no --profile given).
    migrate(&db.url, None).await.unwrap();
    assert_eq!(profile_of(&admin).await, "masking");
    assert_eq!(full_only_objects(&admin).await, Vec::<String>::new());
}

#[tokio::test]
async fn widening_to_the_full_profile_is_online_keeps_every_row_and_is_never_undone() {
    let db = TestDb::create().await;
    migrate(&db.url, Some(Profile::Masking)).await.unwrap();
    let ingest = role(&db, Role::Ingest, Profile::Masking).await;
    let h = handler_with(&[("DATABASE_URL", &ingest), ("MASKING_KEY", TEST_KEY)]).await;

    // The function writes batches while migrate widens the profile.
    let batches_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::clone(&batches_done);
    let writer = tokio::spawn(async move {
        let mut written = 0;
        for seed in 0..40u64 {
            let event = batch(1000 + seed, 25);
            let out = h
                .handle(&SqsBatch::from(&event), Deadline::NONE)
                .await
                .expect("every batch is written, before, during and after the widening");
            assert!(failures(&out.response).is_empty(), "batch {seed}");
            written += out.summary.inserted;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (h, written)
    });
    // Batches written before the widening starts (the rest go on beside it),
    // or a writer that ended: its panic is reported at its await below.
    let (done, w) = (&batches_done, &writer);
    wait_until("the first batches before the widening", || async move {
        w.is_finished() || done.load(std::sync::atomic::Ordering::SeqCst) >= 3
    })
    .await;
    migrate(&db.url, Some(Profile::Full)).await.unwrap();
    let (h, written) = writer.await.unwrap();

    let admin = db.client().await;
    assert_eq!(written, 40 * 25);
    assert_eq!(count_rows(&admin).await, 40 * 25, "every row kept");
    assert_eq!(profile_of(&admin).await, "full");
    let mut tables = full_only_objects(&admin).await;
    tables.retain(|t| FULL_ONLY_TABLES.contains(&t.as_str()));
    assert_eq!(tables.len(), FULL_ONLY_TABLES.len(), "{tables:?}");
    // The registered ingest role got what the full profile adds.
    let reads_list: bool = admin
        .query_one(
            "SELECT has_column_privilege($1, 'user_logins_erased', 'user_key', 'SELECT')",
            &[&db.role_name(Role::Ingest)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reads_list);

    // A user erased since: the function that started on the masking-only
    // database reads the profile again and filters with the new list.
    let event = batch(9000, 10);
    let erased: serde_json::Value =
        serde_json::from_str(event.records[0].body.as_deref().unwrap()).unwrap();
    let user = erased["user_id"].as_str().unwrap().to_owned();
    use login_etl::privacy::masking::{Masker, MaskingKey};
    let masker = Masker::new(&MaskingKey::from_hex(TEST_KEY, "test").unwrap());
    admin
        .execute(
            "INSERT INTO user_logins_erased (user_key, key_version) VALUES ($1, 1)",
            &[&masker.user_key(&user).as_str()],
        )
        .await
        .unwrap();
    let out = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .unwrap();
    assert!(failures(&out.response).is_empty());
    let theirs = count_rows_of(&admin, &user).await;
    assert_eq!(theirs, 0, "the erased user's login was not written");
    assert_eq!(count_rows(&admin).await, 40 * 25 + 9);

    // Never narrowed: asked for less, it stays full (a warning says so),
    // and a marker planted to say otherwise changes nothing either.
    migrate(&db.url, Some(Profile::Masking)).await.unwrap();
    assert_eq!(profile_of(&admin).await, "full");
    admin
        .batch_execute(&format!(
            "UPDATE user_logins_schema SET profile = 'masking'; \
             CREATE OR REPLACE FUNCTION {PROFILE_FUNCTION}() RETURNS text LANGUAGE sql AS $$ SELECT 'masking'::text $$"
        ))
        .await
        .unwrap();
    assert_eq!(
        login_etl::table::schema::profile(&admin).await.unwrap(),
        Profile::Full
    );
    migrate(&db.url, Some(Profile::Masking)).await.unwrap();
    let check_write: String = admin
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE proname = 'login_etl_check_write'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        check_write.contains("user_logins_erased"),
        "the full profile's check stays"
    );
}

/// The schema's version, profile and functions are what `migrate`
/// recorded in `user_logins_schema`, never a function's body: bodies
/// rewritten to say otherwise change neither (they are only no longer
/// their files', which `migrate` mends), an older version recorded is a
/// schema to migrate, and a masking-only database from before the record
/// (0.2.0's) stays masking-only when migrated.
#[tokio::test]
async fn the_schema_state_is_the_owners_record_and_no_function_body() {
    use login_etl::table::schema::{SCHEMA_VERSION, inspect};
    let db = TestDb::create().await;
    migrate(&db.url, Some(Profile::Masking)).await.unwrap();
    let admin = db.client().await;
    let fresh = inspect(&admin).await.unwrap();
    assert_eq!(
        (fresh.version, fresh.profile_found, fresh.functions),
        (SCHEMA_VERSION, Some(Profile::Masking), true)
    );
    assert!(fresh.is_current());

    // 0.2.0's markers rewritten: read by nobody of this version.
    admin
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION login_etl_schema_version() RETURNS integer \
             LANGUAGE sql IMMUTABLE AS $$ SELECT 999 $$; \
             CREATE OR REPLACE FUNCTION {PROFILE_FUNCTION}() RETURNS text \
             LANGUAGE sql IMMUTABLE AS $$ SELECT 'full'::text $$"
        ))
        .await
        .unwrap();
    let rewritten = inspect(&admin).await.unwrap();
    assert_eq!(
        (rewritten.version, rewritten.profile_found),
        (SCHEMA_VERSION, Some(Profile::Masking))
    );
    assert!(!rewritten.functions, "a body that is not its file's");
    assert!(migrate(&db.url, None).await.unwrap().contains("(applied)"));
    let mended = inspect(&admin).await.unwrap();
    assert!(mended.functions && mended.is_current());
    assert_eq!(profile_of(&admin).await, "masking", "its body made again");

    // An older version recorded: migrate applies the schema and records
    // this one.
    admin
        .batch_execute(&format!(
            "UPDATE user_logins_schema SET version = {}",
            SCHEMA_VERSION - 1
        ))
        .await
        .unwrap();
    let older = inspect(&admin).await.unwrap();
    assert_eq!(older.version, SCHEMA_VERSION - 1);
    assert!(!older.is_current());
    assert!(migrate(&db.url, None).await.unwrap().contains("(applied)"));
    assert_eq!(inspect(&admin).await.unwrap().version, SCHEMA_VERSION);

    // From before the record: no table. The owner's login_etl_profile()
    // and no table of the full profile say masking-only; migrate keeps it
    // so and records it.
    admin
        .batch_execute("DROP TABLE user_logins_schema")
        .await
        .unwrap();
    let before = inspect(&admin).await.unwrap();
    assert_eq!(
        (before.version, before.profile_found, before.functions),
        (0, Some(Profile::Masking), false)
    );
    assert_eq!(
        login_etl::table::schema::profile(&admin).await.unwrap(),
        Profile::Masking
    );
    assert!(migrate(&db.url, None).await.unwrap().contains("(applied)"));
    assert_eq!(full_only_objects(&admin).await, Vec::<String>::new());
    let recorded = state::read(&admin).await.unwrap().expect("recorded again");
    assert_eq!(
        (recorded.version, recorded.profile),
        (SCHEMA_VERSION, Some(Profile::Masking))
    );
}
