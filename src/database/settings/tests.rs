//! Unit tests of `settings`: libpq's precedence, each setting's variable
//! named in its error, never its value.

use super::*;
use std::collections::HashMap;

fn load(pairs: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    DbConfig::from_lookup(&|k| map.get(k).cloned())
}

fn pg(pairs: &[(&str, &str)]) -> tokio_postgres::Config {
    load(pairs).unwrap().pg_config().unwrap().unwrap()
}

fn hosts(pg: &tokio_postgres::Config) -> Vec<String> {
    pg.get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect()
}

/// psql's precedence: what the URL says wins, the `PG*` variables give
/// what it leaves out, the password comes from the URL, else PGPASSWORD,
/// else the password file.
#[test]
fn the_url_wins_and_the_pg_variables_fill_what_it_leaves_out() {
    let env = [
        ("PGHOST", "env-host"),
        ("PGPORT", "6543"),
        ("PGUSER", "env-user"),
        ("PGDATABASE", "env-db"),
        ("PGPASSWORD", "env-pw"),
    ];
    let with = |url: &str| {
        let mut pairs = env.to_vec();
        pairs.push(("DATABASE_URL", url));
        pg(&pairs)
    };
    let full = with("postgres://u:pw@h:5433/db");
    assert_eq!(hosts(&full), ["h"]);
    assert_eq!(full.get_ports(), [5433]);
    assert_eq!(
        (full.get_user(), full.get_dbname(), full.get_password()),
        (Some("u"), Some("db"), Some(&b"pw"[..]))
    );
    let bare = with("postgres:///");
    assert_eq!(hosts(&bare), ["env-host"]);
    assert_eq!(bare.get_ports(), [6543]);
    assert_eq!(
        (bare.get_user(), bare.get_dbname(), bare.get_password()),
        (Some("env-user"), Some("env-db"), Some(&b"env-pw"[..]))
    );
    // A host without a port: PGPORT, not tokio-postgres's 5432.
    assert_eq!(with("postgres://h/db").get_ports(), [6543]);
    assert_eq!(with("postgres://h:5432/db").get_ports(), [5432]);
    assert_eq!(with("postgres://[::1]/db").get_ports(), [6543]);
    assert_eq!(with("host=h dbname=db").get_ports(), [6543]);
    assert_eq!(with("host=h port=7 dbname=db").get_ports(), [7]);
    // Nothing but the variables, as psql takes them.
    let only = pg(&env);
    assert_eq!(
        (hosts(&only), only.get_user()),
        (vec!["env-host".to_owned()], Some("env-user"))
    );
    // The user is the database's default.
    let named = pg(&[("PGHOST", "h"), ("PGUSER", "alice")]);
    assert_eq!(named.get_dbname(), Some("alice"));
}

#[cfg(unix)]
#[test]
fn the_password_file_gives_what_the_url_and_pgpassword_do_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("login-etl-passfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgpass");
    std::fs::write(&file, "h:5432:db:u:from-file\n*:*:*:*:other\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = file.display().to_string();
    let from_file = pg(&[
        ("DATABASE_URL", "postgres://u@h:5432/db"),
        ("PGPASSFILE", &path),
    ]);
    assert_eq!(from_file.get_password(), Some(&b"from-file"[..]));
    let env_wins = pg(&[
        ("DATABASE_URL", "postgres://u@h:5432/db"),
        ("PGPASSFILE", &path),
        ("PGPASSWORD", "env"),
    ]);
    assert_eq!(env_wins.get_password(), Some(&b"env"[..]));
    let url_wins = pg(&[
        ("DATABASE_URL", "postgres://u:url@h:5432/db"),
        ("PGPASSWORD", "env"),
    ]);
    assert_eq!(url_wins.get_password(), Some(&b"url"[..]));
    // `passfile` in the URL; ~/.pgpass through HOME.
    let other = dir.join("other");
    std::fs::write(&other, "*:*:*:*:via-url\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = format!("postgres://u@h:5432/db?passfile={}", other.display());
    assert_eq!(
        pg(&[("DATABASE_URL", &url)]).get_password(),
        Some(&b"via-url"[..])
    );
    std::fs::copy(&file, dir.join(".pgpass")).unwrap();
    std::fs::set_permissions(dir.join(".pgpass"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = dir.display().to_string();
    let at_home = pg(&[("DATABASE_URL", "postgres://u@h:5432/db"), ("HOME", &home)]);
    assert_eq!(at_home.get_password(), Some(&b"from-file"[..]));
    // With IAM the token is made per connection: no password at all.
    let iam = pg(&[
        ("DATABASE_URL", "postgres://u@h:5432/db?sslmode=verify-full"),
        ("HOME", &home),
        ("DB_AUTH", "iam"),
    ]);
    assert_eq!(iam.get_password(), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sslmode_and_the_ca_bundle_follow_libpqs_order() {
    let mode = |pairs: &[(&str, &str)]| load(pairs).map(|c| (c.ssl_mode, c.ca_bundle));
    let url = (
        "DATABASE_URL",
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca/url.pem",
    );
    let (m, ca) = mode(&[
        url,
        ("PGSSLMODE", "disable"),
        ("PGSSLROOTCERT", "/ca/env.pem"),
    ])
    .unwrap();
    assert_eq!(m, SslMode::VerifyFull);
    assert_eq!(
        ca,
        Some(CaBundle::File {
            path: "/ca/url.pem".into(),
            from: "sslrootcert in DATABASE_URL"
        })
    );
    let (m, ca) = mode(&[
        ("DATABASE_URL", "postgres://u@h/db"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", "/ca/env.pem"),
    ])
    .unwrap();
    assert_eq!(m, SslMode::VerifyFull);
    assert!(matches!(
        ca,
        Some(CaBundle::File {
            from: "PGSSLROOTCERT",
            ..
        })
    ));
    let (m, ca) = mode(&[
        ("DATABASE_URL", "postgres://u@h/db"),
        ("DB_SSLMODE", "require"),
        ("PGSSLMODE", "verify-full"),
        ("DB_CA_BUNDLE", "rds.pem"),
        ("PGSSLROOTCERT", "/ca/env.pem"),
        ("LAMBDA_TASK_ROOT", "/var/task"),
    ])
    .unwrap();
    assert_eq!(m, SslMode::Require);
    assert_eq!(
        ca,
        Some(CaBundle::File {
            path: "/var/task/rds.pem".into(),
            from: "DB_CA_BUNDLE"
        }),
        "a relative path in Lambda is beside bootstrap"
    );
    let e = mode(&[
        ("DATABASE_URL", "postgres://u@h/db"),
        ("PGSSLMODE", "prefer"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("PGSSLMODE") && e.contains("prefer"), "{e}");
    // IAM sends its token as a password: verified TLS only.
    let e = mode(&[
        ("DATABASE_URL", "postgres://u@h/db?sslmode=require"),
        ("DB_AUTH", "iam"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("DB_AUTH") && e.contains("verify-full"), "{e}");
    let (m, _) = mode(&[("PGHOST", "h"), ("DB_AUTH", "iam")]).unwrap();
    assert_eq!(m, SslMode::VerifyFull, "verify-full by default with IAM");
    assert!(mode(&[("PGHOST", "h"), ("DB_AUTH", "kerberos")]).is_err());
}

#[test]
fn nothing_to_connect_to_names_every_way_to_say_it() {
    let e = load(&[]).unwrap_err().to_string();
    for named in ["DB_SECRET_ID", "DATABASE_URL", "PGHOST", "pgpass"] {
        assert!(e.contains(named), "{e}");
    }
    let e = load(&[("PGHOST", "h"), ("PGPORT", "fifty")])
        .unwrap()
        .pg_config()
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("PGPORT") && !e.contains("fifty"), "{e}");
    let e = load(&[("DATABASE_URL", "postgres://u:hunter2@h/db?bogus=1")])
        .unwrap()
        .pg_config()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("DATABASE_URL") && !e.contains("hunter2"),
        "{e}"
    );
    let dbg = format!(
        "{:?}",
        load(&[
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ("PGPASSWORD", "hunter3")
        ])
        .unwrap()
    );
    assert!(!dbg.contains("hunter"), "{dbg}");
}

#[test]
fn a_connect_address_overrides_the_secrets_but_never_with_iam_or_a_bad_port() {
    let with = |more: &[(&str, &str)]| {
        let mut vars = vec![("DB_SECRET_ID", "login-etl/ingest")];
        vars.extend_from_slice(more);
        load(&vars)
    };
    assert_eq!(with(&[]).unwrap().connect_to, (None, None));
    let at = with(&[("DB_CONNECT_HOST", " db.internal "), ("DB_CONNECT_PORT", "6432")]);
    assert_eq!(at.unwrap().connect_to, (Some("db.internal".into()), Some(6432)));
    let iam = with(&[("DB_AUTH", "iam"), ("DB_CONNECT_HOST", "localhost")]);
    assert!(
        matches!(iam, Err(ConfigError::Invalid { var: "DB_CONNECT_HOST", .. })),
        "{iam:?}"
    );
    for bad in ["0", "+5432", "70000", "x"] {
        let port = with(&[("DB_CONNECT_PORT", bad)]);
        assert!(
            matches!(port, Err(ConfigError::Invalid { var: "DB_CONNECT_PORT", .. })),
            "{bad}"
        );
    }
}
