//! The contract's columns ([`crate::contract::columns`]) as PostgreSQL
//! takes them: each value's `ToSql`, a batch as one array per column, and
//! the COPY and the write function's call made from the list.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::contract::LoginRow;
use crate::contract::columns::{COLUMNS, ColumnType, Value, names};

/// The COPY of a batch's rows (the binary format; see `copy.rs`).
pub static COPY_SQL: LazyLock<String> =
    LazyLock::new(|| format!("COPY user_logins ({}) FROM STDIN (FORMAT binary)", names()));

/// Each column's type, in [`COPY_SQL`]'s order.
pub static COPY_TYPES: LazyLock<Vec<Type>> =
    LazyLock::new(|| COLUMNS.iter().map(|c| pg_type(c.ty)).collect());

/// The arrays' placeholders from `$first` on, each cast to its column's
/// array type (`varchar[]` for the text columns: with `text[]` the server
/// coerces every value to `varchar(n)`, 1.7x slower for 10,000 rows).
pub fn array_placeholders(first: usize) -> String {
    COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", first + i, c.ty.sql()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PostgreSQL type of a column.
pub fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Varchar => Type::VARCHAR,
        ColumnType::Int4 => Type::INT4,
        ColumnType::Int2 => Type::INT2,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Jsonb => Type::JSONB,
    }
}

fn pg_array_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Varchar => Type::VARCHAR_ARRAY,
        ColumnType::Int4 => Type::INT4_ARRAY,
        ColumnType::Int2 => Type::INT2_ARRAY,
        ColumnType::Date => Type::DATE_ARRAY,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ_ARRAY,
        ColumnType::Jsonb => Type::JSONB_ARRAY,
    }
}

/// JSON text sent as `jsonb` (its binary form: version 1, then the text).
#[derive(Debug, Clone, Copy)]
pub struct Jsonb<'a>(pub &'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Value::Text(s) => s.to_sql(ty, out),
            Value::OptText(s) => s.to_sql(ty, out),
            Value::Int4(n) => n.to_sql(ty, out),
            Value::Int2(n) => n.to_sql(ty, out),
            Value::Date(d) => d.to_sql(ty, out),
            Value::Timestamptz(t) => t.to_sql(ty, out),
            Value::Json(j) => j.map(Jsonb).to_sql(ty, out),
        }
    }

    // Each value goes with its own column's type (COPY_TYPES).
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One column of a batch, as the array the write function takes.
enum Array<'r> {
    Text(Vec<&'r str>),
    OptText(Vec<Option<&'r str>>),
    Int4(Vec<i32>),
    Int2(Vec<i16>),
    Date(Vec<NaiveDate>),
    Timestamptz(Vec<DateTime<Utc>>),
    Json(Vec<Option<Jsonb<'r>>>),
}

impl Array<'_> {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Array::Text(v) => v,
            Array::OptText(v) => v,
            Array::Int4(v) => v,
            Array::Int2(v) => v,
            Array::Date(v) => v,
            Array::Timestamptz(v) => v,
            Array::Json(v) => v,
        }
    }
}

/// Column-major parameters for one statement: the rows' columns as the
/// arrays of the write function, in [`COLUMNS`]' order.
pub struct Columns<'r> {
    arrays: Vec<Array<'r>>,
}

impl<'r> Columns<'r> {
    /// The columns of `rows`.
    pub fn from(rows: &'r [LoginRow<'_>]) -> Self {
        let arrays = COLUMNS
            .iter()
            .map(|c| {
                let values = rows.iter().map(|r| (c.value)(r));
                match c.ty {
                    ColumnType::Varchar => {
                        if values.clone().all(|v| matches!(v, Value::Text(_))) {
                            Array::Text(
                                values
                                    .map(|v| match v {
                                        Value::Text(s) => s,
                                        _ => unreachable!("checked above"),
                                    })
                                    .collect(),
                            )
                        } else {
                            Array::OptText(
                                values
                                    .map(|v| match v {
                                        Value::Text(s) => Some(s),
                                        Value::OptText(s) => s,
                                        _ => None,
                                    })
                                    .collect(),
                            )
                        }
                    }
                    ColumnType::Int4 => Array::Int4(
                        values
                            .map(|v| if let Value::Int4(n) = v { n } else { 0 })
                            .collect(),
                    ),
                    ColumnType::Int2 => Array::Int2(
                        values
                            .map(|v| if let Value::Int2(n) = v { n } else { 0 })
                            .collect(),
                    ),
                    ColumnType::Date => Array::Date(
                        values
                            .filter_map(|v| {
                                if let Value::Date(d) = v {
                                    Some(d)
                                } else {
                                    None
                                }
                            })
                            .collect(),
                    ),
                    ColumnType::Timestamptz => Array::Timestamptz(
                        values
                            .filter_map(|v| {
                                if let Value::Timestamptz(t) = v {
                                    Some(t)
                                } else {
                                    None
                                }
                            })
                            .collect(),
                    ),
                    ColumnType::Jsonb => Array::Json(
                        values
                            .map(|v| {
                                if let Value::Json(j) = v {
                                    j.map(Jsonb)
                                } else {
                                    None
                                }
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        Self { arrays }
    }

    /// Each column with its array type, in [`COLUMNS`]' order.
    pub fn typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        self.arrays
            .iter()
            .zip(COLUMNS)
            .map(|(a, c)| (a.param(), pg_array_type(c.ty)))
            .collect()
    }

    /// The array of the column named `name` (the recount's key columns).
    pub fn column(&self, name: &str) -> &(dyn ToSql + Sync) {
        let i = COLUMNS
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("no column {name} in the contract's list"));
        self.arrays[i].param()
    }
}
