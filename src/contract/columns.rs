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

use crate::contract::{Defect, LoginRow, Token};

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
            sent_at: Timestamptz, chrono::DateTime<chrono::Utc> = r.sent_at;
            user_tag: Int8, Option<i64> = r.user_tag;
            app_version: Int4, Option<i32> = r.app_version;
            key_version: Int2, i16 = r.key_version as i16;
            message_id: Uuid, $crate::contract::columns::Uuid16 =
                $crate::contract::columns::message_uuid(r.message_id);
            user_id: Uuid, Option<$crate::contract::columns::Uuid16> =
                $crate::contract::columns::canonical_uuid(&r.user_id);
            masked_ip: Bytea, Option<$crate::contract::columns::TokenBytes> =
                r.masked_ip.as_ref().map($crate::contract::columns::TokenBytes::of);
            masked_device_id: Bytea, Option<$crate::contract::columns::TokenBytes> =
                r.masked_device_id.as_ref().map($crate::contract::columns::TokenBytes::of);
            device_type: Varchar, Option<&'r str> = r.device_type.as_deref();
            locale: Varchar, Option<&'r str> = r.locale.as_deref();
            app_version_text: Varchar, Option<&'r str> = $crate::contract::columns::version_text(r);
            user_id_text: Varchar, Option<&'r str> = $crate::contract::columns::uuid_text(&r.user_id);
            message_id_text: Varchar, Option<&'r str> = $crate::contract::columns::uuid_text(r.message_id);
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
    /// `uuid`.
    Uuid,
    /// `bytea`.
    Bytea,
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
            ColumnType::Uuid => "uuid",
            ColumnType::Bytea => "bytea",
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

/// A column of `user_logins_rows` the function writes.
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

/// A UUID's 16 bytes, as a `uuid` column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uuid16(pub [u8; 16]);

/// A token's 32 bytes, as a `bytea` column value (the row keeps its hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBytes(pub [u8; 32]);

impl TokenBytes {
    /// The bytes of `token`.
    pub fn of(token: &Token) -> Self {
        Self(token.bytes())
    }
}

/// `text` as a UUID where it is one in canonical form (36 characters,
/// lowercase hex and four hyphens in their places): what `uuid` renders
/// back to the same text, so the id reads back as sent.
pub fn canonical_uuid(text: &str) -> Option<Uuid16> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
        });
    if !shaped {
        return None;
    }
    let mut hex = [0u8; 32];
    for (n, b) in bytes.iter().filter(|b| **b != b'-').enumerate() {
        hex[n] = *b;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(hex, &mut out).ok()?;
    Some(Uuid16(out))
}

/// The text of an id that is no canonical UUID (kept beside its `uuid`
/// column); `None` for one that is.
pub fn uuid_text(text: &str) -> Option<&str> {
    canonical_uuid(text).is_none().then_some(text)
}

/// A message id as the key's `uuid`: itself where it is one, else the
/// first 16 bytes of the SHA-256 of its text (kept in `message_id_text`;
/// migrations/0028 computes the same in SQL).
pub fn message_uuid(text: &str) -> Uuid16 {
    canonical_uuid(text).unwrap_or_else(|| {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        Uuid16(digest[..16].try_into().expect("a digest has 16 bytes"))
    })
}

/// The version's text where `app_version` does not render back to it
/// (`major.minor.patch` without leading zeros): a suffix, a leading zero,
/// fewer parts, or no number at all. `None` where it does, and the view
/// renders it.
pub fn version_text<'r>(row: &'r LoginRow<'_>) -> Option<&'r str> {
    let text = row.app_version_text.as_deref()?;
    let rendered = row.app_version.is_some_and(|v| {
        let parts: Vec<&str> = text.split('.').collect();
        parts.len() == 3
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p.len() == 1 || !p.starts_with('0'))
            })
            && crate::app_version::encode(text).ok() == Some(v)
    });
    (!rendered).then_some(text)
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
