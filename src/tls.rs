//! TLS to PostgreSQL (`DB_SSLMODE`, `DB_CA_BUNDLE`) through native-tls.
//! OpenSSL is vendored (built into the binary), so the Lambda binary does not
//! depend on the libssl version of its image.

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;

use crate::config::{DbConfig, SslMode};
use crate::error::ConfigError;

/// How connections are made.
#[derive(Clone)]
pub enum Tls {
    /// Plain TCP (`disable`).
    Disabled,
    /// TLS (`require`: encrypted, unchecked; `verify-full`: chain and host name checked).
    Native(MakeTlsConnector),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Disabled => "Tls::Disabled",
            Tls::Native(_) => "Tls::Native",
        })
    }
}

impl Tls {
    /// The connector for `db.ssl_mode`, trusting `db.ca_bundle` (many PEM
    /// certificates, like the RDS global bundle) in addition to the system roots.
    pub fn from_config(db: &DbConfig) -> Result<Self, ConfigError> {
        let mut builder = TlsConnector::builder();
        match db.ssl_mode {
            SslMode::Disable => return Ok(Tls::Disabled),
            SslMode::Require => {
                builder
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyFull => {
                if let Some(path) = &db.ca_bundle {
                    for cert in load_bundle(path)? {
                        builder.add_root_certificate(cert);
                    }
                }
            }
        }
        let connector = builder.build().map_err(|e| ConfigError::Invalid {
            var: "DB_SSLMODE",
            reason: format!("cannot set up TLS: {e}"),
        })?;
        Ok(Tls::Native(MakeTlsConnector::new(connector)))
    }

    /// The `sslmode` the PostgreSQL client must insist on.
    pub fn pg_ssl_mode(&self) -> tokio_postgres::config::SslMode {
        match self {
            Tls::Disabled => tokio_postgres::config::SslMode::Disable,
            Tls::Native(_) => tokio_postgres::config::SslMode::Require,
        }
    }
}

fn load_bundle(path: &str) -> Result<Vec<Certificate>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "DB_CA_BUNDLE",
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
    let certs = Certificate::stack_from_pem(&pem)
        .map_err(|e| invalid(format!("{path} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!("{path} holds no PEM certificate")));
    }
    Ok(certs)
}
