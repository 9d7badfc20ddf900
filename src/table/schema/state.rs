//! The schema's state as the last `migrate` recorded it, in the owner's
//! table `user_logins_schema` (migrations/0024, one row): the migrations'
//! version, the profile, and the tag of the owner's functions
//! ([`super::functions::all_tag`]). The migration's transaction writes it
//! ([`record_sql`]); the schema guard, `migrate` and doctor read it
//! ([`read`]).

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio_postgres::Client;

use super::Profile;
use super::functions::all_tag;

/// What a `migrate` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The migrations' version ([`super::SCHEMA_VERSION`] of the binary
    /// that migrated).
    pub version: i32,
    /// The profile; `None` for a name this binary does not know.
    pub profile: Option<Profile>,
    /// The tag of the profile's function files at that version.
    pub functions: String,
}

/// The statement that records `version` and `profile` (and the tag of
/// this binary's functions of `profile`), for the migration's
/// transaction; it rewrites the row only where something differs.
pub fn record_sql(version: i32, profile: Profile) -> String {
    format!(
        "INSERT INTO user_logins_schema AS s (version, profile, functions) \
         VALUES ({version}, {}, {}) \
         ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version, profile = EXCLUDED.profile, \
             functions = EXCLUDED.functions, migrated_at = now() \
         WHERE (s.version, s.profile, s.functions) \
             IS DISTINCT FROM (EXCLUDED.version, EXCLUDED.profile, EXCLUDED.functions);",
        escape_literal(profile.as_str()),
        escape_literal(&all_tag(version, profile))
    )
}

/// Whether the table is there, and whether it is the record as
/// migrations/0024 makes it: a plain table of the tables' owner
/// (`user_logins`'s), without row-level security or children, this session
/// may read, its three columns of their own types (so reading them runs no
/// cast or output function of anyone's); and the schema it is in. Checked
/// first because doctor reads it as whoever runs doctor, where a view, a
/// policy, a child table or a column of a planted type would run someone's
/// code with the reader's rights (every name and operator qualified, for
/// the same reason); then the schema, and whether this session may read
/// (and so lock) what is there.
const READABLE_SQL: &str = "SELECT t.oid IS NOT NULL, \
        coalesce(c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" \
        AND NOT c.relrowsecurity AND NOT c.relhassubclass \
        AND c.relowner OPERATOR(pg_catalog.=) (SELECT u.relowner FROM pg_catalog.pg_class u \
            WHERE u.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', \
                pg_catalog.current_schema(), 'user_logins'))::pg_catalog.oid) \
        AND pg_catalog.has_table_privilege(c.oid, 'SELECT') \
        AND (SELECT pg_catalog.array_agg(a.atttypid ORDER BY a.attname) FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND NOT a.attisdropped \
               AND a.attname OPERATOR(pg_catalog.=) ANY ('{functions,profile,version}'::pg_catalog.name[])) \
            OPERATOR(pg_catalog.=) '{text,text,int4}'::pg_catalog.regtype[]::pg_catalog.oid[], false), \
        pg_catalog.current_schema()::pg_catalog.text, \
        coalesce(pg_catalog.has_table_privilege(t.oid, 'SELECT'), false) \
     FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), \
         'user_logins_schema'))::pg_catalog.oid AS oid) AS t \
     LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid";

/// What the schema holds under the record's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaRecord {
    /// The record, as the last `migrate` wrote it.
    Recorded(Recorded),
    /// The table as migrations/0024 makes it, without its row (or with a
    /// field the owner emptied).
    Empty,
    /// Something under its name that is not that table (see
    /// [`READABLE_SQL`]), left unread.
    Unreadable,
    /// Nothing: a database migrated before 0.3.0, or none.
    Absent,
}

/// What the schema holds under the record's name, the record read only
/// where it is the table migrate makes. In a transaction, `lock` first
/// takes ACCESS SHARE on it, so that it cannot be swapped or altered
/// between the check and the read (doctor; the guard and migrate trust the
/// owner, whose functions they run anyway).
pub async fn find(client: &Client, lock: bool) -> Result<SchemaRecord, tokio_postgres::Error> {
    if lock {
        let row = client.query_typed_one(READABLE_SQL, &[]).await?;
        let (schema, may_read): (Option<String>, bool) = (row.get(2), row.get(3));
        if let (true, Some(schema)) = (may_read, schema) {
            client
                .batch_execute(&format!(
                    "LOCK TABLE {}.user_logins_schema IN ACCESS SHARE MODE",
                    escape_identifier(&schema)
                ))
                .await?;
        }
    }
    let row = client.query_typed_one(READABLE_SQL, &[]).await?;
    let (exists, readable, schema): (bool, bool, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let schema = match (exists, readable, schema) {
        (false, _, _) => return Ok(SchemaRecord::Absent),
        (true, true, Some(schema)) => schema,
        _ => return Ok(SchemaRecord::Unreadable),
    };
    let sql = format!(
        "SELECT s.version, s.profile, s.functions FROM ONLY {}.user_logins_schema s",
        escape_identifier(&schema)
    );
    let rows = client.query_typed(&sql, &[]).await?;
    let recorded = rows.first().and_then(|row| {
        Some(Recorded {
            version: row.try_get::<_, Option<i32>>(0).ok()??,
            profile: Profile::parse(row.try_get::<_, Option<&str>>(1).ok()??),
            functions: row.try_get::<_, Option<String>>(2).ok()??,
        })
    });
    Ok(recorded.map_or(SchemaRecord::Empty, SchemaRecord::Recorded))
}

/// The recorded state, `None` where there is none to read (see [`SchemaRecord`]).
pub async fn read(client: &Client) -> Result<Option<Recorded>, tokio_postgres::Error> {
    Ok(match find(client, false).await? {
        SchemaRecord::Recorded(recorded) => Some(recorded),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_quotes_its_values_and_rewrites_only_a_difference() {
        let sql = record_sql(21, Profile::Masking);
        assert!(sql.contains("VALUES (21, 'masking', 'login-etl:"), "{sql}");
        assert!(sql.contains("IS DISTINCT FROM"), "{sql}");
        assert_ne!(
            record_sql(21, Profile::Full),
            record_sql(21, Profile::Masking)
        );
    }
}
