//! Where the connection settings come from, with PostgreSQL's own
//! conventions (libpq's, as `psql` and every tool a DBA uses read them):
//! a connection URL or `key=value` string (`DATABASE_URL`), an RDS-style
//! secret (`DB_SECRET_ID`), or the `PG*` variables alone. What a URL leaves
//! out, `PGHOST`, `PGPORT`, `PGUSER` and `PGDATABASE` give; the password is
//! the URL's, else `PGPASSWORD`, else the password file's (`passfile`,
//! `PGPASSFILE`, `~/.pgpass`); `sslmode` and `sslrootcert` in the URL win
//! over `DB_SSLMODE`/`DB_CA_BUNDLE`, which win over `PGSSLMODE` and
//! `PGSSLROOTCERT`. Values are never echoed: several are secrets.

use std::time::Duration;

use crate::database::pgpass;
use crate::error::ConfigError;

/// Where the PostgreSQL connection settings come from.
#[derive(Clone, PartialEq, Eq)]
pub enum DbSource {
    /// `DATABASE_URL`: a `postgres://` URL or `key=value` string, without
    /// the settings taken out of it (`sslmode`, `sslrootcert`, `passfile`).
    Url(String),
    /// `DB_SECRET_ID`: a Secrets Manager id of an RDS-style JSON secret.
    Secret(String),
    /// Neither: the `PG*` variables (`PGHOST`, `PGDATABASE`, ...), as psql
    /// takes them.
    Environment,
}

impl std::fmt::Debug for DbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbSource::Url(_) => f.write_str("Url(<redacted>)"),
            DbSource::Secret(id) => write!(f, "Secret({id})"),
            DbSource::Environment => f.write_str("Environment"),
        }
    }
}

/// How the connection to PostgreSQL is protected (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS without certificate checks.
    Require,
    /// TLS, chain and host name checked.
    VerifyFull,
}

/// Where the PEM bundle of CAs for `verify-full` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaBundle {
    /// A file: `sslrootcert` in the URL, `DB_CA_BUNDLE`, `PGSSLROOTCERT`, or
    /// `~/.postgresql/root.crt` when it exists (libpq's default). A relative
    /// path in Lambda is beside `bootstrap` (`LAMBDA_TASK_ROOT`).
    File {
        /// The path as given, resolved.
        path: String,
        /// The setting it came from, for errors.
        from: &'static str,
    },
    /// `DB_CA_BUNDLE_SECRET_ID`: a Secrets Manager id whose SecretString is the PEM.
    Secret(String),
}

/// `DB_AUTH`: how the role proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbAuth {
    /// A password (the URL's, `PGPASSWORD`, the password file, the secret's).
    #[default]
    Password,
    /// RDS IAM database authentication: a token signed with the AWS
    /// credentials, fresh for each connection (`crate::database::iam`).
    Iam,
}

/// PostgreSQL settings.
#[derive(Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Where the connection settings come from.
    pub source: DbSource,
    /// `sslmode`: default `disable` for a URL or the `PG*` variables,
    /// `verify-full` for a secret or IAM authentication.
    pub ssl_mode: SslMode,
    /// CAs to trust for `verify-full` beside the system roots.
    pub ca_bundle: Option<CaBundle>,
    /// `DB_AUTH`.
    pub auth: DbAuth,
    /// `DB_CONNECT_TIMEOUT_MS`, default 5,000.
    pub connect_timeout: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS`, default 10,000; also bounds lock waits.
    pub statement_timeout: Duration,
    /// `DB_CONNECT_HOST` and `DB_CONNECT_PORT`: with a secret, where to
    /// connect instead of the host and port it names (a tunnel's end;
    /// setup's own connections while the secrets name a proxy).
    pub connect_to: (Option<String>, Option<u16>),
    /// `PGHOSTADDR`, libpq's: the address to connect to, while TLS still
    /// checks the host's name (a name this machine cannot resolve, a
    /// tunnel's end).
    pub hostaddr: Option<std::net::IpAddr>,
    /// libpq's variables as read, for what the source leaves out.
    libpq: Libpq,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("source", &self.source)
            .field("ssl_mode", &self.ssl_mode)
            .field("ca_bundle", &self.ca_bundle)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The `PG*` variables and what the password file's lookup needs.
#[derive(Clone, Default, PartialEq, Eq)]
struct Libpq {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    dbname: Option<String>,
    password: Option<String>,
    passfile: Option<String>,
    home: Option<String>,
}

/// Default `DB_CONNECT_TIMEOUT_MS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Default `DB_STATEMENT_TIMEOUT_MS`: well under a typical 30 s function timeout,
/// leaving room for one reconnect and retry.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The settings a connection string may hold that this module reads
/// itself (tokio-postgres refuses `sslrootcert` and `passfile`, and takes
/// no `verify-full`).
const OWN_PARAMS: [&str; 3] = ["sslmode", "sslrootcert", "passfile"];

/// `DB_CONNECT_HOST` and `DB_CONNECT_PORT` ([`DbConfig::connect_to`]).
fn connect_to(
    get: &impl Fn(&str) -> Option<String>,
    auth: DbAuth,
) -> Result<(Option<String>, Option<u16>), ConfigError> {
    let host = get("DB_CONNECT_HOST").map(|h| h.trim().to_owned());
    let port = match get("DB_CONNECT_PORT") {
        None => None,
        Some(p) => Some(
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|&n| n > 0 && p.trim().bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ConfigError::Invalid {
                    var: "DB_CONNECT_PORT",
                    reason: "expected a port number, 1 to 65535".into(),
                })?,
        ),
    };
    // An IAM token is signed for the host connected to: RDS would refuse
    // one signed for another address.
    if auth == DbAuth::Iam && (host.is_some() || port.is_some()) {
        return Err(ConfigError::Invalid {
            var: "DB_CONNECT_HOST",
            reason: "not with DB_AUTH=iam: the token is signed for the host connected to, which must be the server's own name".into(),
        });
    }
    Ok((host, port))
}

impl DbConfig {
    /// Reads only the database settings (enough for `login-etl migrate`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Reads only the database settings through `get`.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let libpq = Libpq {
            host: get("PGHOST"),
            port: get("PGPORT"),
            user: get("PGUSER"),
            dbname: get("PGDATABASE"),
            password: get("PGPASSWORD"),
            passfile: get("PGPASSFILE"),
            home: get("HOME"),
        };
        let auth = match get("DB_AUTH").as_deref().map(str::trim) {
            None | Some("password") => DbAuth::Password,
            Some("iam") => DbAuth::Iam,
            Some(_) => {
                return Err(ConfigError::Invalid {
                    var: "DB_AUTH",
                    reason:
                        "expected password (the default) or iam (RDS IAM database authentication)"
                            .into(),
                });
            }
        };
        // DATABASE_URL wins so a developer can point a deployed config at a local server.
        let (source, own) = match (get("DATABASE_URL"), get("DB_SECRET_ID")) {
            (Some(url), _) => {
                let (rest, own) = split_params(&url);
                (DbSource::Url(rest), own)
            }
            (None, Some(id)) => (DbSource::Secret(id), Vec::new()),
            (None, None) if libpq.host.is_some() || libpq.dbname.is_some() => {
                (DbSource::Environment, Vec::new())
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: "DB_SECRET_ID",
                    hint: "set it to the Secrets Manager id of the RDS-style database secret, or give the connection as psql takes it (DATABASE_URL, or PGHOST, PGDATABASE, PGUSER and the password in ~/.pgpass or PGPASSWORD)",
                });
            }
        };
        let own_value = |key: &str| {
            own.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let ssl_mode = ssl_mode(&get, own_value("sslmode"), &source, auth)?;
        let ca_bundle = ca_bundle(&get, own_value("sslrootcert"), &libpq, ssl_mode)?;
        let mut libpq = libpq;
        if let Some(passfile) = own_value("passfile") {
            libpq.passfile = Some(passfile);
        }
        Ok(Self {
            source,
            ssl_mode,
            ca_bundle,
            auth,
            connect_timeout: parse_millis(&get, "DB_CONNECT_TIMEOUT_MS")?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            statement_timeout: parse_millis(&get, "DB_STATEMENT_TIMEOUT_MS")?
                .unwrap_or(DEFAULT_STATEMENT_TIMEOUT),
            connect_to: connect_to(&get, auth)?,
            hostaddr: get("PGHOSTADDR")
                .map(|a| a.trim().parse::<std::net::IpAddr>().map_err(|_| ConfigError::Invalid {
                    var: "PGHOSTADDR",
                    reason: "expected an IP address, 127.0.0.1 or ::1 (libpq's hostaddr): the address to connect to; the server's name goes in PGHOST (or the secret), which TLS checks".into(),
                }))
                .transpose()?,
            libpq,
        })
    }

    /// The connection settings of a URL or of the `PG*` variables, each part
    /// the URL leaves out taken from the variables, then libpq's defaults,
    /// and the password from the URL, `PGPASSWORD` or the password file
    /// (none with IAM: the token is made per connection). `None` for a
    /// secret, whose settings come with it.
    pub fn pg_config(&self) -> Result<Option<tokio_postgres::Config>, ConfigError> {
        let env = &self.libpq;
        let port = env
            .port
            .as_deref()
            .map(|p| {
                p.trim().parse::<u16>().map_err(|_| ConfigError::Invalid {
                    var: "PGPORT",
                    reason: "expected a port number".into(),
                })
            })
            .transpose()?;
        let (text, mut pg) = match &self.source {
            DbSource::Secret(_) => return Ok(None),
            DbSource::Url(url) => {
                // A URL's host without a port is parsed with 5432, which
                // no later setting replaces: PGPORT goes in the text.
                let url = match port {
                    Some(port) => with_default_port(url, port),
                    None => url.clone(),
                };
                let pg = url.parse::<tokio_postgres::Config>().map_err(|e| ConfigError::Invalid {
                    var: "DATABASE_URL",
                    reason: format!(
                        "not a PostgreSQL connection string ({}); expected postgres://user[:password]@host[:port]/dbname",
                        std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                    ),
                })?;
                (url, pg)
            }
            DbSource::Environment => (String::new(), tokio_postgres::Config::new()),
        };
        if pg.get_hosts().is_empty() {
            let hosts = env.host.clone().unwrap_or_else(default_host);
            for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                pg.host(host);
            }
        }
        if pg.get_ports().is_empty()
            && !port_given(&text)
            && let Some(port) = port
        {
            pg.port(port);
        }
        if pg.get_user().is_none() {
            let user = env
                .user
                .clone()
                .unwrap_or_else(|| whoami::username().unwrap_or_else(|_| "postgres".into()));
            pg.user(&user);
        }
        if pg.get_dbname().is_none() {
            let dbname = env
                .dbname
                .clone()
                .or_else(|| pg.get_user().map(str::to_owned))
                .unwrap_or_default();
            pg.dbname(&dbname);
        }
        if self.auth == DbAuth::Password && pg.get_password().is_none() {
            if let Some(password) = &env.password {
                pg.password(password);
            } else if let Some(password) = self.password_file(&pg) {
                pg.password(password);
            }
        }
        Ok(Some(pg))
    }

    /// The password the password file gives these settings (the first
    /// host's), if any.
    fn password_file(&self, pg: &tokio_postgres::Config) -> Option<String> {
        use tokio_postgres::config::Host;
        let path = match (&self.libpq.passfile, &self.libpq.home) {
            (Some(path), _) => std::path::PathBuf::from(path),
            (None, Some(home)) => std::path::Path::new(home).join(".pgpass"),
            (None, None) => return None,
        };
        let host = match pg.get_hosts().first()? {
            Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            Host::Unix(p) if p.as_os_str() == default_host().as_str() => "localhost".into(),
            #[cfg(unix)]
            Host::Unix(p) => p.display().to_string(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432).to_string();
        pgpass::password(
            &path,
            &host,
            &port,
            pg.get_dbname().unwrap_or_default(),
            pg.get_user().unwrap_or_default(),
        )
    }
}

/// libpq's default host: the Unix socket directory of Debian's and Red
/// Hat's packages where it exists, else `localhost`.
fn default_host() -> String {
    const SOCKET_DIR: &str = "/var/run/postgresql";
    if std::path::Path::new(SOCKET_DIR).is_dir() {
        SOCKET_DIR.into()
    } else {
        "localhost".into()
    }
}

/// A URL with `port` given to each of its hosts that names none (a URL
/// without hosts, or a `key=value` string, unchanged).
fn with_default_port(url: &str, port: u16) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    if hosts.is_empty() {
        return url.to_owned();
    }
    let hosts: Vec<String> = hosts
        .split(',')
        .map(|h| {
            let has_port = match h.rsplit_once(']') {
                Some((_, after)) => after.starts_with(':'),
                None => h.contains(':'),
            };
            if has_port {
                h.to_owned()
            } else {
                format!("{h}:{port}")
            }
        })
        .collect();
    format!("{scheme}://{userinfo}{}{tail}", hosts.join(","))
}

/// Whether a connection string names a port itself (tokio-postgres records
/// 5432 for a URL without one, so its settings cannot tell).
fn port_given(conn: &str) -> bool {
    if let Some(rest) = conn
        .strip_prefix("postgres://")
        .or_else(|| conn.strip_prefix("postgresql://"))
    {
        let (authority, query) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let named = hosts.split(',').any(|h| match h.rsplit_once(']') {
            Some((_, after)) => after.starts_with(':'),
            None => h.contains(':'),
        });
        return named || query.split(['?', '&']).any(|p| p.starts_with("port="));
    }
    conn.split_whitespace().any(|p| p.starts_with("port="))
}

/// Takes this module's own settings (`OWN_PARAMS`) out of a connection
/// string (URL query or `key=value` form): the string without them, and
/// each one found (percent-decoded).
fn split_params(conn: &str) -> (String, Vec<(String, String)>) {
    let own = |part: &str| {
        let (k, v) = part.trim().split_once('=')?;
        OWN_PARAMS.contains(&k).then(|| {
            let v = v.trim_matches('\'');
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            (k.to_owned(), v.into_owned())
        })
    };
    if let Some((base, query)) = conn.split_once('?') {
        let (mine, rest): (Vec<&str>, Vec<&str>) = query.split('&').partition(|p| own(p).is_some());
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        return (url, mine.into_iter().filter_map(own).collect());
    }
    if conn.contains("://") {
        return (conn.to_owned(), Vec::new());
    }
    let (mine, rest): (Vec<&str>, Vec<&str>) =
        conn.split_whitespace().partition(|p| own(p).is_some());
    (rest.join(" "), mine.into_iter().filter_map(own).collect())
}

fn parse_ssl_mode(value: &str) -> Option<SslMode> {
    match value.trim() {
        "disable" => Some(SslMode::Disable),
        "require" => Some(SslMode::Require),
        "verify-full" => Some(SslMode::VerifyFull),
        _ => None,
    }
}

/// `sslmode`: the URL's, else `DB_SSLMODE`, else `PGSSLMODE`; else
/// `verify-full` for a secret or IAM, `disable` otherwise. The URL's and
/// `DB_SSLMODE` may not differ (set it in one place); IAM needs
/// `verify-full` (the token is sent as a password).
fn ssl_mode(
    get: &impl Fn(&str) -> Option<String>,
    url: Option<String>,
    source: &DbSource,
    auth: DbAuth,
) -> Result<SslMode, ConfigError> {
    const SUPPORTED: &str = "must be disable, require or verify-full (prefer and allow may fall back to plaintext; verify-ca is not supported)";
    let parsed = |var: &'static str, value: Option<String>| {
        value
            .map(|v| {
                parse_ssl_mode(&v).ok_or_else(|| ConfigError::Invalid {
                    var,
                    reason: format!("its sslmode {SUPPORTED}"),
                })
            })
            .transpose()
    };
    let url = parsed("DATABASE_URL", url)?;
    let ours = parsed("DB_SSLMODE", get("DB_SSLMODE"))?;
    let libpq = parsed("PGSSLMODE", get("PGSSLMODE"))?;
    if let (Some(a), Some(b)) = (ours, url)
        && a != b
    {
        return Err(ConfigError::Invalid {
            var: "DB_SSLMODE",
            reason: "it differs from the sslmode in DATABASE_URL; set the mode in one place".into(),
        });
    }
    let mode = url.or(ours).or(libpq).unwrap_or(
        if matches!(source, DbSource::Secret(_)) || auth == DbAuth::Iam {
            SslMode::VerifyFull
        } else {
            SslMode::Disable
        },
    );
    if auth == DbAuth::Iam && mode != SslMode::VerifyFull {
        return Err(ConfigError::Invalid {
            var: "DB_AUTH",
            reason: "iam sends its token as the password, so the connection must be verified TLS: set sslmode (DB_SSLMODE or PGSSLMODE) to verify-full, with the RDS CA bundle (DB_CA_BUNDLE or PGSSLROOTCERT: docs/connecting.md, \"TLS to the database\")".into(),
        });
    }
    Ok(mode)
}

/// The CA bundle: the URL's `sslrootcert`, else `DB_CA_BUNDLE` or
/// `DB_CA_BUNDLE_SECRET_ID` (not both), else `PGSSLROOTCERT`, else
/// `~/.postgresql/root.crt` when it exists and the mode verifies.
fn ca_bundle(
    get: &impl Fn(&str) -> Option<String>,
    url: Option<String>,
    libpq: &Libpq,
    mode: SslMode,
) -> Result<Option<CaBundle>, ConfigError> {
    // A relative path under Lambda is one the deploy packaged beside bootstrap.
    let resolve = |path: String| match get("LAMBDA_TASK_ROOT") {
        Some(root) if std::path::Path::new(&path).is_relative() => format!("{root}/{path}"),
        _ => path,
    };
    let file = |path: String, from| CaBundle::File {
        path: resolve(path),
        from,
    };
    let ours = match (get("DB_CA_BUNDLE"), get("DB_CA_BUNDLE_SECRET_ID")) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Conflict {
                first: "DB_CA_BUNDLE",
                second: "DB_CA_BUNDLE_SECRET_ID",
            });
        }
        (Some(path), None) => Some(file(path, "DB_CA_BUNDLE")),
        (None, Some(id)) => Some(CaBundle::Secret(id)),
        (None, None) => None,
    };
    let default = || {
        let path = std::path::Path::new(libpq.home.as_deref()?).join(".postgresql/root.crt");
        (mode == SslMode::VerifyFull && path.is_file())
            .then(|| file(path.display().to_string(), "~/.postgresql/root.crt"))
    };
    Ok(url
        .map(|path| file(path, "sslrootcert in DATABASE_URL"))
        .or(ours)
        .or_else(|| get("PGSSLROOTCERT").map(|path| file(path, "PGSSLROOTCERT")))
        .or_else(default))
}

pub(crate) fn parse_millis(
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
mod tests;
