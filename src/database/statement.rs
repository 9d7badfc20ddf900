//! A statement as the code declares it: its SQL, the types of its
//! parameters (sent with it, so no prepare round trip: a transaction pooler
//! serves it) and what it does (the words of its error), named once beside
//! the code that sends it.

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{GenericClient, Row};

/// One statement: what [`tokio_postgres::GenericClient::query_typed`] takes,
/// and what it does.
pub(crate) struct Statement {
    sql: &'static str,
    types: &'static [Type],
    doing: &'static str,
}

/// A statement that failed: what it was doing, and the server's error (or
/// the client's, when the connection broke).
#[derive(Debug)]
pub(crate) struct Failed {
    /// The statement's `doing`: "reading the erasure list".
    pub(crate) doing: &'static str,
    /// What went wrong.
    pub(crate) error: tokio_postgres::Error,
}

impl Failed {
    /// The server's message, when it refused the statement with
    /// `sqlstate` (one of login-etl's own `LE…` refusals, say).
    pub(crate) fn refusal(&self, own: crate::database::sqlstate::Own) -> Option<String> {
        let db = self.error.as_db_error()?;
        (db.code().code() == own.code()).then(|| db.message().to_owned())
    }
}

impl Statement {
    /// `sql` with one type in `types` for each of its parameters; `doing`
    /// names it in its error ("reading the erasure list").
    pub(crate) const fn new(
        sql: &'static str,
        types: &'static [Type],
        doing: &'static str,
    ) -> Self {
        Self { sql, types, doing }
    }

    /// What it does ("reading the erasure list").
    pub(crate) fn doing(&self) -> &'static str {
        self.doing
    }

    /// Its rows.
    pub(crate) async fn rows(
        &self,
        client: &impl GenericClient,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Failed> {
        client
            .query_typed(self.sql, &self.typed(params))
            .await
            .map_err(|error| self.failed(error))
    }

    /// Its one row (none, or more than one, is an error).
    pub(crate) async fn row(
        &self,
        client: &impl GenericClient,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Failed> {
        client
            .query_typed_one(self.sql, &self.typed(params))
            .await
            .map_err(|error| self.failed(error))
    }

    /// How many rows it changed.
    pub(crate) async fn execute(
        &self,
        client: &impl GenericClient,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Failed> {
        client
            .execute_typed(self.sql, &self.typed(params))
            .await
            .map_err(|error| self.failed(error))
    }

    /// The first column of its one row.
    pub(crate) async fn value<T: for<'a> FromSql<'a>>(
        &self,
        client: &impl GenericClient,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<T, Failed> {
        let row = self.row(client, params).await?;
        row.try_get(0).map_err(|error| self.failed(error))
    }

    /// The first column of each of its rows.
    pub(crate) async fn column<T: for<'a> FromSql<'a>>(
        &self,
        client: &impl GenericClient,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<T>, Failed> {
        let rows = self.rows(client, params).await?;
        rows.iter()
            .map(|row| row.try_get(0).map_err(|error| self.failed(error)))
            .collect()
    }

    fn typed<'p>(&self, params: &[&'p (dyn ToSql + Sync)]) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
        // A miscount is the code's own mistake, the same on every call: the
        // first test that sends the statement finds it.
        assert_eq!(
            params.len(),
            self.types.len(),
            "one type a parameter: {}",
            self.sql
        );
        params
            .iter()
            .copied()
            .zip(self.types.iter().cloned())
            .collect()
    }

    fn failed(&self, error: tokio_postgres::Error) -> Failed {
        Failed {
            doing: self.doing,
            error,
        }
    }
}
