//! The PostgreSQL sink: validated rows into `user_logins`, exactly once per
//! SQS message, through a direct connection or a transaction-mode pooler
//! (RDS Proxy, PgBouncer) on the same code path.
//!
//! One file per concern:
//! - [`conn`]: opening connections (TLS, credential refresh, startup packet);
//! - [`budget`]: the batch's deadline, its one reconnect, its conflict retries;
//! - [`insert`]: one pipelined INSERT transaction (one round trip);
//! - [`copy`]: the COPY fast path for large batches, in its own transaction;
//! - [`classify`]: SQLSTATE classes and error text without row values;
//! - this file: the policy that ties them together.
//!
//! Guarantees (design.md section 3):
//! - every write is an explicit transaction, and rows count as written only
//!   when the server has answered its COMMIT (an error raised at COMMIT,
//!   such as a deferred constraint, is a failure);
//! - nothing survives a transaction on the server connection: no startup
//!   `options`, `SET LOCAL` instead of session settings, unnamed statements
//!   (the COPY's prepared statement is closed inside its transaction);
//! - large batches ([`COPY_MIN_ROWS`]) try one binary COPY first; a COPY is
//!   all-or-nothing and has no `ON CONFLICT`, so on any refusal, duplicate or
//!   COMMIT-time error the batch takes the INSERT path, which sorts it out;
//! - a refused row (data or constraint error, also at COMMIT) bisects the
//!   batch so only the offending rows fail: k bad rows in n cost O(k log n)
//!   statements;
//! - a conflict (deadlock, serialization failure, lock or statement timeout)
//!   is retried on the same connection, a few times;
//! - a lost connection reconnects once and retries; a second loss, or too
//!   little time before the invocation's deadline, fails the invocation
//!   ([`SinkError`]) so the event-source mapping redelivers the batch;
//! - `ON CONFLICT (message_id) DO NOTHING` makes a redelivered batch complete
//!   exactly once; the schema guard refuses to write without a valid unique
//!   index on `message_id`.

mod budget;
mod classify;
mod conn;
mod copy;
mod insert;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout;
use tokio_postgres::Client;
use tracing::{debug, trace, warn};

pub use budget::{Budget, CONFLICT_RETRIES, DEADLINE_MARGIN};
pub use classify::describe;
pub use copy::{COPY_SQL, COPY_TYPES, CopyIn};
pub use insert::INSERT_SQL;

use crate::config::DbConfig;
use crate::error::SinkError;
use crate::record::LoginRow;
use crate::schema;
use crate::secrets::Secrets;
use crate::tls::Tls;
use crate::vault::VaultWrite;
use classify::Failure;
use conn::Connector;
use insert::VaultRows;

/// Batches at least this large try COPY first. Below it the INSERT's single
/// round trip wins (COPY needs three); see benches/batch_pg.rs.
pub const COPY_MIN_ROWS: usize = 500;

/// Pause before the one reconnect, so a server that is restarting or out of
/// connection slots gets a moment.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Pause before retrying a conflict (deadlock, serialization failure).
const CONFLICT_PAUSE: Duration = Duration::from_millis(50);

/// What one batch did in the database.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InsertReport {
    /// Rows written by this invocation (including rows its own attempt
    /// committed before a lost reply).
    pub inserted: u64,
    /// Rows committed earlier (same `message_id`): success, no new row.
    pub duplicates: u64,
    /// Indices (into the rows given) of rows the database refused, ascending.
    pub refused: Vec<usize>,
    /// The SQLSTATE of each refused row, in the order of `refused`.
    pub refused_codes: Vec<String>,
    /// Transactions tried (1 when nothing was refused).
    pub statements: u32,
    /// Whether the rows went in by the COPY fast path.
    pub copied: bool,
}

/// Writes validated rows into `user_logins`. Holds at most one connection,
/// reused across warm invocations.
pub struct PgSink {
    connector: Connector,
    settings: DbConfig,
    client: Option<Client>,
    /// Whether the schema guard has passed (checked once per sink).
    schema_checked: bool,
    /// Whether the PII vault's tables must exist too.
    vault: bool,
    /// The xid floor after the last confirmed transaction (see
    /// [`insert::COMMIT_SQL`]): after a lost reply, rows newer than it are
    /// this sink's own.
    floor: Option<String>,
    /// The erasure list and its version (see [`PgSink::erased_users`]).
    erased: Option<(i64, Arc<HashSet<String>>)>,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// A sink for the given connection settings; connects lazily.
    pub fn new(pg: tokio_postgres::Config, db: &DbConfig, tls: Tls) -> Self {
        Self {
            connector: Connector::new(pg, tls, db.connect_timeout),
            settings: db.clone(),
            client: None,
            schema_checked: false,
            vault: false,
            floor: None,
            erased: None,
        }
    }

    /// Another sink with the same settings and a connection of its own
    /// (`login-etl poll` writes several batches at once, one per connection).
    pub fn sibling(&self) -> Self {
        Self {
            connector: self.connector.clone(),
            settings: self.settings.clone(),
            client: None,
            schema_checked: false,
            vault: self.vault,
            floor: None,
            erased: None,
        }
    }

    /// Whether the database answers: the schema check on a new connection,
    /// then `SELECT 1`, within the per-operation bound (the health
    /// endpoint's readiness).
    pub async fn ping(&mut self) -> Result<(), SinkError> {
        const OP: &str = "checking that the database answers";
        let bound = self.per_operation();
        let budget = Budget::new(None);
        let client = self.client(&budget).await?;
        match timeout(bound, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let cause = describe(&e);
                self.client = None;
                Err(SinkError::Transient { op: OP, cause })
            }
            Err(_) => {
                self.client = None;
                Err(SinkError::Transient {
                    op: OP,
                    cause: format!("no answer within {} ms", bound.as_millis()),
                })
            }
        }
    }

    /// Requires the PII vault's tables at the schema check (the handler
    /// writes vault entries).
    pub fn with_vault_tables(mut self) -> Self {
        self.vault = true;
        self
    }

    /// When PostgreSQL rejects the password (SQLSTATE 28P01, e.g. after a
    /// rotation), refetch the database secret `id` once and reconnect.
    pub fn refresh_credentials_from(mut self, secrets: Secrets, id: String) -> Self {
        self.connector.refresh_credentials_from(secrets, id);
        self
    }

    /// `user@host:port/dbname`, safe to log (no password).
    pub fn target(&self) -> &str {
        self.connector.target()
    }

    /// A new connection of its own with these settings (operator commands).
    pub async fn connect(&mut self) -> Result<Client, SinkError> {
        self.connector.open(self.settings.connect_timeout).await
    }

    /// Creates or upgrades the schema (see [`schema::migrate`]); true when
    /// it changed anything, false when it was current already.
    pub async fn migrate(&mut self) -> Result<bool, SinkError> {
        let mut client = self.connector.open(self.settings.connect_timeout).await?;
        let (num, version) =
            schema::server_version(&client)
                .await
                .map_err(|e| SinkError::Transient {
                    op: "reading the server version",
                    cause: describe(&e),
                })?;
        schema::require_version(num, &version)?;
        let applied =
            schema::migrate(&mut client)
                .await
                .map_err(|e| match classify::classify(&e) {
                    Failure::Fatal(f) => f,
                    _ => SinkError::Transient {
                        op: "applying the schema",
                        cause: describe(&e),
                    },
                })?;
        self.client = Some(client);
        Ok(applied)
    }

    /// Inserts `rows` with no deadline but the per-operation bounds (see
    /// [`start_batch`](Self::start_batch) for the semantics).
    pub async fn insert(
        &mut self,
        rows: &[LoginRow<'_>],
        erased_version: i64,
        preserve_order: bool,
    ) -> Result<InsertReport, SinkError> {
        let mut batch = self.start_batch(rows.len(), None).await?;
        for row in rows {
            batch.push(row).await;
        }
        batch
            .finish(rows, erased_version, preserve_order, None)
            .await
    }

    /// Inserts `rows` by the INSERT path, bounded by `deadline`, with their
    /// vault entries (see [`BatchWriter::finish`]).
    pub async fn insert_until(
        &mut self,
        rows: &[LoginRow<'_>],
        erased_version: i64,
        preserve_order: bool,
        vault: Option<VaultWrite<'_>>,
        deadline: Option<Instant>,
    ) -> Result<InsertReport, SinkError> {
        let batch = self.start_batch(0, deadline).await?;
        batch
            .finish(rows, erased_version, preserve_order, vault)
            .await
    }

    /// The erasure list (user keys of users erased by `login-etl forget`)
    /// and its version, kept in memory: loaded on first use and again after
    /// [`forget_erased`](Self::forget_erased). Each write checks in its own
    /// transaction that the version is still current (one index probe).
    pub async fn erased_users(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(i64, Arc<HashSet<String>>), SinkError> {
        if let Some((version, set)) = &self.erased {
            return Ok((*version, Arc::clone(set)));
        }
        const OP: &str = "reading the erasure list";
        let budget = Budget::new(deadline);
        let bound = budget.bound(self.per_operation(), OP)?;
        let client = self.client(&budget).await?;
        let row = timeout(bound, client.query_typed_one(insert::ERASED_LIST_SQL, &[]))
            .await
            .map_err(|_| SinkError::Transient {
                op: OP,
                cause: format!("no answer within {} ms", bound.as_millis()),
            })?
            .map_err(|e| match classify::classify(&e) {
                Failure::Fatal(f) => f,
                _ => SinkError::Transient {
                    op: OP,
                    cause: describe(&e),
                },
            })?;
        let version: i64 = row.get(0);
        let keys: Vec<String> = row.get(1);
        let set = Arc::new(keys.into_iter().collect::<HashSet<String>>());
        self.erased = Some((version, Arc::clone(&set)));
        Ok((version, set))
    }

    /// Drops the in-memory erasure list (a write found it out of date).
    pub fn forget_erased(&mut self) {
        self.erased = None;
    }

    /// Starts writing a batch of about `expected_rows` rows that must be done
    /// by `deadline` (the invocation's). Large batches open a COPY that
    /// [`BatchWriter::push`] feeds while the caller transforms the next rows.
    pub async fn start_batch(
        &mut self,
        expected_rows: usize,
        deadline: Option<Instant>,
    ) -> Result<BatchWriter<'_>, SinkError> {
        let mut budget = Budget::new(deadline);
        let copy_tried = expected_rows >= COPY_MIN_ROWS;
        let copy = if copy_tried {
            self.begin_copy(&mut budget).await?
        } else {
            None
        };
        Ok(BatchWriter {
            sink: self,
            budget,
            copy,
            copy_tried,
            pushed: 0,
        })
    }

    /// Client-side bound of one operation: the server's bound plus room to connect.
    fn per_operation(&self) -> Duration {
        self.settings.statement_timeout + self.settings.connect_timeout
    }

    /// The server-side bound (`SET LOCAL`) that fits in a client-side `bound`.
    fn server_bound(&self, bound: Duration) -> Duration {
        self.settings.statement_timeout.min(bound)
    }

    /// The open connection, opening one if there is none or it was closed
    /// (an idle timeout between warm invocations, a failover). The first
    /// connection of the sink also checks the schema.
    async fn client(&mut self, budget: &Budget) -> Result<&Client, SinkError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let limit = budget.bound(self.settings.connect_timeout, "connecting to PostgreSQL")?;
            let client = self.connector.open(limit).await?;
            if !self.schema_checked {
                self.floor = schema::check(&client, self.per_operation(), self.vault).await?;
                self.schema_checked = true;
            }
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("connection was just opened"))
    }

    /// Drops the broken connection and takes the batch's one reconnect, or
    /// fails the invocation when it was used.
    async fn reconnect_or_fail(
        &mut self,
        budget: &mut Budget,
        op: &'static str,
        cause: String,
    ) -> Result<(), SinkError> {
        self.client = None;
        if !budget.take_reconnect() {
            return Err(SinkError::Transient { op, cause });
        }
        warn!(error = %cause, "database connection failed while {op}; reconnecting once");
        tokio::time::sleep(RECONNECT_PAUSE).await;
        Ok(())
    }

    /// Ends a failed transaction so the connection can serve the next one;
    /// drops the connection if it cannot.
    async fn rollback(&mut self) {
        let limit = self.per_operation();
        if let Some(client) = &self.client
            && !matches!(
                timeout(limit, client.batch_execute("ROLLBACK")).await,
                Ok(Ok(()))
            )
        {
            self.client = None;
        }
    }

    async fn begin_copy(&mut self, budget: &mut Budget) -> Result<Option<CopyIn>, SinkError> {
        const OP: &str = "starting the COPY";
        let bound = budget.bound(self.per_operation(), OP)?;
        let server = self.server_bound(bound);
        let failure = match self.client(budget).await {
            Ok(client) => match CopyIn::begin(client, server, bound).await {
                Ok(copy) => return Ok(Some(copy)),
                Err(failure) => failure,
            },
            Err(e) if e.is_retryable() && !matches!(e, SinkError::Deadline { .. }) => {
                Failure::Transient(e.to_string())
            }
            Err(e) => return Err(e),
        };
        self.copy_failed(failure, budget, OP).await?;
        Ok(None)
    }

    /// Commits the COPY: `Ok(report)` when every row went in; otherwise the
    /// rows must take the INSERT path, with the xid floor to recount from
    /// when the COMMIT's outcome is unknown.
    async fn end_copy(
        &mut self,
        copy: CopyIn,
        budget: &mut Budget,
        vault: Option<VaultRows<'_>>,
        erased_version: i64,
    ) -> Result<Result<InsertReport, Option<String>>, SinkError> {
        let floor_before = self.floor.clone();
        let Some(client) = self.client.as_ref() else {
            return Ok(Err(None));
        };
        match copy.commit(client, vault.as_ref(), erased_version).await {
            Ok((inserted, floor)) => {
                if floor.is_some() {
                    self.floor = floor;
                }
                Ok(Ok(InsertReport {
                    inserted,
                    statements: 1,
                    copied: true,
                    ..InsertReport::default()
                }))
            }
            Err(failed) => {
                self.copy_failed(failed.failure, budget, "committing the COPY")
                    .await?;
                Ok(Err(floor_before.filter(|_| failed.outcome_unknown)))
            }
        }
    }

    async fn copy_failed(
        &mut self,
        failure: Failure,
        budget: &mut Budget,
        op: &'static str,
    ) -> Result<(), SinkError> {
        match failure {
            Failure::Transient(cause) => return self.reconnect_or_fail(budget, op, cause).await,
            // A refused or duplicate row, a conflict; or permissions / schema,
            // which the INSERT path reports with its hint.
            Failure::Row(why) | Failure::Conflict(why) => {
                debug!(error = %why, "COPY refused; inserting with ON CONFLICT instead")
            }
            Failure::Fatal(e) => debug!(error = %e, "COPY failed; inserting instead"),
            Failure::RecountDenied => debug!("COPY failed; inserting instead"),
            // The INSERT path meets the same refusal and reports it.
            Failure::Erased => debug!("COPY refused: the batch holds an erased user"),
        }
        self.rollback().await;
        Ok(())
    }

    /// The INSERT path: the rows in one transaction, bisecting around refused
    /// rows. With `preserve_order` (FIFO) it stops at the first refused row:
    /// every row before it is committed, none after it is attempted.
    /// `recount_since`: the xid floor before an attempt whose outcome is
    /// unknown (see [`insert::insert_tx`]).
    async fn insert_rows(
        &mut self,
        rows: &[LoginRow<'_>],
        erased_version: i64,
        preserve_order: bool,
        budget: &mut Budget,
        recount_since: Option<String>,
        vault: Option<VaultWrite<'_>>,
    ) -> Result<InsertReport, SinkError> {
        const OP: &str = "inserting the batch";
        let mut report = InsertReport::default();
        let mut committed = 0usize;
        // Ranges to try, popped in batch order (right half pushed first).
        let mut todo: Vec<(Range<usize>, Option<String>)> = vec![(0..rows.len(), recount_since)];
        while let Some((range, recount)) = todo.pop() {
            if range.is_empty() {
                continue;
            }
            let bound = budget.bound(self.per_operation(), OP)?;
            let server = self.server_bound(bound);
            report.statements += 1;
            trace!(first = range.start, rows = range.len(), "inserting");
            if let Err(e) = self.client(budget).await {
                if !e.is_retryable() || matches!(e, SinkError::Deadline { .. }) {
                    return Err(e);
                }
                // Nothing was sent: nothing to recount.
                self.reconnect_or_fail(budget, OP, e.to_string()).await?;
                todo.push((range, recount));
                continue;
            }
            // The floor this attempt is recounted from, were its reply lost
            // (read after connecting: the first connection sets it).
            let since = recount.clone().or_else(|| self.floor.clone());
            let client = self.client.as_ref().expect("connected above");
            // The vault entries of exactly these rows commit with them.
            let vault_rows = vault.map(|v| VaultRows {
                key: v.key,
                entries: v.batch.entries_for(range.clone()),
            });
            let attempt = insert::insert_tx(
                client,
                &rows[range.clone()],
                erased_version,
                server,
                bound,
                recount.as_deref(),
                vault_rows.as_ref(),
            )
            .await;
            match attempt {
                Ok(done) => {
                    report.inserted += done.inserted;
                    committed += range.len();
                    if done.floor.is_some() {
                        self.floor = done.floor;
                    }
                }
                Err(Failure::Row(why)) if range.len() == 1 => {
                    warn!(
                        message_id = rows[range.start].message_id,
                        error = %why,
                        "row refused by the database"
                    );
                    report.refused.push(range.start);
                    report.refused_codes.push(classify::sqlstate_of(&why));
                    if preserve_order {
                        // Rows after it stay unattempted; the caller reports them.
                        break;
                    }
                }
                Err(Failure::Row(_)) => {
                    let mid = range.start + range.len() / 2;
                    todo.push((mid..range.end, recount.clone()));
                    todo.push((range.start..mid, recount));
                }
                Err(Failure::Conflict(cause)) => {
                    if !budget.take_conflict_retry() {
                        return Err(SinkError::Transient {
                            op: "inserting the batch (conflicts with other transactions kept recurring)",
                            cause,
                        });
                    }
                    debug!(error = %cause, "conflict with another transaction; retrying on the same connection");
                    tokio::time::sleep(CONFLICT_PAUSE).await;
                    todo.push((range, recount));
                }
                Err(Failure::Transient(cause)) => {
                    // The COMMIT may have landed: recount from before it.
                    self.reconnect_or_fail(budget, OP, cause).await?;
                    todo.push((range, since));
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Erased) => {
                    self.rollback().await;
                    return Err(SinkError::UsersErased);
                }
                Err(Failure::RecountDenied) => {
                    warn!(
                        "the database role may not read user_logins.xmin, so rows a lost attempt committed count as duplicates; GRANT SELECT (message_id, xmin) ON user_logins to count them as inserted"
                    );
                    todo.push((range, None));
                }
            }
        }
        report.duplicates = (committed as u64).saturating_sub(report.inserted);
        Ok(report)
    }
}

/// One batch being written: see [`PgSink::start_batch`].
pub struct BatchWriter<'s> {
    sink: &'s mut PgSink,
    budget: Budget,
    copy: Option<CopyIn>,
    copy_tried: bool,
    /// Rows handed to the COPY.
    pushed: usize,
}

impl BatchWriter<'_> {
    /// Hands one row to the COPY, if one is open (the rows given to
    /// [`finish`](Self::finish) must be these, or a prefix of them: then
    /// the COPY is abandoned and the prefix takes the INSERT path).
    pub async fn push(&mut self, row: &LoginRow<'_>) {
        if let Some(copy) = self.copy.as_mut() {
            copy.write(row).await;
            self.pushed += 1;
        }
    }

    /// Commits the batch: the COPY if one is open and every row went in,
    /// else `rows` by the INSERT path. With `vault`, each transaction also
    /// writes the vault entries of its rows (`vault.batch` was filled in
    /// the order of `rows`), so a row never commits without them.
    ///
    /// `erased_version` is the version of the erasure list the rows were
    /// filtered with ([`PgSink::erased_users`]): if the list has changed
    /// since, the transaction is refused with nothing written
    /// ([`SinkError::UsersErased`]) and the caller filters again.
    pub async fn finish(
        mut self,
        rows: &[LoginRow<'_>],
        erased_version: i64,
        preserve_order: bool,
        vault: Option<VaultWrite<'_>>,
    ) -> Result<InsertReport, SinkError> {
        let mut recount_since = None;
        if self.copy.is_some() && self.pushed != rows.len() {
            // The caller held back rows it had already streamed (a FIFO
            // batch whose rejected record's DLQ copy was refused): the COPY
            // holds rows that must not commit. Dropping it aborts it
            // (CopyFail); the INSERT path writes `rows`.
            debug!(
                pushed = self.pushed,
                rows = rows.len(),
                "COPY abandoned; inserting the rows kept"
            );
            drop(self.copy.take());
            self.sink.rollback().await;
        }
        if let Some(copy) = self.copy.take() {
            let vault_rows = vault.map(|v| VaultRows {
                key: v.key,
                entries: v.batch.entries_for(0..rows.len()),
            });
            match self
                .sink
                .end_copy(copy, &mut self.budget, vault_rows, erased_version)
                .await?
            {
                Ok(report) => return Ok(report),
                Err(floor) => recount_since = floor,
            }
        }
        if rows.is_empty() {
            return Ok(InsertReport::default());
        }
        let mut report = self
            .sink
            .insert_rows(
                rows,
                erased_version,
                preserve_order,
                &mut self.budget,
                recount_since,
                vault,
            )
            .await?;
        report.statements += u32::from(self.copy_tried);
        Ok(report)
    }
}
