//! The columns of `user_logins` a login is written to, declared once: the
//! COPY, the write function's arguments and its INSERT, the ingest role's
//! grants and the schema check are all made from [`COLUMNS`].
//!
//! A new field of the contract is a new entry here (its name, its SQL type
//! and where its value comes from in a [`LoginRow`]), the field itself in
//! the body's parser, and one migration that adds the column
//! (docs/development.md, "Adding a field").

use chrono::{DateTime, NaiveDate, Utc};

use crate::contract::row::LoginRow;

/// The SQL type of a column, as the write sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `varchar` (the column's length is the table's).
    Varchar,
    /// `integer`.
    Int4,
    /// `smallint`.
    Int2,
    /// `date`.
    Date,
    /// `timestamptz`.
    Timestamptz,
    /// `jsonb`.
    Jsonb,
}

impl ColumnType {
    /// Its name in SQL, as `to_regprocedure` and a GRANT write it.
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Varchar => "varchar",
            ColumnType::Int4 => "integer",
            ColumnType::Int2 => "smallint",
            ColumnType::Date => "date",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Jsonb => "jsonb",
        }
    }
}

/// One column's value in one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'r> {
    /// Text.
    Text(&'r str),
    /// Text or NULL.
    OptText(Option<&'r str>),
    /// An integer.
    Int4(i32),
    /// A small integer.
    Int2(i16),
    /// A date.
    Date(NaiveDate),
    /// An instant.
    Timestamptz(DateTime<Utc>),
    /// JSON text, or NULL.
    Json(Option<&'r str>),
}

/// A column of `user_logins` the function writes.
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// Its value in a row.
    pub value: for<'r> fn(&'r LoginRow<'r>) -> Value<'r>,
}

/// Every column the function writes, in the order of the COPY and of the
/// write function's arrays.
pub const COLUMNS: &[Column] = &[
    Column {
        name: "message_id",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(r.message_id),
    },
    Column {
        name: "user_id",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(&r.user_id),
    },
    Column {
        name: "device_type",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(&r.device_type),
    },
    Column {
        name: "masked_ip",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(r.masked_ip.as_str()),
    },
    Column {
        name: "masked_device_id",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(r.masked_device_id.as_str()),
    },
    Column {
        name: "locale",
        ty: ColumnType::Varchar,
        value: |r| Value::OptText(r.locale.as_deref()),
    },
    Column {
        name: "app_version",
        ty: ColumnType::Int4,
        value: |r| Value::Int4(r.app_version),
    },
    Column {
        name: "app_version_text",
        ty: ColumnType::Varchar,
        value: |r| Value::Text(&r.app_version_text),
    },
    Column {
        name: "create_date",
        ty: ColumnType::Date,
        value: |r| Value::Date(r.create_date),
    },
    Column {
        name: "sent_at",
        ty: ColumnType::Timestamptz,
        value: |r| Value::Timestamptz(r.sent_at),
    },
    Column {
        name: "key_version",
        ty: ColumnType::Int2,
        value: |r| Value::Int2(r.key_version as i16),
    },
    Column {
        name: "extra",
        ty: ColumnType::Jsonb,
        value: |r| Value::Json(r.extra.as_deref()),
    },
];

/// The column names, comma-separated (the COPY's and the INSERT's list).
pub fn names() -> String {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write function's array arguments, `<name>s <type>[]`, comma-separated.
pub fn array_arguments() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{}s {}[]", c.name, c.ty.sql()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write function's array argument names, comma-separated.
pub fn array_names() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{}s", c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write function's array argument types, comma-separated without
/// spaces (as `to_regprocedure` takes them).
pub fn array_types() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{}[]", c.ty.sql()))
        .collect::<Vec<_>>()
        .join(",")
}
