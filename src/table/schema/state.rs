//! The schema's state as the last `migrate` recorded it, in the owner's
//! table `user_logins_schema` (migrations/0021, one row): the migrations'
//! version, the profile, and the tag of the owner's functions
//! ([`super::functions::all_tag`]). The migration's transaction writes it
//! ([`record_sql`]); the schema guard, `migrate` and doctor read it
//! ([`read`]).

use postgres_protocol::escape::escape_literal;
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

/// Whether the table is there, as a plain table this session may read,
/// and the schema it is in. Checked first because doctor reads it as
/// whoever runs doctor: a view or a row-level policy in its place could
/// run the owner's code with the reader's rights (every name and operator
/// qualified, for the same reason).
const READABLE_SQL: &str = "SELECT coalesce(c.relkind OPERATOR(pg_catalog.=) 'r'::pg_catalog.\"char\" \
        AND NOT c.relrowsecurity AND pg_catalog.has_table_privilege(c.oid, 'SELECT'), false), \
        pg_catalog.current_schema()::pg_catalog.text \
     FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), \
         'user_logins_schema'))::pg_catalog.oid AS oid) AS t \
     LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.oid";

/// The recorded state, `None` where the schema has no such table (a
/// database migrated before 0.3.0, or none), or this session may not read
/// it.
pub async fn read(client: &Client) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = client.query_typed_one(READABLE_SQL, &[]).await?;
    let (readable, schema): (bool, Option<String>) = (row.get(0), row.get(1));
    let Some(schema) = schema.filter(|_| readable) else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT s.version::pg_catalog.int4, s.profile::pg_catalog.text, s.functions::pg_catalog.text \
         FROM {}.user_logins_schema s",
        postgres_protocol::escape::escape_identifier(&schema)
    );
    Ok(client
        .query_typed(&sql, &[])
        .await?
        .first()
        .map(|row| Recorded {
            version: row.get(0),
            profile: Profile::parse(row.get(1)),
            functions: row.get(2),
        }))
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
