//! TLS to PostgreSQL (`sslmode` and the CA bundle of
//! [`crate::database::settings`]) through native-tls. OpenSSL is vendored
//! (built into the binary), so the Lambda binary does not depend on the
//! libssl version of its image.
//!
//! Under `verify-full` the roots a certificate may chain to follow the
//! host name ([`Roots`]): a direct RDS or Aurora endpoint trusts the RDS
//! CAs alone (built in, [`RDS_CA_BUNDLE`]), an RDS Proxy endpoint Amazon
//! Trust Services' roots alone ([`AMAZON_TRUST_ROOTS`]), any other host the
//! system's roots. A bundle given (`DB_CA_BUNDLE`, its secret,
//! `PGSSLROOTCERT`) is trusted beside them: a region newer than the
//! built-in bundle, a server of one's own.

use std::sync::{Arc, OnceLock};

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;

use crate::database::settings::{CaBundle, DbConfig, SslMode};
use crate::error::ConfigError;

/// The RDS CAs (`global-bundle.pem` as RDS publishes it): each one's
/// SHA-256 fingerprint and expiry are listed in docs/connecting.md, and a
/// test holds the two equal.
pub const RDS_CA_BUNDLE: &[u8] = include_bytes!("ca/rds-global-bundle.pem");

/// Amazon Trust Services' roots (Amazon Root CA 1 to 4, Starfield
/// Services Root G2), which RDS Proxy's certificates chain to.
pub const AMAZON_TRUST_ROOTS: &[u8] = include_bytes!("ca/amazon-trust-services.pem");

/// The certificate of [`RDS_CA_BUNDLE`] that expires first, and when
/// (tests/test_docs.py holds it to the bundle): what `doctor` names.
pub const RDS_CA_FIRST_EXPIRING: (&str, &str) = ("Amazon RDS Beta us-east-1 Root CA RSA2048 G1", "2061-05-18");

/// The certificate of [`AMAZON_TRUST_ROOTS`] that expires first, and when
/// (tests/test_docs.py holds it to the file).
pub const AMAZON_TRUST_FIRST_EXPIRING: (&str, &str) =
    ("Starfield Services Root Certificate Authority - G2", "2037-12-31");

/// Which roots a server's certificate may chain to, by its host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roots {
    /// A direct RDS or Aurora endpoint (`*.rds.amazonaws.com`, and the
    /// China partition's `*.rds.amazonaws.com.cn`): the RDS CAs.
    Rds,
    /// An RDS Proxy endpoint (a `proxy-*` label under an RDS domain):
    /// Amazon Trust Services' roots.
    RdsProxy,
    /// Any other host: the system's roots.
    System,
}

impl Roots {
    /// The roots for a certificate naming `host`.
    pub fn of(host: &str) -> Self {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let Some(name) = [".rds.amazonaws.com.cn", ".rds.amazonaws.com"]
            .iter()
            .find_map(|domain| host.strip_suffix(domain))
        else {
            return Roots::System;
        };
        // `<name>.proxy-<id>.<region>` (a proxy's custom endpoint:
        // `<endpoint>.endpoint.proxy-<id>.<region>`): the label before the
        // region, not the first (an instance may be named `proxy-db`).
        let labels: Vec<&str> = name.split('.').collect();
        match labels.len().checked_sub(2).map(|i| labels[i]) {
            Some(label) if label.starts_with("proxy-") && labels.len() > 2 => Roots::RdsProxy,
            _ => Roots::Rds,
        }
    }

    /// The built-in certificate of these roots that expires first, and
    /// its date (`YYYY-MM-DD`); none for the system's roots.
    pub fn first_expiring(self) -> Option<(&'static str, &'static str)> {
        match self {
            Roots::Rds => Some(RDS_CA_FIRST_EXPIRING),
            Roots::RdsProxy => Some(AMAZON_TRUST_FIRST_EXPIRING),
            Roots::System => None,
        }
    }

    /// What these roots are, for a TLS failure's hint.
    pub fn describe(self) -> &'static str {
        match self {
            Roots::Rds => "the RDS CAs built in (a direct RDS or Aurora endpoint: no system root)",
            Roots::RdsProxy => {
                "Amazon Trust Services' roots built in (an RDS Proxy endpoint: no other root)"
            }
            Roots::System => "the system's roots",
        }
    }
}

/// How connections are made.
#[derive(Clone)]
pub enum Tls {
    /// Plain TCP (`disable`).
    Disabled,
    /// TLS (`require`: encrypted, unchecked; `verify-full`: chain and host
    /// name checked, against the roots of the host connected to).
    Native(Arc<Connectors>),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Disabled => "Tls::Disabled",
            Tls::Native(_) => "Tls::Native",
        })
    }
}

/// The TLS connectors of one setting, one per [`Roots`], each made when a
/// host first needs it (the RDS bundle is 102 certificates to parse).
pub struct Connectors {
    mode: SslMode,
    /// The bundle given, parsed once.
    given: Vec<Certificate>,
    made: [OnceLock<MakeTlsConnector>; 3],
}

impl Connectors {
    /// The connector for a server named `host`, made on its first use
    /// (`Connector::from_config` asks for the configured host's at start,
    /// so that a TLS set-up that cannot work fails there).
    pub fn for_host(&self, host: &str) -> Result<MakeTlsConnector, String> {
        let roots = match self.mode {
            SslMode::VerifyFull => Roots::of(host),
            _ => Roots::System,
        };
        let slot = &self.made[roots as usize];
        if let Some(made) = slot.get() {
            return Ok(made.clone());
        }
        let made = self
            .make(roots)
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        Ok(slot.get_or_init(|| made).clone())
    }

    fn make(&self, roots: Roots) -> Result<MakeTlsConnector, native_tls::Error> {
        let mut builder = TlsConnector::builder();
        if self.mode == SslMode::Require {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
        }
        let built_in = match roots {
            Roots::Rds => Some(RDS_CA_BUNDLE),
            Roots::RdsProxy => Some(AMAZON_TRUST_ROOTS),
            Roots::System => None,
        };
        if let Some(pem) = built_in {
            builder.disable_built_in_roots(true);
            for cert in Certificate::stack_from_pem(pem)? {
                builder.add_root_certificate(cert);
            }
        }
        for cert in &self.given {
            builder.add_root_certificate(cert.clone());
        }
        Ok(MakeTlsConnector::new(builder.build()?))
    }
}

impl Tls {
    /// The connectors for `db.ssl_mode`, trusting a CA bundle file (many
    /// PEM certificates, like the RDS bundles) beside the host's roots. A
    /// bundle from a secret is read by the caller: see
    /// [`from_config_with_pem`](Self::from_config_with_pem).
    pub fn from_config(db: &DbConfig) -> Result<Self, ConfigError> {
        let pem = match &db.ca_bundle {
            Some(CaBundle::File { path, from }) if db.ssl_mode == SslMode::VerifyFull => Some((
                std::fs::read(path).map_err(|e| ConfigError::Invalid {
                    var: from,
                    reason: format!("cannot read the CA bundle {path}: {e}; a direct RDS or Aurora endpoint needs none (the RDS CAs are built in): give a path only for another server's CA (docs/connecting.md, \"TLS to the database\")"),
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

    /// The connectors for `db.ssl_mode`, trusting the PEM bundle read from
    /// the secret `DB_CA_BUNDLE_SECRET_ID` names.
    pub fn from_config_with_pem(
        db: &DbConfig,
        pem: &[u8],
        origin: &str,
    ) -> Result<Self, ConfigError> {
        Self::build(db.ssl_mode, Some((pem, origin)))
    }

    fn build(mode: SslMode, bundle: Option<(&[u8], &str)>) -> Result<Self, ConfigError> {
        let given = match (mode, bundle) {
            (SslMode::Disable, _) => return Ok(Tls::Disabled),
            (SslMode::VerifyFull, Some((pem, origin))) => load_bundle(pem, origin)?,
            _ => Vec::new(),
        };
        Ok(Tls::Native(Arc::new(Connectors {
            mode,
            given,
            made: Default::default(),
        })))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_decides_the_roots() {
        for (host, roots) in [
            ("mydb.c9akciq32.us-east-1.rds.amazonaws.com", Roots::Rds),
            ("app.cluster-ro-c9akciq32.eu-west-1.rds.amazonaws.com", Roots::Rds),
            ("mydb.abc.cn-north-1.rds.amazonaws.com.cn", Roots::Rds),
            ("mydb.abc.us-gov-west-1.rds.amazonaws.com", Roots::Rds),
            ("MyDb.ABC.US-EAST-1.RDS.AMAZONAWS.COM.", Roots::Rds),
            ("login-etl.proxy-abc123.us-east-1.rds.amazonaws.com", Roots::RdsProxy),
            ("ro.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com", Roots::RdsProxy),
            ("proxy-db.c9akciq32.us-east-1.rds.amazonaws.com", Roots::Rds),
            ("db.internal", Roots::System),
            ("localhost", Roots::System),
            ("rds.amazonaws.com.attacker.example", Roots::System),
            ("evilrds.amazonaws.com", Roots::System),
        ] {
            assert_eq!(Roots::of(host), roots, "{host}");
        }
    }

    #[test]
    fn the_built_in_roots_parse() {
        assert_eq!(Certificate::stack_from_pem(RDS_CA_BUNDLE).unwrap().len(), 102);
        assert_eq!(Certificate::stack_from_pem(AMAZON_TRUST_ROOTS).unwrap().len(), 5);
        let tls = Tls::build(SslMode::VerifyFull, None).unwrap();
        let Tls::Native(connectors) = tls else {
            panic!("verify-full is TLS")
        };
        for host in ["a.b.us-east-1.rds.amazonaws.com", "p.proxy-1.us-east-1.rds.amazonaws.com"] {
            connectors.for_host(host).unwrap();
        }
    }
}
