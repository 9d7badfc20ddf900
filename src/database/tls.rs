//! TLS to PostgreSQL (`sslmode` and the CA bundle of
//! [`crate::database::settings`]) through native-tls. OpenSSL is vendored
//! (built into the binary), so the Lambda binary does not depend on the
//! libssl version of its image. A bundle's CAs are trusted beside the
//! system roots (the RDS CAs are in no OS trust store).

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;

use crate::database::settings::{CaBundle, DbConfig, SslMode};
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
    /// The connector for `db.ssl_mode`, trusting a CA bundle file (many
    /// PEM certificates, like the RDS bundles) in addition to the system
    /// roots. A bundle from a secret is read by the caller: see
    /// [`from_config_with_pem`](Self::from_config_with_pem).
    pub fn from_config(db: &DbConfig) -> Result<Self, ConfigError> {
        let pem = match &db.ca_bundle {
            Some(CaBundle::File { path, from }) if db.ssl_mode == SslMode::VerifyFull => Some((
                std::fs::read(path).map_err(|e| ConfigError::Invalid {
                    var: from,
                    reason: format!("cannot read the CA bundle {path}: {e}; for RDS, download the region's or the global bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem: docs/connecting.md, \"TLS to the database\") and give its path"),
                })?,
                format!("{from} file {path}"),
            )),
            _ => None,
        };
        Self::build(
            db.ssl_mode,
            pem.as_ref().map(|(p, o)| (p.as_slice(), o.as_str())),
        )
    }

    /// The connector for `db.ssl_mode`, trusting the PEM bundle read from
    /// the secret `DB_CA_BUNDLE_SECRET_ID` names.
    pub fn from_config_with_pem(
        db: &DbConfig,
        pem: &[u8],
        origin: &str,
    ) -> Result<Self, ConfigError> {
        Self::build(db.ssl_mode, Some((pem, origin)))
    }

    fn build(mode: SslMode, bundle: Option<(&[u8], &str)>) -> Result<Self, ConfigError> {
        let mut builder = TlsConnector::builder();
        match mode {
            SslMode::Disable => return Ok(Tls::Disabled),
            SslMode::Require => {
                builder
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyFull => {
                if let Some((pem, origin)) = bundle {
                    for cert in load_bundle(pem, origin)? {
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

fn load_bundle(pem: &[u8], origin: &str) -> Result<Vec<Certificate>, ConfigError> {
    let var = [
        "DB_CA_BUNDLE_SECRET_ID",
        "DB_CA_BUNDLE",
        "PGSSLROOTCERT",
        "DATABASE_URL",
    ]
    .into_iter()
    .find(|v| origin.starts_with(v) || origin.contains(v))
    .unwrap_or("DB_CA_BUNDLE");
    let invalid = |reason: String| ConfigError::Invalid { var, reason };
    let certs = Certificate::stack_from_pem(pem)
        .map_err(|e| invalid(format!("{origin} is not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(format!("{origin} holds no PEM certificate")));
    }
    Ok(certs)
}
