//! Opening connections: connection settings, TLS, the one credential refresh
//! after a password rotation, and the startup packet.
//!
//! Pooler-safe by construction: the startup packet carries only `user`,
//! `database`, `application_name` and `client_encoding`, which RDS Proxy and
//! PgBouncer accept (no `options`); server-side bounds are set per
//! transaction with `SET LOCAL` (see [`super::insert`]).

use std::time::Duration;

use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tracing::{debug, warn};

use super::classify::connect_refusal_hint;
use crate::error::SinkError;
use crate::error::describe;
use crate::secrets::Secrets;
use crate::tls::Tls;

/// Opens connections to one database.
#[derive(Clone)]
pub(crate) struct Connector {
    pg: tokio_postgres::Config,
    tls: Tls,
    connect_timeout: Duration,
    refresh: Option<(Secrets, String)>,
    target: String,
}

impl Connector {
    pub(crate) fn new(pg: tokio_postgres::Config, tls: Tls, connect_timeout: Duration) -> Self {
        let mut c = Self {
            pg: tokio_postgres::Config::new(),
            tls,
            connect_timeout,
            refresh: None,
            target: String::new(),
        };
        c.set_pg(pg);
        c
    }

    pub(crate) fn refresh_credentials_from(&mut self, secrets: Secrets, id: String) {
        self.refresh = Some((secrets, id));
    }

    fn set_pg(&mut self, mut pg: tokio_postgres::Config) {
        if pg.get_application_name().is_none() {
            pg.application_name("login-etl");
        }
        pg.connect_timeout(self.connect_timeout);
        pg.ssl_mode(self.tls.pg_ssl_mode());
        self.target = describe_target(&pg);
        self.pg = pg;
    }

    /// `user@host:port/dbname`, safe to log (no password).
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// A new connection, bounded by `limit`; after a password rejection
    /// (28P01, e.g. a rotation) the secret is refetched once.
    pub(crate) async fn open(&mut self, limit: Duration) -> Result<Client, SinkError> {
        let client = match self.open_once(limit).await {
            Err((Some(code), _))
                if code == SqlState::INVALID_PASSWORD && self.refresh.is_some() =>
            {
                let (secrets, id) = self.refresh.as_ref().expect("checked above");
                warn!(secret = %id, "PostgreSQL rejected the password; refetching the database secret once");
                let secret = secrets.db(id).await?;
                self.set_pg(secret.pg_config());
                self.open_once(limit).await.map_err(|(_, e)| e)?
            }
            other => other.map_err(|(_, e)| e)?,
        };
        debug!(target = %self.target, tls = ?self.tls, "connected to PostgreSQL");
        Ok(client)
    }

    /// One connection attempt; on failure, the SQLSTATE (if the server sent
    /// one) and the error to report.
    async fn open_once(&self, limit: Duration) -> Result<Client, (Option<SqlState>, SinkError)> {
        let limit = limit.min(self.connect_timeout);
        let result = match &self.tls {
            Tls::Disabled => connect_with(&self.pg, NoTls, limit).await,
            Tls::Native(tls) => connect_with(&self.pg, tls.clone(), limit).await,
        };
        result.map_err(|(code, cause)| {
            if let Some(hint) = code.as_ref().and_then(connect_refusal_hint) {
                let err = SinkError::ConnectRefused {
                    target: self.target.clone(),
                    cause,
                    hint,
                };
                return (code, err);
            }
            let hint = match &self.tls {
                Tls::Native(_)
                    if code.is_none()
                        && (cause.contains("TLS")
                            || cause.contains("SSL")
                            || cause.contains("certificate")) =>
                {
                    " (check DB_SSLMODE, the CA bundle in DB_CA_BUNDLE or DB_CA_BUNDLE_SECRET_ID (for RDS: the region's bundle, docs/deploy.md, \"TLS to the database\"), and that the host name matches the server certificate)"
                }
                _ => "",
            };
            let err = SinkError::Connect {
                target: self.target.clone(),
                cause: format!("{cause}{hint}"),
            };
            (code, err)
        })
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// Connects with `tls`, bounded by `limit`, and drives the connection in a task.
async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    limit: Duration,
) -> Result<Client, (Option<SqlState>, String)>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = timeout(limit, pg.connect(tls))
        .await
        .map_err(|_| (None, format!("timed out after {} ms", limit.as_millis())))?
        .map_err(|e| (e.code().cloned(), describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %describe(&e), "database connection closed");
        }
    });
    Ok(client)
}

fn describe_target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or("?"),
        pg.get_dbname().unwrap_or("?")
    )
}
