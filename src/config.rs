//! Typed configuration read from the environment once per cold start.
//!
//! Every variable is documented in the README's configuration table. A missing
//! or malformed setting is a [`ConfigError`] naming the variable; values are
//! never echoed, since several are secrets.

use std::time::Duration;

use crate::error::ConfigError;

/// Where the PostgreSQL connection settings come from.
#[derive(Clone, PartialEq, Eq)]
pub enum DbSource {
    /// `DATABASE_URL`: a `postgres://` URL or `key=value` string (local use).
    Url(String),
    /// `DB_SECRET_ID`: a Secrets Manager id of an RDS-style JSON secret.
    Secret(String),
}

impl std::fmt::Debug for DbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbSource::Url(_) => f.write_str("Url(<redacted>)"),
            DbSource::Secret(id) => write!(f, "Secret({id})"),
        }
    }
}

/// Where the HMAC masking key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `MASKING_KEY`: the hex key itself (local use only).
    Hex(String),
    /// `MASKING_KEY_SECRET_ID`: a Secrets Manager id whose SecretString is the hex key.
    Secret(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Hex(_) => f.write_str("Hex(<redacted>)"),
            KeySource::Secret(id) => write!(f, "Secret({id})"),
        }
    }
}

/// `DB_SSLMODE`: how the connection to PostgreSQL is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS without certificate checks.
    Require,
    /// TLS, chain and host name checked.
    VerifyFull,
}

/// PostgreSQL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Where the connection settings come from.
    pub source: DbSource,
    /// `DB_SSLMODE`, default `disable` for `DATABASE_URL`, `verify-full` for `DB_SECRET_ID`.
    pub ssl_mode: SslMode,
    /// `DB_CA_BUNDLE`: PEM file of CAs to trust for `verify-full`.
    pub ca_bundle: Option<String>,
    /// `DB_CONNECT_TIMEOUT_MS`, default 5,000.
    pub connect_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS`, default 10,000; also bounds lock waits.
    pub statement_timeout: Duration,
}

/// Everything the function needs at cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// PostgreSQL settings.
    pub db: DbConfig,
    /// The masking key's source.
    pub masking_key: KeySource,
    /// `RUN_MIGRATIONS=true`: create/upgrade the schema at cold start.
    pub run_migrations: bool,
}

/// Default `DB_CONNECT_TIMEOUT_MS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Default `DB_STATEMENT_TIMEOUT_MS`: well under a typical 30 s function timeout,
/// leaving room for one reconnect and retry.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_millis(10_000);

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get` (the environment, or a map in tests).
    /// Empty values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        Ok(Self {
            db: DbConfig::from_lookup(&get)?,
            masking_key: match (get("MASKING_KEY"), get("MASKING_KEY_SECRET_ID")) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Conflict {
                        first: "MASKING_KEY",
                        second: "MASKING_KEY_SECRET_ID",
                    });
                }
                (Some(hex), None) => KeySource::Hex(hex),
                (None, Some(id)) => KeySource::Secret(id),
                (None, None) => {
                    return Err(ConfigError::Missing {
                        var: "MASKING_KEY_SECRET_ID",
                        hint: "set it to the Secrets Manager id of the hex masking key (or MASKING_KEY to a hex key, for local use); the function never writes unmasked data",
                    });
                }
            },
            run_migrations: parse_bool(&get, "RUN_MIGRATIONS")?.unwrap_or(false),
        })
    }
}

impl DbConfig {
    /// Reads only the database settings (enough for `login-etl migrate`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads only the database settings through `get`.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // DATABASE_URL wins so a developer can point a deployed config at a local server.
        let source = match (get("DATABASE_URL"), get("DB_SECRET_ID")) {
            (Some(url), _) => DbSource::Url(url),
            (None, Some(id)) => DbSource::Secret(id),
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "DB_SECRET_ID",
                    hint: "set it to the Secrets Manager id of the RDS-style database secret (or DATABASE_URL, for local use)",
                });
            }
        };
        let ssl_mode = match get("DB_SSLMODE").as_deref().map(str::trim) {
            None if matches!(source, DbSource::Secret(_)) => SslMode::VerifyFull,
            None | Some("disable") => SslMode::Disable,
            Some("require") => SslMode::Require,
            Some("verify-full") => SslMode::VerifyFull,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    var: "DB_SSLMODE",
                    reason: "expected one of disable, require, verify-full".into(),
                });
            }
        };
        Ok(Self {
            source,
            ssl_mode,
            ca_bundle: get("DB_CA_BUNDLE"),
            connect_timeout: parse_millis(get, "DB_CONNECT_TIMEOUT_MS")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            statement_timeout: parse_millis(get, "DB_STATEMENT_TIMEOUT_MS")?
                .unwrap_or(DEFAULT_STATEMENT_TIMEOUT),
        })
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<bool>, ConfigError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("true" | "1" | "yes") => Ok(Some(true)),
        Some("false" | "0" | "no") => Ok(Some(false)),
        Some(_) => Err(ConfigError::Invalid {
            var,
            reason: "expected true or false".into(),
        }),
    }
}

fn parse_millis(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<Duration>, ConfigError> {
    match get(var) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
            _ => Err(ConfigError::Invalid {
                var,
                reason: "expected a positive whole number of milliseconds".into(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
