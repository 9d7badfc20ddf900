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
//! - [`insert`]: one pipelined INSERT transaction (one round trip);
//! - [`copy`]: the COPY fast path for large batches, in its own transaction;
//! - [`tx`]: the frame both share: `BEGIN`, the erasure check, the end
//!   (vault entries + `COMMIT`), the xid floor;
//! - [`budget`]: the batch's deadline, its one reconnect, its conflict retries;
//! - [`classify`]: SQLSTATE classes (error text without row values is
//!   [`crate::error::describe`]).
//!
//! Guarantees (docs/semantics.md, "Delivery semantics"):
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
mod copy;
mod insert;
mod tx;
mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout;
use tokio_postgres::Client;
use tokio_postgres::types::Type;
use tracing::warn;

use crate::privacy::keys::{BatchKeys, ErasureList, KeyChecks, Keys, Versions};
pub use budget::Budget;
// The benches' floors and tests/common/turns.rs: the COPY's and the
// INSERT's own pieces.
#[cfg(feature = "test-support")]
pub use columns::{COPY_SQL, Columns, array_placeholders, encode_row};
#[cfg(feature = "test-support")]
pub use copy::{CHUNK, COPY_HEADER, CopyIn};

use crate::contract::LoginRow;
use crate::database::connector::Connector;
use crate::error::{DbError, Misconfiguration, describe};
use crate::privacy::keys::ErasedUsers;
use crate::privacy::vault::VaultWrite;
use crate::profile::Profile;
use crate::table::schema;
use classify::Failure;
use tx::XidFloor;

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
    /// The erasure list and its version (see [`PgSink::erased_users`]).
    erased: Option<ErasureList>,
    /// A write found it out of date: read what changed before the next use.
    erased_stale: bool,
    /// The schema of the owner's `user_logins`, which each write
    /// transaction pins (see [`tx::begin_sql`]); read with the schema check.
    tables_schema: String,
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
            erased: None,
            erased_stale: false,
            tables_schema: String::new(),
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
            erased: None,
            erased_stale: false,
            tables_schema: String::new(),
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

    /// Creates or upgrades the schema (see [`schema::migrate`]); true when
    /// it changed anything, false when it was current already.
    pub async fn migrate(&mut self, options: &schema::MigrateOptions) -> Result<bool, DbError> {
        let limit = self.connector.connect_timeout();
        let mut client = self.connector.open(limit).await?;
        let (num, version) = crate::database::server::server_version(&client)
            .await
            .map_err(|e| DbError::Transient {
                op: "reading the server version",
                cause: describe(&e),
            })?;
        schema::require_version(num, &version)?;
        let applied = schema::migrate(&mut client, options).await?;
        self.client = Some(client);
        Ok(applied)
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
        batch
            .finish(rows, erased_version, preserve_order, None)
            .await
    }

    /// Inserts `rows` by the INSERT path, bounded by `deadline`, with their
    /// vault entries (see [`BatchWriter::finish`]).
    pub async fn insert_until(
        &mut self,
        rows: &[LoginRow<'_>],
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

    /// The erasure list (user keys of users erased by `login-etl forget`),
    /// its version and the masking key's version, kept in memory: loaded on
    /// first use; after [`forget_erased`](Self::forget_erased), only the
    /// keys listed since are read. Each write checks in its own transaction
    /// that both versions are still current (one index probe, one row).
    pub async fn erased_users(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<ErasureList, DbError> {
        if let Some(list) = &self.erased
            && !self.erased_stale
        {
            return Ok(list.clone());
        }
        let known: i64 = self.erased.as_ref().map_or(0, |l| l.versions.erased);
        const OP: &str = "reading the erasure list";
        let budget = Budget::new(deadline);
        let bound = budget.bound(self.per_operation(), OP)?;
        self.client(&budget).await?;
        let (sql, erasure) = match self.profile {
            Profile::Full => (tx::ERASED_LIST_SQL, true),
            Profile::Masking => (tx::NO_ERASED_LIST_SQL, false),
        };
        let client = self.client.as_ref().expect("opened above");
        let row = timeout(bound, client.query_typed_one(sql, &[(&known, Type::INT8)]))
            .await
            .map_err(|_| DbError::Transient {
                op: OP,
                cause: format!("no answer within {} ms", bound.as_millis()),
            })?
            .map_err(|e| match classify::classify(&e) {
                Failure::Fatal(f) => f,
                _ => DbError::Transient {
                    op: OP,
                    cause: describe(&e),
                },
            })?;
        let key = row.get::<_, i16>(2) as u16;
        let keys: HashSet<String> = row.get::<_, Vec<String>>(1).into_iter().collect();
        let users = match &self.erased {
            Some(old) => old.users.with(keys),
            None => ErasedUsers::new(keys, row.get::<_, Option<i16>>(6).map_or(key, |v| v as u16)),
        };
        let list = ErasureList {
            versions: Versions {
                erased: row.get(0),
                key,
                checked_from: users.oldest.min(key),
            },
            users,
            checks: Arc::new(KeyChecks {
                masking: row.get(3),
                erasure: row.get(4),
                erasure_derived: row.get(5),
            }),
            erasure,
            key_changed_at: row.get(7),
        };
        self.erased = Some(list.clone());
        self.erased_stale = false;
        Ok(list)
    }

    /// Records the check values of `version`'s keys where the database has
    /// none yet, or refuses keys whose values differ (see [`KeyChecks`]);
    /// the in-memory list then holds them.
    pub async fn check_keys(
        &mut self,
        version: u16,
        masking: &str,
        erasure: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<(), DbError> {
        const OP: &str = "checking the masking and erasure keys against the database";
        let budget = Budget::new(deadline);
        let bound = budget.bound(self.per_operation(), OP)?;
        let client = self.client(&budget).await?;
        let v = version as i16;
        let done = timeout(
            bound,
            client.query_typed(
                tx::CHECK_KEYS_SQL,
                &[
                    (&v, Type::INT2),
                    (&masking, Type::TEXT),
                    (&erasure, Type::TEXT),
                ],
            ),
        )
        .await
        .map_err(|_| DbError::Transient {
            op: OP,
            cause: format!("no answer within {} ms", bound.as_millis()),
        })?;
        match done {
            Ok(_) => {
                // Recorded or equal: the list in memory holds them now.
                if let Some(list) = &mut self.erased {
                    list.checks = Arc::new(KeyChecks {
                        masking: Some(masking.to_owned()),
                        erasure: erasure.map(str::to_owned).or_else(|| list.checks.erasure.clone()),
                        erasure_derived: list.checks.erasure_derived,
                    });
                }
                Ok(())
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "LE004") => Err(DbError::Misconfigured {
                what: crate::error::Misconfiguration::KeyMismatch,
                op: OP,
                cause: e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default(),
                hint: "; nothing was written. A rotation appends a version to the masking and erasure secrets and never replaces one: put back the secret's previous value with the new version appended (docs/runbooks/leaked-key.md, \"The masking key leaked\")".into(),
            }),
            Err(e) => Err(match classify::classify(&e) {
                Failure::Fatal(f) => f,
                _ => DbError::Transient {
                    op: OP,
                    cause: describe(&e),
                },
            }),
        }
    }

    /// Drops the in-memory erasure list (a write found it out of date).
    /// On a masking-only database that means it was given the full
    /// profile since: the schema guard reads the profile again.
    pub fn forget_erased(&mut self) {
        self.erased_stale = true;
        if self.profile == Profile::Masking {
            self.schema_checked = false;
        }
    }

    /// A batch's keys: the erasure list (cached), `keys` checked against
    /// it, and the check values the database lacks recorded before anything
    /// is written with them ([`Keys::against`]). Without `record` only a
    /// difference is refused (`login-etl poll`'s start). An erasure key
    /// that does not match the list drops the cached list: what it held may
    /// be mended in the database since (a key version behind may not: the
    /// list already names the newer one).
    pub async fn batch_keys(
        &mut self,
        keys: &Keys,
        deadline: Option<Instant>,
        record: bool,
    ) -> Result<BatchKeys, DbError> {
        let list = self.erased_users(deadline).await?;
        let (batch, to_record) = match keys.against(list, record).await {
            Ok(checked) => checked,
            Err(refused) => {
                if matches!(
                    refused,
                    DbError::Misconfigured {
                        what: Misconfiguration::KeyMismatch,
                        ..
                    }
                ) {
                    self.forget_erased();
                }
                return Err(refused);
            }
        };
        if let Some(c) = to_record {
            self.check_keys(c.version, &c.masking, c.erasure.as_deref(), deadline)
                .await?;
        }
        Ok(batch)
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
