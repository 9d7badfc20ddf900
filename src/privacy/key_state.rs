//! The erasure list and the key state as this process last read them from
//! the database, kept beside the connection that read them: what a batch's
//! keys are checked against ([`Keys::against`]), and the check values a
//! program records the first time it writes with a key version. Read and
//! recorded on a connection the caller lends (the ingest sink's), through
//! [`Statement`]s, as `forget` and `rotate-key` read theirs: the sink
//! writes rows, and what it writes them with is privacy's.
//!
//! In memory between batches: the write transaction checks, in the same
//! round trip as the write, that the list's version and the key version
//! are still current (`login_etl_check_write`), and a batch found out of
//! date reads what changed ([`KeyState::forget`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::timeout_at;
use tokio_postgres::Client;
use tokio_postgres::types::Type;

use crate::database::sqlstate::{Class, Own, names_own_function};
use crate::database::statement::{Failed, Statement};
use crate::error::{DbError, Misconfiguration, describe};
use crate::privacy::keys::{BatchKeys, ChecksToRecord, ErasedUsers, ErasureList, KeyChecks, Keys, Versions};
use crate::profile::Profile;

/// The erasure list's keys listed after version `$1` (0: all of them), its
/// version and the key's state, in one statement (one snapshot).
const ERASURE_LIST: Statement = Statement::new(
    "SELECT coalesce((SELECT max(seq) FROM user_logins_erased), 0), \
     coalesce((SELECT array_agg(user_key) FROM user_logins_erased WHERE seq > $1), '{}'), \
     k.version, k.masking_check, k.erasure_check, k.erasure_derived, k.rekey_from, login_etl_key_changed_at() \
     FROM login_etl_key_state() k",
    &[Type::INT8],
    "reading the erasure list",
);

/// [`ERASURE_LIST`]'s answer on a masking-only database, which keeps no
/// erasure list: none, at version 0, and the key's state.
const NO_ERASURE_LIST: Statement = Statement::new(
    "SELECT $1::int8 * 0, '{}'::text[], \
     k.version, k.masking_check, k.erasure_check, k.erasure_derived, k.rekey_from, login_etl_key_changed_at() \
     FROM login_etl_key_state() k",
    &[Type::INT8],
    "reading the erasure list",
);

/// Records or compares the check values of `version`'s keys (SQLSTATE
/// `Own::KeysDiffer` when they differ from those recorded).
const CHECK_KEYS: Statement = Statement::new(
    "SELECT login_etl_check_keys($1::int2, $2, $3)",
    &[Type::INT2, Type::TEXT, Type::TEXT],
    "checking the masking and erasure keys against the database",
);

/// The erasure list and the key state of one connection (see the module).
#[derive(Debug, Default)]
pub struct KeyState {
    list: Option<ErasureList>,
    /// A write found the list out of date: read what changed before the next use.
    stale: bool,
}

impl KeyState {
    /// A batch's keys from the list kept, when it is current and nothing
    /// needs recording: no connection asked for, so a database that is down
    /// leaves a batch filtered by the erasure list all the same (its
    /// rejects are checked against it before any goes to the DLQ). `None`:
    /// ask [`batch`](Self::batch).
    pub async fn kept(&mut self, keys: &Keys, record: bool) -> Option<Result<BatchKeys, DbError>> {
        let list = self.list.clone().filter(|_| !self.stale)?;
        match self.against(keys, list, record).await {
            Ok((batch, None)) => Some(Ok(batch)),
            Ok((_, Some(_))) => None,
            Err(refused) => Some(Err(refused)),
        }
    }

    /// A batch's keys: the erasure list (kept in memory), `keys` checked
    /// against it, and the check values the database lacks recorded before
    /// anything is written with them ([`Keys::against`]). Without `record`
    /// only a difference is refused (`login-etl poll`'s start). Each
    /// statement, on `client`, answers within `per_statement`, and by
    /// `deadline`.
    #[allow(clippy::too_many_arguments)]
    pub async fn batch(
        &mut self,
        client: &Client,
        profile: Profile,
        keys: &Keys,
        record: bool,
        per_statement: Duration,
        deadline: Option<Instant>,
    ) -> Result<BatchKeys, DbError> {
        let until = || {
            let bound = Instant::now() + per_statement;
            deadline.map_or(bound, |d| d.min(bound))
        };
        let list = self.erasure_list(client, profile, until()).await?;
        let (batch, to_record) = self.against(keys, list, record).await?;
        if let Some(c) = to_record {
            self.record_checks(client, c.version, &c.masking, c.erasure.as_deref(), until())
                .await?;
        }
        Ok(batch)
    }

    /// `keys` against `list` ([`Keys::against`]). An erasure key that does
    /// not match the list drops the list kept: what it held may be mended
    /// in the database since (a key version behind may not: the list
    /// already names the newer one).
    async fn against(
        &mut self,
        keys: &Keys,
        list: ErasureList,
        record: bool,
    ) -> Result<(BatchKeys, Option<ChecksToRecord>), DbError> {
        let checked = keys.against(list, record).await;
        if let Err(DbError::Misconfigured {
            what: Misconfiguration::KeyMismatch,
            ..
        }) = &checked
        {
            self.forget();
        }
        checked
    }

    /// Drops what is kept of the list: the next batch reads the keys
    /// listed since.
    pub fn forget(&mut self) {
        self.stale = true;
    }

    /// The erasure list (user keys of users erased by `login-etl forget`),
    /// its version and the masking key's version: read on first use; after
    /// [`forget`](Self::forget), only the keys listed since are read.
    async fn erasure_list(
        &mut self,
        client: &Client,
        profile: Profile,
        until: Instant,
    ) -> Result<ErasureList, DbError> {
        if let Some(list) = &self.list
            && !self.stale
        {
            return Ok(list.clone());
        }
        let known: i64 = self.list.as_ref().map_or(0, |l| l.versions.erased);
        let (statement, erasure) = match profile {
            Profile::Full => (&ERASURE_LIST, true),
            Profile::Masking => (&NO_ERASURE_LIST, false),
        };
        let row = answered(statement, until, statement.row(client, &[&known]))
            .await
            .map_err(StatementFailure::worded)?;
        let key = row.get::<_, i16>(2) as u16;
        let keys: HashSet<String> = row.get::<_, Vec<String>>(1).into_iter().collect();
        let users = match &self.list {
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
        self.list = Some(list.clone());
        self.stale = false;
        Ok(list)
    }

    /// Records the check values of `version`'s keys where the database has
    /// none yet, or refuses keys whose values differ (see [`KeyChecks`]);
    /// the list kept then holds them.
    async fn record_checks(
        &mut self,
        client: &Client,
        version: u16,
        masking: &str,
        erasure: Option<&str>,
        until: Instant,
    ) -> Result<(), DbError> {
        let v = version as i16;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&v, &masking, &erasure];
        match answered(&CHECK_KEYS, until, CHECK_KEYS.rows(client, &params)).await {
            Ok(_) => {
                // Recorded or equal: the list in memory holds them now.
                if let Some(list) = &mut self.list {
                    list.checks = Arc::new(KeyChecks {
                        masking: Some(masking.to_owned()),
                        erasure: erasure.map(str::to_owned).or_else(|| list.checks.erasure.clone()),
                        erasure_derived: list.checks.erasure_derived,
                    });
                }
                Ok(())
            }
            Err(Refused(f)) if f.refusal(Own::KeysDiffer).is_some() => Err(DbError::Misconfigured {
                what: Misconfiguration::KeyMismatch,
                op: f.doing,
                cause: f.refusal(Own::KeysDiffer).unwrap_or_default(),
                hint: "; nothing was written. A rotation appends a version to the masking and erasure secrets and never replaces one: put back the secret's previous value with the new version appended (docs/runbooks/leaked-key.md, \"The masking key leaked\")".into(),
            }),
            Err(failure) => Err(failure.worded()),
        }
    }
}

/// How a statement sent here failed: refused by the server (or the
/// connection broke), or no answer by its time.
enum StatementFailure {
    Refused(Failed),
    Answered(DbError),
}
use StatementFailure::{Answered, Refused};

impl StatementFailure {
    /// As its class says ([`Class`]), as the batch's write reads a
    /// failure: a missing grant or a schema not migrated is the
    /// deployment's (their own failure classes); another transaction, the
    /// connection, a row's data or a key or erasure change under way
    /// (`Own::ErasuresChanged`, `Own::KeyVersionChanged`, `Own::IsolationRefused`) is transient; anything else fatal.
    fn worded(self) -> DbError {
        let f = match self {
            Refused(f) => f,
            Answered(e) => return e,
        };
        let (op, cause) = (f.doing, describe(&f.error));
        if matches!(
            Own::of(&f.error),
            Some(Own::ErasuresChanged | Own::KeyVersionChanged | Own::IsolationRefused)
        ) {
            return DbError::Transient { op, cause };
        }
        let undefined_other_function = f.error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION)
            && !names_own_function(&f.error);
        match Class::of(&f.error) {
            Class::Conflict(_) | Class::Unavailable | Class::Row => DbError::Transient { op, cause },
            Class::Privilege => DbError::Misconfigured {
                what: Misconfiguration::PrivilegeMissing,
                op,
                cause,
                hint: crate::grants::privilege_hint(&f.error).into(),
            },
            Class::Schema if !undefined_other_function => DbError::Misconfigured {
                what: Misconfiguration::SchemaIncomplete,
                op,
                cause,
                hint: "; the schema is missing or not upgraded: run `make migrate` (login-etl migrate) or set RUN_MIGRATIONS=true".into(),
            },
            Class::Schema | Class::Other => DbError::Fatal {
                op,
                cause,
                hint: "".into(),
            },
        }
    }
}

/// `sent`'s answer, by `until`.
async fn answered<T>(
    statement: &Statement,
    until: Instant,
    sent: impl Future<Output = Result<T, Failed>>,
) -> Result<T, StatementFailure> {
    let bound = until.saturating_duration_since(Instant::now());
    match timeout_at(until.into(), sent).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(f)) => Err(Refused(f)),
        Err(_) => Err(Answered(DbError::Transient {
            op: statement.doing(),
            cause: format!("no answer within {} ms", bound.as_millis()),
        })),
    }
}
