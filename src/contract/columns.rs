//! The columns of `user_logins` a login is written to, declared once in
//! [`with_login_columns!`](crate::with_login_columns): the COPY, the write
//! function's arguments and its INSERT, the schema check (here,
//! [`COLUMNS`]) and the batch's typed arrays (`ingest::sink::columns`, one
//! vector per column: a value of the wrong type, or a column left out, does
//! not compile) are all made from it.
//!
//! A new field of the contract is a new line there (its name, its SQL
//! type, the Rust type of its value and where the value comes from in a
//! [`LoginRow`](crate::contract::LoginRow)), the field itself in the
//! body's parser, and one migration that adds the column
//! (docs/development.md, "Adding a field").

use crate::contract::Defect;

/// Every column the function writes, in the order of the COPY and of the
/// write function's arrays: `name: SqlType, RustType = value of the row r;`.
/// Calls `$callback!` with that list (the callback-macro pattern: each
/// user makes what it needs of one list).
#[doc(hidden)]
#[macro_export]
macro_rules! with_login_columns {
    ($callback:ident) => {
        $callback! {
            |r|
            message_id: Varchar, &'r str = r.message_id;
            user_id: Varchar, &'r str = &*r.user_id;
            device_type: Varchar, Option<&'r str> = r.device_type.as_deref();
            masked_ip: Varchar, Option<&'r str> = r.masked_ip.as_ref().map(|t| t.as_str());
            masked_device_id: Varchar, Option<&'r str> = r.masked_device_id.as_ref().map(|t| t.as_str());
            locale: Varchar, Option<&'r str> = r.locale.as_deref();
            app_version: Int4, Option<i32> = r.app_version;
            app_version_text: Varchar, Option<&'r str> = r.app_version_text.as_deref();
            create_date: Date, chrono::NaiveDate = r.create_date;
            sent_at: Timestamptz, chrono::DateTime<chrono::Utc> = r.sent_at;
            key_version: Int2, i16 = r.key_version as i16;
            user_tag: Int8, Option<i64> = r.user_tag;
            defects: TextArray, Option<$crate::contract::columns::Codes<'r>> =
                (!r.defects.is_empty()).then_some($crate::contract::columns::Codes(&r.defects));
            extra: Jsonb, Option<$crate::contract::columns::Json<'r>> =
                r.extra.as_deref().map($crate::contract::columns::Json);
        }
    };
}

/// The SQL type of a column, as the write sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `varchar` (the column's length is the table's).
    Varchar,
    /// `integer`.
    Int4,
    /// `smallint`.
    Int2,
    /// `bigint`.
    Int8,
    /// `date`.
    Date,
    /// `timestamptz`.
    Timestamptz,
    /// `text[]`: each row's list, sent to the write function as the text of
    /// an array (`{a,b}`), since `unnest` cannot take an array of arrays.
    TextArray,
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
            ColumnType::Int8 => "bigint",
            ColumnType::Date => "date",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::TextArray => "text[]",
            ColumnType::Jsonb => "jsonb",
        }
    }

    /// The type of one row's value in the write function's array argument.
    pub fn element(self) -> &'static str {
        match self {
            ColumnType::TextArray => "text",
            other => other.sql(),
        }
    }
}

/// A column of `user_logins` the function writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
}

macro_rules! column_list {
    (|$r:ident| $($name:ident: $ty:ident, $rust:ty = $value:expr;)*) => {
        /// Every column the function writes, in the order of the COPY and of
        /// the write function's arrays.
        pub const COLUMNS: &[Column] = &[$(Column { name: stringify!($name), ty: ColumnType::$ty }),*];
    };
}
with_login_columns!(column_list);

/// A row's defects as a column value: their codes, as `text[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes<'r>(pub &'r [Defect]);

impl Codes<'_> {
    /// The codes, in order.
    pub fn codes(&self) -> Vec<std::borrow::Cow<'static, str>> {
        self.0.iter().map(Defect::code).collect()
    }

    /// The text of the array, `{a,b}` (codes need no quoting: letters,
    /// digits, `_` and `.`).
    pub fn array_text(&self) -> String {
        format!("{{{}}}", self.codes().join(","))
    }
}

/// JSON text, as a `jsonb` column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Json<'r>(pub &'r str);

/// The column names, comma-separated (the COPY's and the INSERT's list).
pub fn names() -> String {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write function's array arguments, `<name>s <element>[]`, comma-separated.
pub fn array_arguments() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{}s {}[]", c.name, c.ty.element()))
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

/// What the write function's INSERT selects from its unnested arrays
/// (`r`): each column, cast back where the array carried its text.
pub fn select_list() -> String {
    COLUMNS
        .iter()
        .map(|c| match c.ty {
            ColumnType::TextArray => format!("r.{}::text[]", c.name),
            _ => format!("r.{}", c.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The write function's array argument types, comma-separated without
/// spaces (as `to_regprocedure` takes them).
pub fn array_types() -> String {
    COLUMNS
        .iter()
        .map(|c| format!("{}[]", c.ty.element()))
        .collect::<Vec<_>>()
        .join(",")
}
