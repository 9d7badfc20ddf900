//! Opening connections: the settings resolved once
//! ([`crate::database::settings`], the secrets they name), TLS, the
//! credential of each connection (a password, refetched once from its
//! secret after a rotation; or an RDS IAM token, fresh each time), and
//! the startup packet. The one way every part opens a connection: the
//! function's sink, `poll`, and the operator commands.
//!
//! Pooler-safe by construction: the startup packet carries only `user`,
//! `database`, `application_name` and `client_encoding`, which RDS Proxy
//! and PgBouncer accept (no `options`); server-side bounds are set per
//! transaction (`SET LOCAL`, or `set_config(…, true)` in the one-statement
//! write).

use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, NoTls, Socket};
use tracing::{debug, warn};

use crate::database::iam::TokenSigner;
use crate::database::settings::{CaBundle, DbAuth, DbConfig, DbSource};
use crate::database::stored_settings;
use crate::database::tls::{Roots, Tls};
use crate::error::{ConfigError, DbError, SecretError, describe};
use crate::secrets::Secrets;

/// Why the connection settings could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secret it names could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// Where each connection's credential comes from.
#[derive(Clone)]
enum Credential {
    /// In the settings already (a password, or none: trust, a client certificate).
    Given,
    /// The database secret `id`: refetched once when PostgreSQL rejects
    /// its password (SQLSTATE 28P01, e.g. after a rotation).
    Secret(Secrets, String),
    /// An RDS IAM token, made for each connection.
    Iam(TokenSigner),
}

/// Opens connections to one database.
#[derive(Clone)]
pub struct Connector {
    pg: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
    credential: Credential,
    target: String,
    /// The CA bundle trusted beside the system roots, as a setting names
    /// it (for a TLS failure's hint).
    ca: Option<String>,
    /// Where to connect instead of the secret's host and port
    /// (`DbConfig::connect_to`), on a refetch too.
    connect_to: (Option<String>, Option<u16>),
    /// `PGHOSTADDR` (`DbConfig::hostaddr`), on a refetch too.
    hostaddr: Option<std::net::IpAddr>,
}

impl Connector {
    /// A connector for `db`: its settings resolved, the secrets it names
    /// read (`DB_SECRET_ID`, `DB_CA_BUNDLE_SECRET_ID`: with `aws`, which the
    /// caller loads when [`needs_aws`] says so, as IAM does).
    pub async fn from_config(
        db: &DbConfig,
        aws: Option<&aws_config::SdkConfig>,
    ) -> Result<Self, SetupError> {
        let secrets = aws.map(Secrets::new);
        let secrets = || {
            secrets
                .clone()
                .expect("an AWS configuration where one is needed (needs_aws)")
        };
        let (tls, ca) = match &db.ca_bundle {
            Some(CaBundle::Secret(id)) => {
                let pem = secrets().string(id).await?;
                let origin = format!("secret {id} (DB_CA_BUNDLE_SECRET_ID)");
                (
                    Tls::from_config_with_pem(db, pem.as_bytes(), &origin)?,
                    Some(origin),
                )
            }
            Some(CaBundle::File { path, from }) => {
                (Tls::from_config(db)?, Some(format!("{path} ({from})")))
            }
            None => (Tls::from_config(db)?, None),
        };
        let (pg, mut credential) = match &db.source {
            DbSource::Secret(id) => {
                let secret = secrets().db(id, db.auth == DbAuth::Password).await?;
                (
                    secret.pg_config_at(&db.connect_to),
                    Credential::Secret(secrets(), id.clone()),
                )
            }
            _ => (
                db.pg_config()?.expect("a URL or the PG* variables"),
                Credential::Given,
            ),
        };
        if db.auth == DbAuth::Iam {
            let aws = aws.expect("an AWS configuration where one is needed (needs_aws)");
            credential = Credential::Iam(TokenSigner::new(aws)?);
        }
        // The host's TLS connector now, the only one most deployments use:
        // a set-up that cannot work fails at start, with the setting named.
        if let Tls::Native(connectors) = &tls {
            connectors
                .for_host(&first_host(&pg).0)
                .map_err(|reason| ConfigError::Invalid {
                    var: "DB_SSLMODE",
                    reason,
                })?;
        }
        // TLS checks the host's name: a socket directory names none, and
        // the address would be reached with nothing to check.
        if db.hostaddr.is_some()
            && let [tokio_postgres::config::Host::Unix(dir)] = pg.get_hosts()
        {
            return Err(ConfigError::Invalid {
                var: "PGHOSTADDR",
                reason: format!(
                    "the host is a socket directory ({}): give the server's name as the host (PGHOST, or the URL's host), which TLS checks, and its address in PGHOSTADDR",
                    dir.display()
                ),
            }
            .into());
        }
        if db.hostaddr.is_some() && pg.get_hosts().len() != 1 {
            return Err(ConfigError::Invalid {
                var: "PGHOSTADDR",
                reason: format!(
                    "one address is for one host, and the connection names {}: give one host, or no PGHOSTADDR",
                    pg.get_hosts().len()
                ),
            }
            .into());
        }
        let mut connector = Self {
            pg: tokio_postgres::Config::new(),
            tls,
            connect_timeout: db.connect_timeout,
            credential,
            target: String::new(),
            ca,
            connect_to: db.connect_to.clone(),
            hostaddr: db.hostaddr,
        };
        connector.set_pg(pg);
        Ok(connector)
    }

    /// With IAM authentication, tokens signed at the time `clock` gives
    /// (a test that sets the role's password to the expected token).
    #[cfg(any(test, feature = "test-support"))]
    pub fn with_token_clock(mut self, clock: fn() -> std::time::SystemTime) -> Self {
        if let Credential::Iam(signer) = self.credential {
            self.credential = Credential::Iam(signer.with_clock(clock));
        }
        self
    }

    fn set_pg(&mut self, mut pg: tokio_postgres::Config) {
        if pg.get_application_name().is_none() {
            pg.application_name("login-etl");
        }
        pg.connect_timeout(self.connect_timeout);
        pg.ssl_mode(self.tls.pg_ssl_mode());
        if let Some(addr) = self.hostaddr
            && pg.get_hostaddrs().is_empty()
        {
            pg.hostaddr(addr);
        }
        self.target = describe_target(&pg);
        self.pg = pg;
    }

    /// `user@host:port/dbname`, safe to log (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The first host, its port and the database the connections go to
    /// (what a secret made for another role of this database names).
    pub fn host_port_dbname(&self) -> (String, u16, String) {
        let (host, port) = first_host(&self.pg);
        (
            host,
            port,
            self.pg.get_dbname().unwrap_or_default().to_owned(),
        )
    }

    /// How long a connection attempt may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// A new connection, bounded by `limit`: after a password rejection
    /// (28P01, e.g. a rotation) the secret is refetched once; after a
    /// refused IAM token (28000, as RDS answers it), a fresh one is tried
    /// once.
    pub async fn open(&mut self, limit: Duration) -> Result<Client, DbError> {
        let client = match (self.open_once(limit).await, &self.credential) {
            (Err((Some(code), _)), Credential::Secret(secrets, id))
                if code == SqlState::INVALID_PASSWORD =>
            {
                let (secrets, id) = (secrets.clone(), id.clone());
                warn!(secret = %id, "PostgreSQL rejected the password; refetching the database secret once");
                let secret = secrets.db(&id, true).await?;
                self.set_pg(secret.pg_config_at(&self.connect_to));
                self.open_once(limit).await.map_err(|(_, e)| e)?
            }
            // RDS answers a refused token with 28000; a server that took
            // the token as a plain password, 28P01.
            (Err((Some(code), _)), Credential::Iam(_))
                if code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    || code == SqlState::INVALID_PASSWORD =>
            {
                warn!(target = %self.target, "the database refused the IAM token; trying once more with a fresh one");
                self.open_once(limit)
                    .await
                    .map_err(|(_, e)| self.iam_refused(e))?
            }
            (other, _) => other.map_err(|(_, e)| e)?,
        };
        // Before any statement of login-etl's: what the role stored for
        // itself must not change what those statements do.
        // Bounded like the connect: a pooler with no free server
        // connection would otherwise hold it until Lambda's own timeout.
        let stored = match timeout(limit, stored_settings::refusal(&client)).await {
            Ok(read) => read.map_err(|e| describe(&e)),
            Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
        }
        .map_err(|cause| DbError::Connect {
            target: self.target.clone(),
            cause: format!("reading the session's settings: {cause}"),
        })?;
        if let Some(cause) = stored {
            return Err(DbError::ConnectRefused {
                target: self.target.clone(),
                cause,
                hint: "login-etl (not the server) refuses a session under a setting its role stored for itself that changes what its statements do (a stolen credential's leftover, or a mistake): an admin runs the statements above (or the role itself: ALTER ROLE CURRENT_USER RESET …); doctor, run as an admin, lists every stored setting of login-etl's roles (docs/insiders.md)",
            });
        }
        debug!(target = %self.target, tls = ?self.tls, "connected to PostgreSQL");
        Ok(client)
    }

    /// A second IAM refusal: the configuration, with what to check.
    fn iam_refused(&self, e: DbError) -> DbError {
        match e {
            DbError::ConnectRefused { target, cause, .. } => DbError::ConnectRefused {
                cause: format!("{cause} (the token was signed for {target})"),
                target,
                hint: "the database refused the RDS IAM token twice: check that the role is GRANTed rds_iam (README's setup block, DB_AUTH=iam), that the function's AWS role may rds-db:connect on arn:aws:rds-db:<region>:<account>:dbuser:<DbiResourceId or proxy id>/<user> (the template's DbResourceId), and that the token's host is the endpoint it connects to (an RDS Proxy's own, not the instance's, behind a proxy)",
            },
            other => other,
        }
    }

    /// One connection attempt; on failure, the SQLSTATE (if the server sent
    /// one) and the error to report.
    async fn open_once(&self, limit: Duration) -> Result<Client, (Option<SqlState>, DbError)> {
        let limit = limit.min(self.connect_timeout);
        let mut pg = self.pg.clone();
        if let Credential::Iam(signer) = &self.credential {
            let (host, port) = first_host(&pg);
            let token = signer
                .token(&host, port, pg.get_user().unwrap_or_default())
                .await
                .map_err(|e| {
                    let err = DbError::Connect {
                        target: self.target.clone(),
                        cause: e.to_string(),
                    };
                    (None, err)
                })?;
            pg.password(token.as_bytes());
        }
        let host = first_host(&pg).0;
        let result = match &self.tls {
            Tls::Disabled => connect_with(&pg, NoTls, limit).await,
            Tls::Native(tls) => match tls.for_host(&host) {
                Ok(tls) => connect_with(&pg, tls, limit).await,
                // The TLS connector could not be built (the bundle given).
                Err(cause) => Err((None, cause, true)),
            },
        };
        result.map_err(|(code, cause, tls_failure)| {
            if let Some(hint) = code.as_ref().and_then(connect_refusal_hint) {
                let err = DbError::ConnectRefused {
                    target: self.target.clone(),
                    cause,
                    hint,
                };
                return (code, err);
            }
            let hint = match (&self.tls, tls_failure) {
                (Tls::Native(_), true) => format!(
                    " (trusted for {host}: {}, and the bundle given: {}; check that the host name is the one the server's certificate names; an RDS region newer than the built-in bundle, or a server of your own: give its CA as DB_CA_BUNDLE, PGSSLROOTCERT or DB_CA_BUNDLE_SECRET_ID (the stack: DbCaBundleSecretArn); docs/connecting.md, \"TLS to the database\")",
                    Roots::of(&host).describe(),
                    self.ca.as_deref().unwrap_or("none")
                ),
                _ => String::new(),
            };
            let err = DbError::Connect {
                target: self.target.clone(),
                cause: format!("{cause}{hint}"),
            };
            (code, err)
        })
    }
}

/// Whether the settings need an AWS configuration to connect: a secret to
/// read, or IAM tokens to sign.
pub fn needs_aws(db: &DbConfig) -> bool {
    matches!(db.source, DbSource::Secret(_))
        || matches!(db.ca_bundle, Some(CaBundle::Secret(_)))
        || db.auth == DbAuth::Iam
}

/// Failures at connect that a human must fix: no such database, no such role
/// or no `pg_hba.conf` entry, a wrong password (after the one refetch), no
/// CONNECT privilege. Retrying them only fills the DLQ.
pub(crate) fn connect_refusal_hint(code: &SqlState) -> Option<&'static str> {
    Some(match code.code() {
        "3D000" => {
            "the database does not exist: check dbname in the secret, DATABASE_URL or PGDATABASE"
        }
        "28000" => {
            "the server refused this role or client (no such role, or no pg_hba.conf entry; if the server requires TLS, set DB_SSLMODE=verify-full, or PGSSLMODE, or sslmode in the URL; with DB_AUTH=iam, the role needs rds_iam)"
        }
        "28P01" => {
            "the password was rejected: update the database secret (the function refetches it once), or the password given (the URL's, PGPASSWORD, ~/.pgpass)"
        }
        "42501" => "the role may not connect: GRANT CONNECT ON DATABASE to it",
        _ => return None,
    })
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Whether the connection failed in the TLS handshake (the server's
/// certificate, or its name): the TLS library's error among its causes.
fn tls_failed(e: &tokio_postgres::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
        .any(|s| s.is::<native_tls::Error>())
}

/// Connects with `tls`, bounded by `limit`, and drives the connection in a task.
async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    limit: Duration,
) -> Result<Client, (Option<SqlState>, String, bool)>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = timeout(limit, pg.connect(tls))
        .await
        .map_err(|_| (None, format!("timed out after {} ms", limit.as_millis()), false))?
        .map_err(|e| (e.code().cloned(), describe(&e), tls_failed(&e)))?;
    tokio::spawn(async move {
        let mut connection = connection;
        let driven = std::future::poll_fn(|cx| {
            loop {
                match std::task::ready!(connection.poll_message(cx)) {
                    Some(Ok(AsyncMessage::Notice(notice))) => log_notice(&notice),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return std::task::Poll::Ready(Err(e)),
                    None => return std::task::Poll::Ready(Ok(())),
                }
            }
        })
        .await;
        if let Err(e) = driven {
            debug!(error = %describe(&e), "database connection closed");
        }
    });
    Ok(client)
}

/// A notice the server sent (tokio-postgres would log it at INFO, with no
/// code): a WARNING at warn, with its SQLSTATE and text, for it says a
/// statement was out of place (25P01: a COMMIT or ROLLBACK outside any
/// transaction; no function of ours raises one, so the text is the
/// server's own about our statements); the rest at debug, code only: a
/// role may store `client_min_messages = log` with `debug_print_plan` for
/// itself, and a plan's text holds the statement's values.
fn log_notice(notice: &tokio_postgres::error::DbError) {
    let (severity, code) = (notice.severity(), notice.code().code());
    if severity == "WARNING" {
        warn!(
            code,
            notice = notice.message(),
            "the database server warned about a statement"
        );
    } else {
        debug!(severity, code, "the database server noted");
    }
}

/// The first host and its port: what an IAM token is signed for.
fn first_host(pg: &tokio_postgres::Config) -> (String, u16) {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    (host, pg.get_ports().first().copied().unwrap_or(5432))
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    let (host, port) = first_host(pg);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or("?"),
        pg.get_dbname().unwrap_or("?")
    )
}
