//! RDS IAM database authentication (`DB_AUTH=iam`) against a throwaway
//! server that takes only passwords over TLS: a role whose password is set
//! to the token login-etl signs for it (at the test's clock) logs in over
//! TLS, the same token over plain TCP is refused, and the next connection a
//! minute later carries a new token (the old one no longer opens). The
//! token itself is botocore's (tests/test_iam_token.py compares them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use login_etl::database::connector::Connector;
use login_etl::database::iam;
use login_etl::database::settings::DbConfig;
use postgres_protocol::escape::{escape_identifier, escape_literal};

use crate::common::pg_server::{PgServer, ServerOptions};

/// The signer's clock: seconds since the epoch, moved by the test.
static NOW: AtomicU64 = AtomicU64::new(1_704_164_645);

fn clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW.load(Ordering::SeqCst))
}

const USER: &str = "iam@user";
const REGION: &str = "eu-west-1";

fn credentials() -> Credentials {
    Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "test",
    )
}

fn expected_token(port: u16) -> String {
    iam::token("localhost", port, USER, REGION, credentials(), clock())
        .unwrap()
        .to_string()
}

fn set_password(server: &PgServer, password: &str) {
    server.psql(&format!(
        "ALTER ROLE {} PASSWORD {}",
        escape_identifier(USER),
        escape_literal(password)
    ));
}

fn settings(server: &PgServer, sslmode: &str) -> Result<DbConfig, String> {
    let port = server.port.to_string();
    let ca = server.ca_file().display().to_string();
    DbConfig::from_lookup(&|k| {
        Some(match k {
            "DB_AUTH" => "iam".to_owned(),
            "PGHOST" => "localhost".to_owned(),
            "PGPORT" => port.clone(),
            "PGUSER" => USER.to_owned(),
            "PGDATABASE" => "postgres".to_owned(),
            "PGSSLMODE" => sslmode.to_owned(),
            "PGSSLROOTCERT" => ca.clone(),
            _ => return None,
        })
    })
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_role_logs_in_over_tls_with_a_fresh_token_per_connection() {
    let server = PgServer::start(ServerOptions {
        tls: true,
        password: true,
    });
    server.psql(&format!("CREATE ROLE {} LOGIN", escape_identifier(USER)));
    let aws = aws_config::SdkConfig::builder()
        .region(aws_config::Region::new(REGION))
        .credentials_provider(SharedCredentialsProvider::new(credentials()))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    let first = expected_token(server.port);
    set_password(&server, &first);

    let db = settings(&server, "verify-full").unwrap();
    let mut connector = Connector::from_config(&db, Some(&aws))
        .await
        .unwrap()
        .with_token_clock(clock);
    let client = connector
        .open(Duration::from_secs(10))
        .await
        .expect("the token signed for localhost:port and the role logs in over TLS");
    let row = client
        .query_one(
            "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), USER);
    assert!(row.get::<_, bool>(1), "over TLS");

    // The same token over plain TCP: the server has no line for it, and
    // login-etl refuses IAM without verify-full before it connects.
    let plain = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(server.port)
        .user(USER)
        .password(first.as_bytes())
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("no plain TCP login");
    assert_eq!(plain.code().map(|c| c.code()), Some("28000"), "{plain}");
    for mode in ["disable", "require"] {
        let refused = settings(&server, mode).expect_err("IAM without verify-full");
        assert!(refused.contains("verify-full"), "{refused}");
    }

    // A minute later: the next connection signs a new token.
    NOW.fetch_add(60, Ordering::SeqCst);
    let second = expected_token(server.port);
    assert_ne!(first, second, "a new token");
    set_password(&server, &second);
    connector
        .open(Duration::from_secs(10))
        .await
        .expect("the next connection carries the new token");
    let stale = tokio_postgres::Config::new()
        .host("localhost")
        .port(server.port)
        .user(USER)
        .password(first.as_bytes())
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("the old token opens nothing");
    assert!(stale.code().is_some(), "{stale}");

    // A token the server does not take (the role's IAM grant or the
    // function's rds-db:connect missing): one fresh retry, then the hint.
    set_password(&server, "not-a-token");
    let refused = connector
        .open(Duration::from_secs(10))
        .await
        .expect_err("a refused token")
        .to_string();
    for named in [
        "rds_iam",
        "rds-db:connect",
        &format!("localhost:{}", server.port),
    ] {
        assert!(refused.contains(named), "{named} in: {refused}");
    }
    assert!(
        !refused.contains("X-Amz-Signature"),
        "no token in errors: {refused}"
    );
}
