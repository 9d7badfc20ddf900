//! doctor's `replication` check against a real primary and its streaming
//! standby (throwaway servers of their own): what the function's "exactly
//! once" assumes of the database (docs/semantics.md, "Assumptions").

use crate::common::pg_server::{PgServer, ServerOptions};
use crate::common::{apply_schema, connect};
use chrono::Utc;
use login_etl::table::doctor::{Finding, examine};
use tokio_postgres::Client;

async fn replication_finding(client: &Client) -> Option<Finding> {
    let report = examine(
        client,
        Utc::now().date_naive(),
        None,
        login_etl::table::maintain::DEFAULT_PREMAKE_DAYS,
    )
    .await
    .unwrap();
    assert!(report.checks.contains(&"replication"), "{report:?}");
    report
        .findings
        .into_iter()
        .find(|f| f.check == "replication")
}

/// What the primary says of its standbys and settings, for a failure's text.
async fn replication_seen(primary: &Client) -> String {
    let rows = primary
        .query(
            "SELECT format('%s %s %s %s', r.pid, r.state, r.sync_state, r.application_name) \
             FROM pg_stat_replication r UNION ALL \
             SELECT format('names %L, commit %s', current_setting('synchronous_standby_names'), \
                           current_setting('synchronous_commit'))",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits until the primary sees its standby as `state` (`async`, `sync`).
async fn standby_is(primary: &Client, state: &str) {
    for _ in 0..150 {
        let n: i64 = primary
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = $1",
                &[&state],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("the standby never became {state}");
}

/// An asynchronous standby is named, with the setting that mends it; a
/// `synchronous_standby_names` that names no standby is as asynchronous;
/// one that names it passes; a role that may not read the standbys' state
/// is judged by the settings; and doctor run against the standby itself
/// says it is one.
#[tokio::test]
async fn doctor_names_an_asynchronous_standby_and_passes_a_synchronous_one() {
    let primary = PgServer::start(ServerOptions::default());
    let admin = connect(&primary.url("127.0.0.1", None)).await;
    apply_schema(&admin).await;
    let standby = PgServer::start_standby_of(&primary);
    standby_is(&admin, "async").await;

    let found = replication_finding(&admin)
        .await
        .expect("asynchronous: named");
    assert!(
        found
            .problem
            .contains("1 standby(s) replicate asynchronously"),
        "{}",
        found.problem
    );
    assert!(
        found.fix.contains("synchronous_standby_names"),
        "{}",
        found.fix
    );

    let names = |value: &'static str| {
        let admin = &admin;
        async move {
            let set = format!("ALTER SYSTEM SET synchronous_standby_names = '{value}'");
            admin.batch_execute(&set).await.unwrap();
            admin
                .batch_execute("SELECT pg_reload_conf()")
                .await
                .unwrap();
        }
    };
    // Names that match no standby: still asynchronous (and commits would wait).
    names("nobody").await;
    // The reload reaches this session at its next statement, and each
    // walsender at its own pace: wait until doctor sees what the setting
    // makes (as standby_is does), not for a time.
    let mut found = None;
    for _ in 0..150 {
        found = replication_finding(&admin).await;
        if found
            .as_ref()
            .is_some_and(|f| f.problem.contains("names none of them"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let found = found.map(|f| f.problem);
    assert!(
        found
            .as_ref()
            .is_some_and(|p| p.contains("names none of them")),
        "no standby is waited for, and doctor said {found:?} of {}",
        replication_seen(&admin).await
    );

    names("walreceiver").await;
    standby_is(&admin, "sync").await;
    assert_eq!(
        replication_finding(&admin).await,
        None,
        "synchronous: nothing to mend"
    );

    // A role without pg_read_all_stats sees no sync_state: the settings
    // decide. It runs doctor as the tables' owner's member, as the
    // migrate role (their owner) would, without being a superuser.
    admin
        .batch_execute("CREATE ROLE doctor_reader LOGIN IN ROLE postgres")
        .await
        .unwrap();
    let reader = connect(
        &primary
            .url("127.0.0.1", None)
            .replace("://postgres@", "://doctor_reader@"),
    )
    .await;
    let seen: (i64, i64) = reader
        .query_one(
            "SELECT count(pid), count(sync_state) FROM pg_stat_replication",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(seen, (1, 0), "the standby, its state hidden");
    assert_eq!(
        replication_finding(&reader).await,
        None,
        "names set, commit on"
    );

    let on_standby = connect(&standby.url("127.0.0.1", None)).await;
    let found = replication_finding(&on_standby)
        .await
        .expect("a standby: named");
    assert!(
        found.problem.contains("standby (read-only)"),
        "{}",
        found.problem
    );
    // Back to asynchronous before the servers stop (nothing waits on a gone standby).
    names("").await;
}
