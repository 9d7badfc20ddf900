//! DB_SSLMODE against a throwaway PostgreSQL that accepts only TLS, with a CA
//! and a server certificate (DNS:localhost) generated for the test; the CA
//! bundle from a file (`DB_CA_BUNDLE`) and from a secret in moto's Secrets
//! Manager (`DB_CA_BUNDLE_SECRET_ID`, how the deployed function gets it).
//! One test: it sets process-wide AWS environment variables.

use crate::common;

use common::moto::start_moto;
use common::pg_server::{PASSWORD, PgServer, ServerOptions};
use common::*;
use login_etl::database::settings::DbConfig;
use login_etl::grants;
use login_etl::startup;
use login_etl::table::privileges::Role;
use login_etl::{Deadline, Outcome, SqsBatch};

/// A handler for `url`; it applies the schema (and so connects at build time)
/// only for the modes expected to connect.
async fn build(
    url: &str,
    mode: &str,
    bundle: Option<&str>,
) -> Result<login_etl::BatchHandler, String> {
    build_with(url, mode, bundle, &[]).await
}

/// [`build`] with more variables (`PGHOSTADDR`).
async fn build_with(
    url: &str,
    mode: &str,
    bundle: Option<&str>,
    more: &[(&str, &str)],
) -> Result<login_etl::BatchHandler, String> {
    let migrate = if mode == "disable" || bundle.is_some_and(|b| !b.ends_with("bundle.pem")) {
        "false"
    } else {
        "true"
    };
    let mut vars = vec![
        ("DATABASE_URL", url),
        ("MASKING_KEY", TEST_KEY),
        ("RUN_MIGRATIONS", migrate),
        ("DB_SSLMODE", mode),
    ];
    if let Some(b) = bundle {
        vars.push((
            if b.starts_with("arn:") {
                "DB_CA_BUNDLE_SECRET_ID"
            } else {
                "DB_CA_BUNDLE"
            },
            b,
        ));
    }
    vars.extend_from_slice(more);
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config =
        login_etl::Config::from_lookup(|k| map.get(k).cloned()).map_err(|e| e.to_string())?;
    startup::build(&config).await.map_err(|e| e.to_string())
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn ssl_modes_against_a_server_that_requires_tls() {
    let server = PgServer::start(ServerOptions {
        tls: true,
        password: true,
    });
    // The schema applied by the admin (over TLS); the function connects as
    // the ingest role of `login-etl grants`.
    let admin = format!(
        "{}?sslmode=require",
        server.url("127.0.0.1", Some(PASSWORD))
    );
    let db = DbConfig::from_lookup(&|k| (k == "DATABASE_URL").then(|| admin.clone())).unwrap();
    startup::migrate(&db, login_etl::Profile::Full)
        .await
        .expect("the admin migrates over TLS");
    server.psql(&format!(
        "CREATE ROLE login_etl_ingest LOGIN PASSWORD '{PASSWORD}'"
    ));
    server.psql(
        &grants::sql(
            Role::Ingest,
            "login_etl_ingest",
            "public",
            login_etl::Profile::Full,
        )
        .unwrap(),
    );
    let ingest = |host: &str| {
        with_user(
            &server.url(host, Some(PASSWORD)),
            &format!("login_etl_ingest:{PASSWORD}"),
        )
    };
    let both = server.dir.join("bundle.pem");
    // A bundle of several certificates, like the RDS global bundle.
    let bundle_text = std::fs::read_to_string(server.other_ca_file()).unwrap()
        + &std::fs::read_to_string(server.ca_file()).unwrap();
    std::fs::write(&both, bundle_text).unwrap();
    let both = both.to_str().unwrap();
    let localhost = ingest("localhost");
    let by_ip = ingest("127.0.0.1");
    let event = load_event("sqs-valid.json");

    // require: encrypted, certificate not checked.
    let h = build(&by_ip, "require", None)
        .await
        .expect("require connects");
    handle_all_ok(&h, &event).await;

    // verify-full with the CA in a multi-certificate bundle and the right host name.
    let h = build(&localhost, "verify-full", Some(both))
        .await
        .expect("verify-full connects");
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(
        summary.duplicates,
        event.records.len() as u64,
        "same server as the require case"
    );

    // verify-full, wrong host name (the certificate names only localhost).
    let err = build(&by_ip, "verify-full", Some(both))
        .await
        .err()
        .expect("wrong host name is refused");
    assert!(
        err.contains("IP address mismatch")
            && err.contains("the host name is the one the server's certificate names"),
        "{err}"
    );

    // verify-full, CA not trusted.
    let other = server.other_ca_file();
    let h = build(&localhost, "verify-full", Some(other.to_str().unwrap()))
        .await
        .unwrap();
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate verify failed") && err.contains("DB_CA_BUNDLE"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");

    // disable against a server that requires TLS.
    let h = build(&by_ip, "disable", None).await.unwrap();
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no encryption") && err.contains("DB_SSLMODE=verify-full"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");

    // A bundle that is not PEM is a clear configuration error.
    let junk = server.dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let err = build(&localhost, "verify-full", Some(junk.to_str().unwrap()))
        .await
        .err()
        .expect("junk bundle is refused");
    assert!(err.contains("DB_CA_BUNDLE"), "{err}");

    // The deployed function: the bundle from a secret (DbCaBundleSecretArn).
    let (_moto, port) = start_moto();
    common::set_process_env(&[
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]);
    let sm = aws_sdk_secretsmanager::Client::new(&login_etl::secrets::sdk_config().await);
    let mut arns = Vec::new();
    for (name, pem) in [
        ("rds-ca", std::fs::read_to_string(both).unwrap()),
        ("other-ca", std::fs::read_to_string(&other).unwrap()),
    ] {
        let out = sm
            .create_secret()
            .name(name)
            .secret_string(pem)
            .send()
            .await
            .unwrap();
        arns.push(out.arn.unwrap());
    }
    let h = build(&localhost, "verify-full", Some(&arns[0]))
        .await
        .expect("verify-full with the bundle from the secret connects");
    let (resp, summary) = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(Outcome::into_parts)
        .unwrap();
    assert!(resp.batch_item_failures.is_empty());
    assert_eq!(summary.duplicates, event.records.len() as u64);
    let h = build(&localhost, "verify-full", Some(&arns[1]))
        .await
        .unwrap();
    let err = h
        .handle(&SqsBatch::from(&event), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate verify failed") && err.contains("DB_CA_BUNDLE_SECRET_ID"),
        "{err}"
    );
}

/// verify-full by the host name: a direct RDS endpoint trusts the RDS CAs
/// built in, an RDS Proxy endpoint Amazon Trust Services' roots, neither
/// the system's; any other host the system's. The test CA is made a
/// system root (SSL_CERT_FILE, which OpenSSL reads for its default
/// roots); the certificate names localhost and the two RDS names, reached
/// at 127.0.0.1 (`hostaddr`). A bundle given is trusted beside the
/// built-in roots.
#[tokio::test]
#[ignore = "needs PostgreSQL's binaries and its own process (sets SSL_CERT_FILE); run by `make test`"]
async fn rds_names_trust_their_own_roots_not_the_systems() {
    let server = PgServer::start(ServerOptions {
        tls: true,
        password: true,
    });
    common::set_process_env(&[("SSL_CERT_FILE", server.ca_file().to_str().unwrap())]);
    let at = |host: &str| format!("{}?hostaddr=127.0.0.1", server.url(host, Some(PASSWORD)));
    build(&at("localhost"), "verify-full", None)
        .await
        .expect("another host: the system's roots (the test CA among them)");
    // (build connects, to migrate, with a file named *bundle.pem.)
    let given = server.dir.join("test-ca-bundle.pem");
    std::fs::copy(server.ca_file(), &given).unwrap();
    for (host, roots) in [
        (common::pg_server::RDS_HOST, "the RDS CAs built in"),
        (
            common::pg_server::RDS_PROXY_HOST,
            "Amazon Trust Services' roots built in",
        ),
    ] {
        let err = build(&at(host), "verify-full", None)
            .await
            .err()
            .unwrap_or_else(|| panic!("{host}: a certificate from a system root was taken"));
        assert!(
            err.contains("certificate verify failed") && err.contains(roots),
            "{host}: {err}"
        );
        assert!(!err.contains(PASSWORD), "{err}");
        // The bundle given is trusted beside them (a newer region's CA).
        build(&at(host), "verify-full", Some(given.to_str().unwrap()))
            .await
            .unwrap_or_else(|e| panic!("{host} with its CA given: {e}"));
    }
    // PGHOSTADDR, as libpq's: the address for a name nothing resolves
    // here, whatever the connection's source (a secret's host too), TLS
    // still checking the name.
    let rds = server.url(common::pg_server::RDS_HOST, Some(PASSWORD));
    let bundle = Some(given.to_str().unwrap());
    let unresolved = build(&rds, "verify-full", bundle).await.err();
    assert!(
        unresolved.is_some(),
        "the RDS name resolved here: this test needs it not to"
    );
    build_with(&rds, "verify-full", bundle, &[("PGHOSTADDR", "127.0.0.1")])
        .await
        .expect("PGHOSTADDR: connected at the address, the name's certificate checked");
    // Refused at start: no address, or no name for TLS to check (a
    // socket directory, or which of two hosts).
    for (url, addr, said) in [
        (rds.as_str(), "db.internal", "IP address"),
        (
            "postgres://postgres@%2Ftmp/postgres",
            "127.0.0.1",
            "socket directory",
        ),
        (
            "postgres://postgres@a.example,b.example/postgres",
            "127.0.0.1",
            "one address is for one host",
        ),
    ] {
        let err = build_with(url, "disable", None, &[("PGHOSTADDR", addr)])
            .await
            .err()
            .unwrap_or_else(|| panic!("{said}: PGHOSTADDR taken"));
        assert!(
            err.contains("PGHOSTADDR") && err.contains(said),
            "{said}: {err}"
        );
    }
}
