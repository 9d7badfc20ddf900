//! Secrets Manager at cold start and on password rotation, against moto's
//! Secrets Manager on 127.0.0.1 and a throwaway password-protected PostgreSQL.
//! One sequential test: it sets process-wide AWS environment variables.

use crate::common;

use aws_sdk_secretsmanager::Client;
use common::moto::start_moto;
use common::pg_server::{PASSWORD, PgServer, ServerOptions};
use common::*;
use login_etl::{Config, Deadline, SqsBatch, startup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn set_endpoint(url: &str) {
    common::set_process_env(&[("AWS_ENDPOINT_URL", url)]);
}

async fn build(vars: &[(&str, &str)]) -> Result<login_etl::BatchHandler, String> {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_lookup(|k| map.get(k).cloned()).map_err(|e| e.to_string())?;
    startup::build(&config).await.map_err(|e| e.to_string())
}

/// An endpoint that answers every call like Secrets Manager does when IAM denies it.
async fn access_denied_endpoint() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let body = r#"{"__type":"AccessDeniedException","Message":"User: arn:aws:sts::000000000000:assumed-role/login-etl is not authorized to perform: secretsmanager:GetSecretValue"}"#;
                let resp = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-ErrorType: AccessDeniedException\r\nx-amzn-RequestId: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
#[ignore = "needs moto_server on PATH or in MOTO_SERVER; run by `make test`"]
async fn secrets_at_cold_start_and_on_password_rotation() {
    common::set_process_env(&[
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    let (_moto, port) = start_moto();
    set_endpoint(&format!("http://127.0.0.1:{port}"));
    let sm = Client::new(&login_etl::secrets::sdk_config().await);
    let server = PgServer::start(ServerOptions {
        tls: false,
        password: true,
    });
    let put = |name: &'static str, value: String| {
        let sm = sm.clone();
        async move {
            sm.create_secret()
                .name(name)
                .secret_string(value)
                .send()
                .await
                .expect("create secret in moto");
        }
    };
    let db_secret = |pw: &str| {
        format!(
            r#"{{"engine":"postgres","username":"login_etl_ingest","password":"{pw}","host":"127.0.0.1","port":{},"dbname":"postgres"}}"#,
            server.port
        )
    };
    let key_hex = "a1".repeat(32);
    // The admin migrates; the secret holds the ingest role of `login-etl grants`.
    ingest_role_on(
        &server.url("127.0.0.1", Some(PASSWORD)),
        "login_etl_ingest",
        Some(PASSWORD),
    )
    .await;
    put("prod/login-etl/db", db_secret(PASSWORD)).await;
    put("prod/login-etl/masking-key", key_hex.clone()).await;
    put("bad/not-json", "host=127.0.0.1 password=hunter2".into()).await;
    put(
        "bad/no-host",
        r#"{"username":"postgres","password":"hunter2","port":5432}"#.into(),
    )
    .await;
    put("bad/short-key", "abcd".into()).await;

    let good = [
        ("DB_SECRET_ID", "prod/login-etl/db"),
        ("MASKING_KEY_SECRET_ID", "prod/login-etl/masking-key"),
        ("DB_SSLMODE", "disable"),
    ];

    // Both secrets read at cold start; rows masked with the key from Secrets Manager.
    let h = build(&good).await.expect("cold start with secrets");
    let event = load_event("sqs-valid.json");
    handle_all_ok(&h, &event).await;
    let client = connect(&server.url("127.0.0.1", Some(PASSWORD))).await;
    assert_eq!(count_rows(&client).await, event.records.len() as i64);
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM user_logins WHERE masked_ip = $1",
            &[&hmac_hex(&key_hex, "199.172.111.135")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "masked with the key read back from Secrets Manager");

    // Rotation: new password in PostgreSQL and in the secret, connections dropped.
    server.psql("ALTER USER login_etl_ingest PASSWORD 'rotated-pw-2'");
    sm.put_secret_value()
        .secret_id("prod/login-etl/db")
        .secret_string(db_secret("rotated-pw-2"))
        .send()
        .await
        .unwrap();
    server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'login-etl'");
    let second = login_etl::synth::event(&login_etl::synth::Options {
        count: 5,
        seed: 99,
        ..Default::default()
    });
    assert!(
        h.handle(&SqsBatch::from(&second), Deadline::NONE)
            .await
            .map(|o| o.response)
            .expect("refetches the secret and reconnects")
            .batch_item_failures
            .is_empty()
    );
    assert_eq!(count_rows(&client).await, event.records.len() as i64 + 5);

    // Rotated in PostgreSQL but not in the secret: a clear error, no password in it.
    server.psql("ALTER USER login_etl_ingest PASSWORD 'rotated-pw-3'");
    server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'login-etl'");
    let err = h
        .handle(&SqsBatch::from(&second), Deadline::NONE)
        .await
        .map(|o| o.response)
        .unwrap_err();
    assert!(!err.is_retryable(), "a wrong password needs a human: {err}");
    let err = err.to_string();
    assert!(
        err.contains("28P01") && err.contains("update the database secret"),
        "{err}"
    );
    assert!(
        !err.contains("rotated-pw") && !err.contains(PASSWORD),
        "{err}"
    );

    // Startup errors name the secret and the problem, never the value.
    let cases: [(&str, &str, &str); 4] = [
        ("DB_SECRET_ID", "prod/nope", "was not found"),
        ("DB_SECRET_ID", "bad/not-json", "is not JSON"),
        ("DB_SECRET_ID", "bad/no-host", "no usable `host`"),
        ("MASKING_KEY_SECRET_ID", "bad/short-key", "at least 32"),
    ];
    for (var, id, want) in cases {
        let mut vars = good.to_vec();
        vars.retain(|(k, _)| *k != var);
        vars.push((var, id));
        let err = build(&vars)
            .await
            .err()
            .unwrap_or_else(|| panic!("{id} must fail"));
        assert!(err.contains(want) && err.contains(id), "{id}: {err}");
        assert!(!err.contains("hunter2") && !err.contains("abcd"), "{err}");
    }

    // Access denied (IAM), as Secrets Manager reports it.
    set_endpoint(&format!(
        "http://127.0.0.1:{}",
        access_denied_endpoint().await
    ));
    let err = build(&good).await.err().expect("denied");
    assert!(
        err.contains("denied") && err.contains("secretsmanager:GetSecretValue"),
        "{err}"
    );

    // Secrets Manager unreachable (connection refused), or accepting the
    // connection and never answering: a clear error within the fetch bound
    // (both secrets are fetched at once, so one bound covers both).
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_port = hanging.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holder = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = hanging.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        }
    });
    // The hanging one ends by the client's own bound, as its error says,
    // after at most its attempts (two per secret, both secrets at once):
    // the wait observed by what the endpoint saw, no clock read here.
    for (port, cause) in [(closed_port(), "refused"), (hanging_port, "occurred after")] {
        set_endpoint(&format!("http://127.0.0.1:{port}"));
        let err = build(&good).await.err().expect("unreachable");
        assert!(err.contains("cannot reach Secrets Manager"), "{err}");
        assert!(err.to_lowercase().contains(cause), "{cause}: {err}");
    }
    let attempts = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=4).contains(&attempts),
        "{attempts} connections to the silent endpoint"
    );
    holder.abort();
}
