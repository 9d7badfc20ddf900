//! The PostgreSQL sink: validated rows into `user_logins`, exactly once per
//! SQS message, through a direct connection or a transaction-mode pooler
//! (RDS Proxy, PgBouncer) on the same code path.
//!
//! One file per concern:
//! - this file: the sink itself (its connection, the schema check, the
//!   erasure list) and its entry points;
//! - [`writer`]: one batch being written: COPY first for large batches,
//!   else (or on any refusal) the INSERT path;
//! - [`bisect`]: the INSERT path's policy: bisection around refused rows,
//!   retries, reconnects, the lost-reply recount;
//! - [`insert`]: one INSERT transaction (one round trip): one statement
//!   when it can be, else framed and pipelined;
//! - [`copy_in`]: the COPY fast path for large batches, in its own transaction;
//! - [`tx`]: the frame both share: `BEGIN`, the erasure check, the end
//!   (vault entries + `COMMIT`), the xid floor;
//! - [`budget`]: the batch's deadline, its one reconnect, its conflict retries;
//! - [`classify`]: SQLSTATE classes (error text without row values is
//!   [`crate::error::describe`]).
//!
//! Guarantees (docs/semantics.md, "Delivery semantics"):
//! - every write is a transaction of its own, and rows count as written
//!   only when the server has answered its end: its COMMIT, or the Sync
//!   that commits the INSERT path's one statement (an error raised at
//!   commit, such as a deferred constraint, is a failure);
//! - nothing survives a transaction on the server connection: no startup
//!   `options`, transaction-local bounds instead of session settings, unnamed statements
//!   (the COPY's too: vendor/tokio-postgres's `copy_in_unnamed`);
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
//!   ([`DbError`]) so the event-source mapping redelivers the batch;
//! - `ON CONFLICT DO NOTHING` on the key `(sent_at, message_id,
//!   create_date)` makes a redelivered batch complete exactly once: all
//!   three are the message's own (`SentTimestamp` is kept across
//!   redeliveries; a redriven copy carries its original's), never the time
//!   it was read; the schema guard refuses to write without that index.

mod bisect;
mod budget;
mod classify;
mod columns;
mod copy_in;
mod path;
mod insert;
mod tx;
mod writer;
pub(crate) use writer::BatchWriter;

use std::time::{Duration, Instant};

use tokio::time::timeout;
use tokio_postgres::Client;
use tracing::warn;

use crate::privacy::key_state::KeyState;
use crate::privacy::keys::{BatchKeys, Keys, Versions};
pub use budget::Budget;
// The benches' floors and tests/common/turns.rs: the COPY's and the
// INSERT's own pieces.
#[cfg(feature = "test-support")]
pub use columns::{COPY_SQL, Columns, array_placeholders, encode_row};
#[cfg(feature = "test-support")]
pub use copy_in::{CHUNK, COPY_HEADER, CopyIn};

use crate::contract::LoginRow;
use crate::database::connector::Connector;
use crate::error::{DbError, describe};
use crate::privacy::vault::VaultWrite;
use crate::profile::Profile;
use crate::table::schema;
use tx::XidFloor;

/// Batches at least this large try COPY first: from 200 rows the COPY path
/// saves more than its second round trip costs within an AZ (about 0.5 ms);
/// at 100 about as much. A whole redelivered batch pays a failed COPY
/// first, rare beside fresh ones. Figures: `FLOOR_CROSSOVER=41 cargo bench
/// --bench floor -- --short` (docs/performance.md, "The function").
pub const COPY_MIN_ROWS: usize = 200;

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
    /// `DB_STATEMENT_TIMEOUT_MS`: the server-side bound of each statement.
    statement_timeout: Duration,
    client: Option<Client>,
    /// Whether the schema guard has passed (checked once per sink).
    schema_checked: bool,
    /// Whether the PII vault's tables must exist too.
    vault: bool,
    /// The database's profile, as the schema guard found it: a
    /// masking-only database keeps no erasure list to read.
    profile: Profile,
    /// The xid floor after the last confirmed transaction: after a lost
    /// reply, rows newer than it are this sink's own.
    floor: Option<XidFloor>,
    /// The erasure list and the key state this connection read: privacy's
    /// ([`KeyState`]), on the connection the sink lends it.
    key_state: KeyState,
    /// The schema of the owner's `user_logins`, which each write
    /// transaction pins (see [`tx::begin_sql`]); read with the schema check.
    tables_schema: String,
    /// Every INSERT of this connection takes the framed transaction: its
    /// one-statement write was refused for the isolation level a role
    /// stored since the connection's check (`insert::write_alone`).
    frame_writes: bool,
}

impl std::fmt::Debug for PgSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSink")
            .field("connector", &self.connector)
            .finish_non_exhaustive()
    }
}

impl PgSink {
    /// A sink that opens its connections with `connector`, each
    /// statement bounded by `statement_timeout`; connects lazily.
    pub fn new(connector: Connector, statement_timeout: Duration) -> Self {
        Self {
            connector,
            statement_timeout,
            client: None,
            schema_checked: false,
            vault: false,
            profile: Profile::Full,
            floor: None,
            key_state: KeyState::default(),
            tables_schema: String::new(),
            frame_writes: false,
        }
    }

    /// Another sink with the same settings and a connection of its own
    /// (`login-etl poll` writes several batches at once, one per connection).
    pub fn sibling(&self) -> Self {
        Self {
            connector: self.connector.clone(),
            statement_timeout: self.statement_timeout,
            client: None,
            schema_checked: false,
            vault: self.vault,
            profile: self.profile,
            floor: None,
            key_state: KeyState::default(),
            tables_schema: String::new(),
            frame_writes: false,
        }
    }

    /// Whether the database answers: the schema check on a new connection,
    /// then `SELECT 1`, within the per-operation bound (the health
    /// endpoint's readiness).
    pub async fn ping(&mut self) -> Result<(), DbError> {
        const OP: &str = "checking that the database answers";
        let bound = self.per_operation();
        let budget = Budget::new(None);
        let client = self.client(&budget).await?;
        match timeout(bound, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let cause = describe(&e);
                self.client = None;
                Err(DbError::Transient { op: OP, cause })
            }
            Err(_) => {
                self.client = None;
                Err(DbError::Transient {
                    op: OP,
                    cause: format!("no answer within {} ms", bound.as_millis()),
                })
            }
        }
    }

    /// Whole days after `today` with a partition ready
    /// ([`crate::table::partitions::days_ahead`]); `None` for a table
    /// without range partitions. One catalog read, within the
    /// per-operation bound and the batch's `deadline`.
    pub async fn partition_days_ahead(
        &mut self,
        today: chrono::NaiveDate,
        deadline: Option<std::time::Instant>,
    ) -> Result<Option<i64>, DbError> {
        const OP: &str = "reading the partitions made ahead";
        let budget = Budget::new(deadline);
        let bound = budget.bound(self.per_operation(), OP)?;
        let client = self.client(&budget).await?;
        match timeout(bound, crate::table::partitions::partitions(client)).await {
            Ok(Ok(listed)) => Ok(crate::table::partitions::days_ahead(&listed, today)),
            Ok(Err(e)) => Err(DbError::Transient {
                op: OP,
                cause: describe(&e),
            }),
            Err(_) => Err(DbError::Transient {
                op: OP,
                cause: format!("no answer within {} ms", bound.as_millis()),
            }),
        }
    }

    /// Requires the PII vault's tables at the schema check (the handler
    /// writes vault entries).
    pub fn with_vault_tables(mut self) -> Self {
        self.vault = true;
        self
    }

    /// `user@host:port/dbname`, safe to log (no password).
    pub fn target(&self) -> &str {
        self.connector.target()
    }

    /// What it opens its connections with (a password refetched through
    /// it stays its own).
    pub fn connector_mut(&mut self) -> &mut Connector {
        &mut self.connector
    }

    /// Takes `client` as its connection (one `migrate` opened at a cold
    /// start: the first batch needs no connect of its own).
    pub fn adopt(&mut self, client: Client) {
        self.client = Some(client);
    }

    /// Inserts `rows` with no deadline but the per-operation bounds (see
    /// [`start_batch`](Self::start_batch) for the semantics). A test hook:
    /// the handler writes through [`start_batch`](Self::start_batch).
    #[cfg(any(test, feature = "test-support"))]
    pub async fn insert(
        &mut self,
        rows: &[LoginRow<'_>],
        erased_version: Versions,
        preserve_order: bool,
    ) -> Result<InsertReport, DbError> {
        let mut batch = self.start_batch(rows.len(), None).await?;
        for row in rows {
            batch.push(row).await;
        }
        let rows: Vec<&LoginRow<'_>> = rows.iter().collect();
        batch
            .finish(&rows, erased_version, preserve_order, None)
            .await
    }

    /// Inserts `rows` by the INSERT path, bounded by `deadline`, with their
    /// vault entries (see [`BatchWriter::finish`]).
    pub async fn insert_until(
        &mut self,
        rows: &[&LoginRow<'_>],
        erased_version: Versions,
        preserve_order: bool,
        vault: Option<VaultWrite<'_>>,
        deadline: Option<Instant>,
    ) -> Result<InsertReport, DbError> {
        let batch = self.start_batch(0, deadline).await?;
        batch
            .finish(rows, erased_version, preserve_order, vault)
            .await
    }

    /// Drops the erasure list kept (a write found it out of date). On a
    /// masking-only database that means it was given the full profile
    /// since: the schema guard reads the profile again.
    pub fn forget_erased(&mut self) {
        self.key_state.forget();
        if self.profile == Profile::Masking {
            self.schema_checked = false;
        }
    }

    /// Drops the key state kept, and nothing else: the next batch's keys
    /// are read from the database (a record names a key version newer than
    /// the one kept).
    pub fn forget_key_state(&mut self) {
        self.key_state.forget();
    }

    /// A batch's keys: from the list kept when it answers alone
    /// ([`KeyState::kept`]: no connection needed), else read and recorded
    /// on this sink's connection within `deadline` ([`KeyState::batch`]);
    /// without `record` only a difference is refused (`login-etl poll`'s
    /// start). Keys that do not match on a masking-only database make the
    /// schema guard read the profile again, as [`forget_erased`](Self::forget_erased) does.
    pub async fn batch_keys(
        &mut self,
        keys: &Keys,
        deadline: Option<Instant>,
        record: bool,
    ) -> Result<BatchKeys, DbError> {
        let answer = match self.key_state.kept(keys, record).await {
            Some(answer) => answer,
            None => {
                let budget = Budget::new(deadline);
                budget.bound(self.per_operation(), "reading the erasure list")?;
                self.client(&budget).await?;
                let client = self.client.as_ref().expect("opened above");
                let per_statement = self.per_operation();
                self.key_state
                    .batch(client, self.profile, keys, record, per_statement, deadline)
                    .await
            }
        };
        if let Err(DbError::Misconfigured {
            what: crate::error::Misconfiguration::KeyMismatch,
            ..
        }) = &answer
            && self.profile == Profile::Masking
        {
            self.schema_checked = false;
        }
        answer
    }

    /// Client-side bound of one operation: the server's bound plus room to connect.
    fn per_operation(&self) -> Duration {
        self.statement_timeout + self.connector.connect_timeout()
    }

    /// The server-side bound (`SET LOCAL`) that fits in a client-side `bound`.
    fn server_bound(&self, bound: Duration) -> Duration {
        self.statement_timeout.min(bound)
    }

    /// A write transaction's `BEGIN` within a client-side `bound` (see
    /// [`tx::begin_sql`]): after [`client`](Self::client), which resolved
    /// the tables' schema.
    fn begin_sql(&self, bound: Duration) -> String {
        tx::begin_sql(self.server_bound(bound), &self.tables_schema)
    }

    /// The open connection, opening one if there is none or it was closed
    /// (an idle timeout between warm invocations, a failover). The first
    /// connection of the sink also checks the schema.
    async fn client(&mut self, budget: &Budget) -> Result<&Client, DbError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let limit =
                budget.bound(self.connector.connect_timeout(), "connecting to PostgreSQL")?;
            self.client = Some(self.connector.open(limit).await?);
            self.frame_writes = false;
        }
        if !self.schema_checked {
            let bound = self.per_operation();
            let client = self.client.as_ref().expect("connection was just opened");
            let (checked, tables_schema) = tokio::join!(
                schema::check(client, bound, self.vault),
                timeout(bound, tx::tables_schema(client))
            );
            let checked = checked?;
            self.tables_schema = match tables_schema {
                Ok(Ok(Some(found))) => found,
                Ok(Ok(None)) => {
                    return Err(DbError::Misconfigured {
                        what: crate::error::Misconfiguration::SchemaIncomplete,
                        op: "writing into user_logins",
                        cause: "no user_logins table in a schema this role may use".into(),
                        hint: "; grant the role USAGE on the tables' schema (`login-etl grants --role ingest`) or run `login-etl migrate`".into(),
                    });
                }
                Ok(Err(e)) => {
                    return Err(DbError::Transient {
                        op: "finding the tables' schema",
                        cause: describe(&e),
                    });
                }
                Err(_) => {
                    return Err(DbError::Transient {
                        op: "finding the tables' schema",
                        cause: format!("no answer within {} ms", bound.as_millis()),
                    });
                }
            };
            self.floor = checked.floor.as_deref().and_then(XidFloor::parse);
            self.profile = checked.profile;
            self.schema_checked = true;
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
    ) -> Result<(), DbError> {
        self.client = None;
        if !budget.take_reconnect() {
            return Err(DbError::Transient { op, cause });
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
}
