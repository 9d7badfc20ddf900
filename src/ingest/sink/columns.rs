//! The contract's columns ([`crate::with_login_columns!`]) as PostgreSQL
//! takes them: a batch as one typed vector per column (the write
//! function's arrays), a row as the COPY's binary tuple, and the COPY and
//! the write function's call made from the list.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::contract::LoginRow;
use crate::contract::columns::{COLUMNS, Codes, ColumnType, Json, TokenBytes, Uuid16, names};

/// The COPY of a batch's rows (the binary format; see `copy_in.rs`).
pub static COPY_SQL: LazyLock<String> =
    LazyLock::new(|| format!("COPY user_logins_rows ({}) FROM STDIN (FORMAT binary)", names()));

/// The arrays' placeholders from `$first` on, each cast to its column's
/// array type (`varchar[]` for the text columns: with `text[]` the server
/// coerces every value to `varchar(n)`, 1.7x slower for 10,000 rows).
pub fn array_placeholders(first: usize) -> String {
    COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", first + i, c.ty.element()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The PostgreSQL type of a column, as the COPY sends it.
pub fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Varchar => Type::VARCHAR,
        ColumnType::Int4 => Type::INT4,
        ColumnType::Int2 => Type::INT2,
        ColumnType::Int8 => Type::INT8,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Uuid => Type::UUID,
        ColumnType::Bytea => Type::BYTEA,
        ColumnType::TextArray => Type::TEXT_ARRAY,
        ColumnType::Jsonb => Type::JSONB,
    }
}

/// The type of a column's array argument of the write function.
fn array_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Varchar => Type::VARCHAR_ARRAY,
        ColumnType::Int4 => Type::INT4_ARRAY,
        ColumnType::Int2 => Type::INT2_ARRAY,
        ColumnType::Int8 => Type::INT8_ARRAY,
        ColumnType::Date => Type::DATE_ARRAY,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ_ARRAY,
        ColumnType::Uuid => Type::UUID_ARRAY,
        ColumnType::Bytea => Type::BYTEA_ARRAY,
        ColumnType::TextArray => Type::TEXT_ARRAY,
        ColumnType::Jsonb => Type::JSONB_ARRAY,
    }
}

macro_rules! typed_columns {
    (|$r:ident| $($name:ident: $ty:ident, $rust:ty = $value:expr;)*) => {
        /// A batch's rows column by column, as the write function takes
        /// them: one vector per column, each of its column's type, all of
        /// the same length by construction.
        pub struct Columns<'r> {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub $name: Vec<$rust>,
            )*
        }

        impl<'r> Columns<'r> {
            /// The columns of `rows`.
            pub fn from(rows: &'r [&LoginRow<'_>]) -> Self {
                let mut columns = Self { $($name: Vec::with_capacity(rows.len()),)* };
                for $r in rows {
                    $(columns.$name.push($value);)*
                }
                columns
            }

            /// Each column with its array type, in the list's order.
            pub fn typed_params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
                vec![$((&self.$name as &(dyn ToSql + Sync), array_type(ColumnType::$ty)),)*]
            }
        }

        /// Appends `r` to `buf` in the binary COPY format of [`COPY_SQL`]
        /// (after `copy_in::COPY_HEADER`): the field count, then each value's
        /// length (-1 for NULL) and bytes, by its `ToSql`. `Err` is the
        /// type of a value that cannot be encoded (none of a row's).
        pub fn encode_row(buf: &mut BytesMut, $r: &LoginRow<'_>) -> Result<(), Type> {
            buf.put_i16(COLUMNS.len() as i16);
            $(encode_value(buf, &$value, &pg_type(ColumnType::$ty))?;)*
            Ok(())
        }
    };
}
crate::with_login_columns!(typed_columns);

/// One value of a COPY tuple: its length, then its bytes.
fn encode_value(buf: &mut BytesMut, value: &dyn ToSql, ty: &Type) -> Result<(), Type> {
    let at = buf.len();
    buf.put_i32(0);
    let len = match value.to_sql_checked(ty, buf).map_err(|_| ty.clone())? {
        IsNull::Yes => -1,
        IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|_| ty.clone())?,
    };
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// JSON text sent as `jsonb` (its binary form: version 1, then the text).
impl ToSql for Json<'_> {
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

/// A value sent as its bytes, as the binary form of `$ty` is.
macro_rules! bytes_to_sql {
    ($(#[$doc:meta])* $name:ty => $ty:ident) => {
        $(#[$doc])*
        impl ToSql for $name {
            fn to_sql(
                &self,
                _: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                out.put_slice(&self.0);
                Ok(IsNull::No)
            }

            fn accepts(ty: &Type) -> bool {
                *ty == Type::$ty
            }

            to_sql_checked!();
        }
    };
}

bytes_to_sql!(
    /// A UUID as its 16 bytes (the binary form of `uuid`).
    Uuid16 => UUID
);
bytes_to_sql!(
    /// A token as its 32 bytes (`bytea`).
    TokenBytes => BYTEA
);

/// A row's defect codes: a `text[]` in a COPY, the text of that array
/// (`{a,b}`) as an element of the write function's argument.
impl ToSql for Codes<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::TEXT_ARRAY {
            let codes: Vec<String> = self.codes().into_iter().map(Into::into).collect();
            codes.to_sql(ty, out)
        } else {
            self.array_text().to_sql(ty, out)
        }
    }

    fn accepts(ty: &Type) -> bool {
        [Type::TEXT_ARRAY, Type::TEXT].contains(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_of_the_list_is_a_parameter_of_its_type_in_order() {
        let columns = Columns::from(&[]);
        let params = columns.typed_params();
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let want: Vec<Type> = COLUMNS.iter().map(|c| array_type(c.ty)).collect();
        assert_eq!(types, want);
    }
}
