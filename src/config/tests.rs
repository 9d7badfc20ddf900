//! Unit tests of `config`, kept apart so that its source stays readable.

use super::*;
use crate::database::settings::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT};
use crate::database::settings::DbSource;
use crate::database::settings::SslMode;
use std::collections::HashMap;

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn local_settings_with_defaults() {
    let c = load(&[
        ("DATABASE_URL", "postgres://u:pw@h/db"),
        ("MASKING_KEY", "ab"),
    ])
    .unwrap();
    assert_eq!(c.db.source, DbSource::Url("postgres://u:pw@h/db".into()));
    assert_eq!(c.db.ssl_mode, SslMode::Disable);
    assert_eq!(c.db.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    assert_eq!(c.db.statement_timeout, DEFAULT_STATEMENT_TIMEOUT);
    assert_eq!(c.masking_key, KeySource::Hex("ab".into()));
    assert!(!c.run_migrations);
}

#[test]
fn database_url_wins_and_secrets_default_to_verify_full() {
    let c = load(&[
        ("DATABASE_URL", "postgres://h/db"),
        ("DB_SECRET_ID", "s"),
        ("MASKING_KEY_SECRET_ID", "k"),
    ])
    .unwrap();
    assert!(matches!(c.db.source, DbSource::Url(_)));
    let c = load(&[
        ("DB_SECRET_ID", "s"),
        ("MASKING_KEY_SECRET_ID", "k"),
        ("RUN_MIGRATIONS", "TRUE"),
    ])
    .unwrap();
    assert_eq!(c.db.source, DbSource::Secret("s".into()));
    assert_eq!(c.db.ssl_mode, SslMode::VerifyFull);
    assert_eq!(c.masking_key, KeySource::Secret("k".into()));
    assert!(c.run_migrations);
}

#[test]
fn errors_name_the_variable_and_never_the_value() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MASKING_KEY", "ab")], "DB_SECRET_ID"),
        (
            &[("DATABASE_URL", "postgres://h/db")],
            "MASKING_KEY_SECRET_ID",
        ),
        (
            &[
                ("DATABASE_URL", "x"),
                ("MASKING_KEY", "a"),
                ("MASKING_KEY_SECRET_ID", "b"),
            ],
            "MASKING_KEY_SECRET_ID",
        ),
        (
            &[
                ("DATABASE_URL", "x"),
                ("MASKING_KEY", "a"),
                ("DB_SSLMODE", "prefer-secret"),
            ],
            "DB_SSLMODE",
        ),
        (
            &[
                ("DATABASE_URL", "x"),
                ("MASKING_KEY", "a"),
                ("RUN_MIGRATIONS", "maybe-secret"),
            ],
            "RUN_MIGRATIONS",
        ),
        (
            &[
                ("DATABASE_URL", "x"),
                ("MASKING_KEY", "a"),
                ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ],
            "DB_STATEMENT_TIMEOUT_MS",
        ),
        (
            &[
                ("DATABASE_URL", "x"),
                ("MASKING_KEY", "a"),
                ("DB_CONNECT_TIMEOUT_MS", "soon-secret"),
            ],
            "DB_CONNECT_TIMEOUT_MS",
        ),
    ];
    for (pairs, var) in cases {
        let msg = load(pairs).unwrap_err().to_string();
        assert!(msg.contains(var), "{msg} should name {var}");
        assert!(!msg.contains("secret\""), "{msg}");
        assert!(
            !msg.contains("prefer-secret")
                && !msg.contains("maybe-secret")
                && !msg.contains("soon-secret")
        );
    }
}

#[test]
fn sslmode_in_database_url_is_honoured_or_refused_never_downgraded() {
    let mode = |url: &str, var: Option<&str>| {
        let mut pairs = vec![("DATABASE_URL", url), ("MASKING_KEY", "ab")];
        pairs.extend(var.map(|v| ("DB_SSLMODE", v)));
        load(&pairs).map(|c| (c.db.ssl_mode, c.db.source))
    };
    let (m, source) = mode("postgres://u@h/db?sslmode=require", None).unwrap();
    assert_eq!(m, SslMode::Require);
    assert_eq!(source, DbSource::Url("postgres://u@h/db".into()));
    let (m, source) = mode(
        "postgres://u@h/db?connect_timeout=3&sslmode=verify-full",
        None,
    )
    .unwrap();
    assert_eq!(m, SslMode::VerifyFull);
    assert_eq!(
        source,
        DbSource::Url("postgres://u@h/db?connect_timeout=3".into())
    );
    let (m, source) = mode("host=h user=u sslmode=require dbname=db", None).unwrap();
    assert_eq!(m, SslMode::Require);
    assert_eq!(source, DbSource::Url("host=h user=u dbname=db".into()));
    assert_eq!(mode("postgres://u@h/db", None).unwrap().0, SslMode::Disable);
    assert_eq!(
        mode("postgres://u@h/db?sslmode=require", Some("require"))
            .unwrap()
            .0,
        SslMode::Require
    );
    for (url, var, named) in [
        ("postgres://u@h/db?sslmode=prefer", None, "DATABASE_URL"),
        ("postgres://u@h/db?sslmode=allow", None, "DATABASE_URL"),
        (
            "postgres://u@h/db?sslmode=require",
            Some("disable"),
            "DB_SSLMODE",
        ),
    ] {
        let e = mode(url, var).unwrap_err().to_string();
        assert!(e.contains(named) && e.contains("sslmode"), "{e}");
    }
}

#[test]
fn backoff_is_on_under_lambda_or_when_set_and_validated() {
    use crate::config::backoff::Schedule;
    let base = [("DATABASE_URL", "postgres://u@h/d"), ("MASKING_KEY", "ab")];
    let with = |extra: &[(&str, &str)]| {
        let mut v = base.to_vec();
        v.extend_from_slice(extra);
        load(&v)
    };
    assert_eq!(
        with(&[]).unwrap().backoff,
        None,
        "a library call fails as before"
    );
    assert_eq!(
        with(&[("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")])
            .unwrap()
            .backoff,
        Some(Schedule::default())
    );
    assert_eq!(
        with(&[("BACKOFF_BASE_SECONDS", "2"), ("BACKOFF_MAX_SECONDS", "16")])
            .unwrap()
            .backoff,
        Some(Schedule { base: 2, max: 16 })
    );
    assert_eq!(
        with(&[
            ("AWS_LAMBDA_RUNTIME_API", "x"),
            ("BACKOFF_BASE_SECONDS", "0")
        ])
        .unwrap()
        .backoff,
        None
    );
    assert_eq!(
        with(&[
            ("BACKOFF_BASE_SECONDS", "60"),
            ("BACKOFF_MAX_SECONDS", "10")
        ])
        .unwrap()
        .backoff,
        Some(Schedule { base: 60, max: 60 }),
        "a cap below the base is raised to it, never a failed cold start"
    );
    assert_eq!(
        with(&[("BACKOFF_BASE_SECONDS", "3600")]).unwrap().backoff,
        Some(Schedule {
            base: 3600,
            max: 3600
        })
    );
    let e = with(&[("BACKOFF_MAX_SECONDS", "50000")]).unwrap_err();
    assert!(e.to_string().contains("43200"), "{e}");
    assert_eq!(with(&[]).unwrap().refused_max_receives, 3);
    assert_eq!(
        with(&[("REFUSED_MAX_RECEIVES", "0")])
            .unwrap()
            .refused_max_receives,
        0
    );
}

#[test]
fn debug_output_redacts_url_and_key() {
    let c = load(&[
        ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ("MASKING_KEY", "deadbeef"),
    ])
    .unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("hunter2") && !dbg.contains("deadbeef"),
        "{dbg}"
    );
}

#[test]
fn a_deployed_function_refuses_secrets_in_its_environment() {
    let deployed = [
        ("LAMBDA_TASK_ROOT", "/var/task"),
        ("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"),
        ("DB_SECRET_ID", "db"),
        ("MASKING_KEY_SECRET_ID", "k"),
    ];
    assert!(
        load(&deployed).is_ok(),
        "secrets by id are the deployed way"
    );
    for (var, value, instead) in [
        ("MASKING_KEY", "ab".repeat(32), "MASKING_KEY_SECRET_ID"),
        ("ERASURE_KEY", "cd".repeat(32), "ERASURE_KEY_SECRET_ID"),
        (
            "DATABASE_URL",
            "postgres://u:hunter2@h/db".to_owned(),
            "DB_SECRET_ID",
        ),
    ] {
        let mut pairs = deployed.to_vec();
        pairs.retain(|(k, _)| !(var == "MASKING_KEY" && *k == "MASKING_KEY_SECRET_ID"));
        pairs.push((var, &value));
        let e = load(&pairs)
            .err()
            .unwrap_or_else(|| panic!("{var} accepted"));
        let text = e.to_string();
        assert!(
            matches!(e, ConfigError::SecretInLambdaEnvironment { .. }),
            "{text}"
        );
        assert!(text.starts_with(var) && text.contains(instead), "{text}");
        assert!(
            !text.contains(&value) && !text.contains("hunter2"),
            "{text}"
        );
        // The same variables are fine where no Lambda runtime set
        // LAMBDA_TASK_ROOT: cargo lambda watch, the tests, login-etl poll.
        pairs.retain(|(k, _)| *k != "LAMBDA_TASK_ROOT");
        assert!(load(&pairs).is_ok(), "{var} outside Lambda");
    }
}
