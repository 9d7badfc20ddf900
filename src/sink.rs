//! The PostgreSQL sink: one connection reused across warm invocations, one
//! multi-row `INSERT ... SELECT FROM UNNEST` per batch, and isolation of the
//! rows the database refuses.
//!
//! Large batches ([`COPY_MIN_ROWS`] rows or more) first try one binary `COPY`,
//! about 3x cheaper for the server than the INSERT. A COPY is all-or-nothing
//! and has no `ON CONFLICT`: if any row is refused or already there
//! (redelivery), nothing is written and the batch takes the INSERT path below,
//! which sorts it out; so the result is the same either way, only slower when
//! the fast path fails.
//!
//! Failure policy (design.md section 3):
//! - a row-level refusal (data or constraint error) bisects the batch so only
//!   the offending rows fail: k bad rows in n cost O(k log n) statements;
//! - a connection-level failure drops the connection, reconnects once and
//!   retries; a second failure fails the invocation ([`SinkError`]);
//! - every statement is atomic (autocommit), so a failure never leaves a
//!   statement half-applied, and `ON CONFLICT (message_id) DO NOTHING` makes
//!   the redelivered batch complete exactly once.

use std::ops::Range;
use std::pin::Pin;
use std::time::Duration;

use chrono::NaiveDate;
use tokio::time::timeout;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Socket, Statement};
use tracing::{debug, trace, warn};

use crate::config::DbConfig;
use crate::error::SinkError;
use crate::record::LoginRow;
use crate::schema;
use crate::secrets::Secrets;
use crate::tls::Tls;

/// The bulk insert: one statement, one round trip (prepared once per connection).
/// Arrays are bound as `varchar[]`, the columns' type: with `text[]` the server
/// coerces every value to `varchar(n)`, which made the statement 1.7x slower
/// for 10,000 rows (benches/batch_pg.rs).
pub const INSERT_SQL: &str = "INSERT INTO user_logins \
    (message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, app_version_text, create_date) \
    SELECT * FROM UNNEST($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::int4[], $8::varchar[], $9::date[]) \
    ON CONFLICT (message_id) DO NOTHING";

/// The fast path for large batches; see the module documentation.
pub const COPY_SQL: &str = "COPY user_logins \
    (message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, app_version_text, create_date) \
    FROM STDIN (FORMAT binary)";

/// Column types of [`COPY_SQL`], in order.
pub const COPY_TYPES: [Type; 9] = [
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::VARCHAR,
    Type::DATE,
];

/// Batches at least this large try COPY first. Below it the INSERT's single
/// round trip wins (COPY needs two); see benches/batch_pg.rs.
pub const COPY_MIN_ROWS: usize = 500;

/// Pause before the one reconnect, so a server that is restarting or out of
/// connection slots gets a moment.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// What one call to [`PgSink::insert`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertReport {
    /// Rows newly written.
    pub inserted: u64,
    /// Rows committed earlier (same `message_id`): success, no new row.
    pub duplicates: u64,
    /// Indices (into the slice given to `insert`) of rows the database refused, ascending.
    pub refused: Vec<usize>,
    /// Statements executed (1 when nothing was refused).
    pub statements: u32,
    /// Whether the rows went in by the COPY fast path.
    pub copied: bool,
}

/// How one statement failed.
enum Failure {
    /// The data of some row in the statement was refused (SQLSTATE and constraint).
    Row(String),
    /// Connection-level or transient: reconnecting may help.
    Transient(String),
    /// Retrying will not help.
    Fatal(SinkError),
}

struct Conn {
    client: Client,
    insert: Statement,
    copy: Statement,
}

/// Writes validated rows into `user_logins`.
pub struct PgSink {
    pg: tokio_postgres::Config,
    tls: Tls,
    settings: DbConfig,
    refresh: Option<(Secrets, String)>,
    target: String,
    conn: Option<Conn>,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// A sink for the given connection settings; connects lazily.
    pub fn new(pg: tokio_postgres::Config, db: &DbConfig, tls: Tls) -> Self {
        let mut sink = Self {
            pg: tokio_postgres::Config::new(),
            tls,
            settings: db.clone(),
            refresh: None,
            target: String::new(),
            conn: None,
        };
        sink.set_pg(pg);
        sink
    }

    /// When PostgreSQL rejects the password (SQLSTATE 28P01, e.g. after a
    /// rotation), refetch the database secret `id` once and reconnect.
    pub fn refresh_credentials_from(mut self, secrets: Secrets, id: String) -> Self {
        self.refresh = Some((secrets, id));
        self
    }

    fn set_pg(&mut self, mut pg: tokio_postgres::Config) {
        // Server-side timeouts travel in the startup packet: no extra round trip.
        let ms = self.settings.statement_timeout.as_millis();
        let options = format!(
            "{} -c statement_timeout={ms} -c lock_timeout={ms}",
            pg.get_options().unwrap_or_default()
        );
        pg.options(options.trim_start());
        if pg.get_application_name().is_none() {
            pg.application_name("login-etl");
        }
        pg.connect_timeout(self.settings.connect_timeout);
        pg.ssl_mode(self.tls.pg_ssl_mode());
        self.target = describe_target(&pg);
        self.pg = pg;
    }

    /// `user@host:port/dbname`, safe to log (no password).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Creates or upgrades the schema (see [`schema::migrate`]).
    pub async fn migrate(&mut self) -> Result<(), SinkError> {
        let mut client = self.open().await?;
        schema::migrate(&mut client)
            .await
            .map_err(|e| match classify(&e) {
                Failure::Fatal(f) => f,
                _ => SinkError::Transient {
                    op: "applying the schema",
                    cause: describe(&e),
                },
            })?;
        self.conn = Some(self.prepare(client).await?);
        Ok(())
    }

    /// Inserts `rows`, isolating refused rows. With `preserve_order` (FIFO
    /// queues) it stops at the first refused row: every row before it is
    /// committed, none after it is attempted.
    pub async fn insert(
        &mut self,
        rows: &[LoginRow<'_>],
        preserve_order: bool,
    ) -> Result<InsertReport, SinkError> {
        let mut reconnects_left = 1u8;
        let copy_tried = rows.len() >= COPY_MIN_ROWS;
        let mut copy = if copy_tried {
            self.begin_copy(&mut reconnects_left).await?
        } else {
            None
        };
        if let Some(copy) = copy.as_mut() {
            for row in rows {
                copy.write(row).await;
            }
        }
        self.finish_batch(copy, copy_tried, rows, preserve_order, &mut reconnects_left)
            .await
    }

    /// Completes a batch whose `rows` were (if `copy` is set) also written to
    /// a COPY: commits the COPY, or, when it was refused or never started
    /// (`copy_tried`), inserts the rows through [`insert_rows`](Self::insert_rows).
    pub async fn finish_batch(
        &mut self,
        copy: Option<CopyIn>,
        copy_tried: bool,
        rows: &[LoginRow<'_>],
        preserve_order: bool,
        reconnects_left: &mut u8,
    ) -> Result<InsertReport, SinkError> {
        if let Some(copy) = copy
            && let Some(report) = self.end_copy(copy, reconnects_left).await?
        {
            return Ok(report);
        }
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        let mut report = self
            .insert_rows(rows, preserve_order, reconnects_left)
            .await?;
        report.statements += u32::from(copy_tried);
        Ok(report)
    }

    /// The INSERT path of [`insert`](Self::insert), also the fallback when a
    /// COPY was refused; `reconnects_left` is shared with that COPY.
    pub async fn insert_rows(
        &mut self,
        rows: &[LoginRow<'_>],
        preserve_order: bool,
        reconnects_left: &mut u8,
    ) -> Result<InsertReport, SinkError> {
        let mut report = InsertReport::default();
        let mut committed = 0usize;
        // Ranges to try, popped in batch order (right half pushed first).
        let mut todo: Vec<Range<usize>> = Vec::with_capacity(32);
        todo.push(0..rows.len());
        while let Some(range) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            report.statements += 1;
            trace!(first = range.start, rows = range.len(), "executing insert");
            match self.execute(&rows[range.clone()], reconnects_left).await {
                Ok(n) => {
                    report.inserted += n;
                    committed += range.len();
                }
                Err(Failure::Row(why)) if range.len() == 1 => {
                    warn!(
                        message_id = rows[range.start].message_id,
                        error = %why,
                        "row refused by the database"
                    );
                    report.refused.push(range.start);
                    if preserve_order {
                        // Rows after it stay unattempted; the caller reports them.
                        break;
                    }
                }
                Err(Failure::Row(_)) => {
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                }
                Err(Failure::Transient(cause)) => {
                    return Err(SinkError::Transient {
                        op: "inserting the batch",
                        cause,
                    });
                }
                Err(Failure::Fatal(e)) => return Err(e),
            }
        }
        report.duplicates = committed as u64 - report.inserted;
        Ok(report)
    }

    /// Starts a binary COPY (the fast path): feed it with [`CopyIn::write`]
    /// and close it with [`end_copy`](Self::end_copy). `None` when it cannot
    /// start and the rows must take the INSERT path ([`insert_rows`](Self::insert_rows)).
    pub async fn begin_copy(
        &mut self,
        reconnects_left: &mut u8,
    ) -> Result<Option<CopyIn>, SinkError> {
        let bound = self.settings.statement_timeout + self.settings.connect_timeout;
        let failure = match self.connection().await {
            Ok(conn) => match timeout(bound, conn.client.copy_in(&conn.copy)).await {
                Ok(Ok(sink)) => {
                    return Ok(Some(CopyIn {
                        writer: Box::pin(BinaryCopyInWriter::new(sink, &COPY_TYPES)),
                        bound,
                        failure: None,
                    }));
                }
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Transient(format!("no answer within {} ms", bound.as_millis())),
            },
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => Failure::Transient(e.to_string()),
        };
        self.copy_failed(failure, reconnects_left)
            .await
            .map(|()| None)
    }

    /// Commits the COPY: `Some(report)` when every row went in, `None` when
    /// nothing was written and the rows must take the INSERT path (a refused
    /// or duplicate row; or a lost connection, after which the INSERT finds
    /// every row a duplicate if the COPY did commit). A connection failure
    /// uses up the one reconnect.
    pub async fn end_copy(
        &mut self,
        copy: CopyIn,
        reconnects_left: &mut u8,
    ) -> Result<Option<InsertReport>, SinkError> {
        let failure = match copy.finish().await {
            Ok(inserted) => {
                return Ok(Some(InsertReport {
                    inserted,
                    statements: 1,
                    copied: true,
                    ..InsertReport::default()
                }));
            }
            Err(failure) => failure,
        };
        self.copy_failed(failure, reconnects_left)
            .await
            .map(|()| None)
    }

    async fn copy_failed(
        &mut self,
        failure: Failure,
        reconnects_left: &mut u8,
    ) -> Result<(), SinkError> {
        match failure {
            // A refused or duplicate row; or permissions / schema, which the
            // INSERT path reports with its hint.
            Failure::Row(why) => {
                debug!(error = %why, "COPY refused; inserting with ON CONFLICT instead")
            }
            Failure::Fatal(e) => debug!(error = %e, "COPY failed; inserting instead"),
            Failure::Transient(cause) if *reconnects_left > 0 => {
                *reconnects_left -= 1;
                warn!(error = %cause, "database connection failed during COPY; reconnecting once");
                self.conn = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            Failure::Transient(cause) => {
                self.conn = None;
                return Err(SinkError::Transient {
                    op: "copying the batch",
                    cause,
                });
            }
        }
        Ok(())
    }

    /// Runs the insert for `rows`, reconnecting (at most `reconnects_left`
    /// times) when the connection fails.
    async fn execute(
        &mut self,
        rows: &[LoginRow<'_>],
        reconnects_left: &mut u8,
    ) -> Result<u64, Failure> {
        let cols = Columns::from(rows);
        let params = cols.params();
        // A client-side bound too, for a server that stops answering without
        // closing the socket.
        let bound = self.settings.statement_timeout + self.settings.connect_timeout;
        loop {
            let attempt = match self.connection().await {
                Ok(conn) => {
                    match timeout(bound, conn.client.execute(&conn.insert, &params)).await {
                        Ok(Ok(n)) => return Ok(n),
                        Ok(Err(e)) => classify(&e),
                        Err(_) => {
                            Failure::Transient(format!("no answer within {} ms", bound.as_millis()))
                        }
                    }
                }
                Err(e) if !e.is_retryable() => return Err(Failure::Fatal(e)),
                Err(e) => Failure::Transient(e.to_string()),
            };
            match attempt {
                Failure::Transient(cause) if *reconnects_left > 0 => {
                    *reconnects_left -= 1;
                    warn!(error = %cause, "database connection failed; reconnecting once");
                    self.conn = None;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Failure::Transient(cause) => {
                    self.conn = None;
                    return Err(Failure::Transient(cause));
                }
                other => return Err(other),
            }
        }
    }

    /// The open connection, opening one if there is none or it was closed
    /// (e.g. by an idle timeout between warm invocations).
    async fn connection(&mut self) -> Result<&Conn, SinkError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            let client = self.open().await?;
            self.conn = Some(self.prepare(client).await?);
        }
        Ok(self.conn.as_ref().expect("connection was just opened"))
    }

    async fn open(&mut self) -> Result<Client, SinkError> {
        let client = self.open_with_refresh().await?;
        debug!(target = %self.target, tls = ?self.tls, "connected to PostgreSQL");
        Ok(client)
    }

    async fn open_with_refresh(&mut self) -> Result<Client, SinkError> {
        match self.open_once().await {
            Err((Some(code), _))
                if code == SqlState::INVALID_PASSWORD && self.refresh.is_some() =>
            {
                let (secrets, id) = self.refresh.as_ref().expect("checked above");
                warn!(secret = %id, "PostgreSQL rejected the password; refetching the database secret once");
                let secret = secrets.db(id).await?;
                self.set_pg(secret.pg_config());
                self.open_once().await.map_err(|(_, e)| e)
            }
            other => other.map_err(|(_, e)| e),
        }
    }

    /// One connection attempt; on failure, the SQLSTATE (if the server sent
    /// one) and the error to report.
    async fn open_once(&self) -> Result<Client, (Option<SqlState>, SinkError)> {
        let result = match &self.tls {
            Tls::Disabled => connect_with(&self.pg, NoTls, self.settings.connect_timeout).await,
            Tls::Native(tls) => {
                connect_with(&self.pg, tls.clone(), self.settings.connect_timeout).await
            }
        };
        result.map_err(|(code, cause)| {
            let hint = match (&code, &self.tls) {
                (Some(c), Tls::Disabled) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                    " (if the server requires TLS, set DB_SSLMODE=verify-full)"
                }
                (None, Tls::Native(_)) if cause.contains("TLS") || cause.contains("SSL") || cause.contains("certificate") => {
                    " (check DB_SSLMODE, DB_CA_BUNDLE and that the host name matches the server certificate)"
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

    async fn prepare(&self, client: Client) -> Result<Conn, SinkError> {
        let prepared = match client.prepare(INSERT_SQL).await {
            Ok(insert) => client.prepare(COPY_SQL).await.map(|copy| (insert, copy)),
            Err(e) => Err(e),
        };
        match prepared {
            Ok((insert, copy)) => Ok(Conn {
                client,
                insert,
                copy,
            }),
            Err(e) => Err(match classify(&e) {
                Failure::Fatal(f) => f,
                _ => SinkError::Transient {
                    op: "preparing the insert",
                    cause: describe(&e),
                },
            }),
        }
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

/// Column-major parameters for one statement.
/// A binary COPY in progress, fed row by row while the batch is transformed:
/// the server loads rows while the next ones are validated and masked.
pub struct CopyIn {
    writer: Pin<Box<BinaryCopyInWriter>>,
    bound: Duration,
    failure: Option<Failure>,
}

impl CopyIn {
    /// Queues one row (sent when the buffer fills). After a failure, later
    /// rows are ignored; [`PgSink::end_copy`] reports it.
    pub async fn write(&mut self, r: &LoginRow<'_>) {
        if self.failure.is_some() {
            return;
        }
        let (ip, device, locale) = (
            r.masked_ip.as_str(),
            r.masked_device_id.as_str(),
            r.locale.as_deref(),
        );
        let row: [&(dyn ToSql + Sync); 9] = [
            &r.message_id,
            &&*r.user_id,
            &&*r.device_type,
            &ip,
            &device,
            &locale,
            &r.app_version,
            &&*r.app_version_text,
            &r.create_date,
        ];
        self.failure = match timeout(self.bound, self.writer.as_mut().write(&row)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(classify(&e)),
            Err(_) => Some(no_answer(self.bound)),
        };
    }

    async fn finish(mut self) -> Result<u64, Failure> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        match timeout(self.bound, self.writer.as_mut().finish()).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(classify(&e)),
            Err(_) => Err(no_answer(self.bound)),
        }
    }
}

fn no_answer(bound: Duration) -> Failure {
    Failure::Transient(format!("no answer within {} ms", bound.as_millis()))
}

struct Columns<'r> {
    message_id: Vec<&'r str>,
    user_id: Vec<&'r str>,
    device_type: Vec<&'r str>,
    masked_ip: Vec<&'r str>,
    masked_device_id: Vec<&'r str>,
    locale: Vec<Option<&'r str>>,
    app_version: Vec<i32>,
    app_version_text: Vec<&'r str>,
    create_date: Vec<NaiveDate>,
}

impl<'r> Columns<'r> {
    fn from(rows: &'r [LoginRow<'_>]) -> Self {
        Self {
            message_id: rows.iter().map(|r| r.message_id).collect(),
            user_id: rows.iter().map(|r| &*r.user_id).collect(),
            device_type: rows.iter().map(|r| &*r.device_type).collect(),
            masked_ip: rows.iter().map(|r| r.masked_ip.as_str()).collect(),
            masked_device_id: rows.iter().map(|r| r.masked_device_id.as_str()).collect(),
            locale: rows.iter().map(|r| r.locale.as_deref()).collect(),
            app_version: rows.iter().map(|r| r.app_version).collect(),
            app_version_text: rows.iter().map(|r| &*r.app_version_text).collect(),
            create_date: rows.iter().map(|r| r.create_date).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.message_id,
            &self.user_id,
            &self.device_type,
            &self.masked_ip,
            &self.masked_device_id,
            &self.locale,
            &self.app_version,
            &self.app_version_text,
            &self.create_date,
        ]
    }
}

/// Sorts a statement failure by what can be done about it.
fn classify(e: &tokio_postgres::Error) -> Failure {
    let Some(state) = e.code() else {
        // I/O error, closed connection, protocol error: the connection is gone.
        return Failure::Transient(describe(e));
    };
    let code = state.code();
    match &code[..2] {
        // data exception, integrity constraint violation, PL/pgSQL raise
        // (triggers), program limit (e.g. index row too large): this row's fault.
        "22" | "23" | "P0" | "54" => Failure::Row(describe_refusal(e)),
        // connection exception, insufficient resources (too many connections),
        // operator intervention (shutdown, statement timeout), system error,
        // transaction rollback (deadlock, serialization), lock not available,
        // invalid authorization (password rotated), invalid transaction state.
        "08" | "53" | "57" | "58" | "40" | "55" | "28" | "25" | "XX" => {
            Failure::Transient(describe(e))
        }
        _ => Failure::Fatal(SinkError::Fatal {
            op: "the insert into user_logins",
            cause: describe(e),
            hint: match code {
                // undefined table / column, no unique index for ON CONFLICT
                "42P01" | "42703" | "42P10" => {
                    "; the schema is missing or not upgraded: run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true"
                }
                "42501" => {
                    "; the database role needs INSERT on user_logins and SELECT on its message_id column (see README)"
                }
                _ => "",
            },
        }),
    }
}

/// An error as text without `DETAIL`/`HINT`, which can quote row values.
/// Other errors (I/O, TLS) get their whole cause chain, which tokio-postgres's
/// `Display` leaves out.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("SQLSTATE {}: {}", db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

/// A refusal as SQLSTATE and constraint only: its message can name values.
fn describe_refusal(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.constraint() {
            Some(c) => format!("SQLSTATE {} on constraint {c}", db.code().code()),
            None => format!("SQLSTATE {}", db.code().code()),
        },
        None => describe(e),
    }
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
