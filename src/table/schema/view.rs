//! The view `user_logins` over `user_logins_rows` (the narrow row,
//! migrations/0028): what reads `user_logins` sees the columns and types it
//! always saw, in the same order, then every column the contract's list
//! ([`COLUMNS`]) adds after them, as stored. Made by every migrate after
//! the migrations, when it is missing or lacks a column: a field added to
//! the list and to the table by its migration shows here with no step of
//! its own (docs/development.md, "Adding a field"). Left alone otherwise: a
//! `CREATE OR REPLACE VIEW` waits for every reader of the view.
//!
//! The tokens in hex, the ids as text, `create_date` the UTC day of
//! `sent_at` (a filter on `sent_at` prunes partitions, one on `create_date`
//! cannot), the version's text rendered where it was not stored (a row
//! without a message id, from before login-etl, keeps what it had).
//! `sent_at` as stored: an expression over it would keep a filter on it
//! from pruning. Built-in functions only: a view's caller needs EXECUTE on
//! each.

use crate::contract::columns::COLUMNS;

/// The columns of `user_logins_rows` the view's first fourteen render.
const RENDERED: [&str; 15] = [
    "sent_at",
    "user_tag",
    "app_version",
    "key_version",
    "message_id",
    "user_id",
    "masked_ip",
    "masked_device_id",
    "device_type",
    "locale",
    "app_version_text",
    "user_id_text",
    "message_id_text",
    "defects",
    "extra",
];

/// The columns it shows as stored, after the rendered ones.
fn added() -> impl Iterator<Item = &'static str> {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .filter(|name| !RENDERED.contains(name))
}

/// The statement that makes the view, or makes it again with the columns
/// it lacks (a DO block, for the schema's transaction).
pub fn sql() -> String {
    let select: String = added().map(|name| format!(",\n           r.{name}")).collect();
    let names: Vec<String> = added().map(|name| format!("'{name}'")).collect();
    let lacking = if names.is_empty() {
        String::new()
    } else {
        format!(
            "\n       OR (SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass('user_logins') \
             AND attname IN ({}) AND NOT attisdropped) < {}",
            names.join(", "),
            names.len()
        )
    };
    format!(
        "DO $login_etl_view$\nBEGIN\n    IF to_regclass('user_logins') IS NULL{lacking} THEN\n        \
         CREATE OR REPLACE VIEW user_logins AS\n    SELECT coalesce(r.user_id_text, r.user_id::text)::varchar(128) AS user_id,
           r.device_type,
           encode(r.masked_ip, 'hex')::varchar(256) AS masked_ip,
           encode(r.masked_device_id, 'hex')::varchar(256) AS masked_device_id,
           r.locale,
           r.app_version,
           (r.sent_at AT TIME ZONE 'UTC')::date AS create_date,
           coalesce(r.message_id_text, r.message_id::text)::varchar(128) AS message_id,
           CASE WHEN r.message_id IS NULL OR r.app_version_text IS NOT NULL THEN r.app_version_text
                ELSE (r.app_version / 1000000 || '.' || r.app_version / 1000 % 1000 || '.'
                      || r.app_version % 1000)::varchar(32) END AS app_version_text,
           r.sent_at,
           r.key_version,
           r.extra,
           r.defects,
           r.user_tag{select}
      FROM user_logins_rows r;\n    END IF;\nEND\n$login_etl_view$;\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_of_the_list_is_rendered_or_shown_as_stored() {
        let sql = sql();
        assert!(
            RENDERED.iter().all(|n| COLUMNS.iter().any(|c| c.name == *n)),
            "a column the view renders left the list"
        );
        // A column added to the list (docs/development.md, "Adding a
        // field") is shown as stored, and the check of what the view lacks
        // names it; today's list adds none.
        for name in added() {
            assert!(sql.contains(&format!("r.{name}\n")) || sql.contains(&format!("r.{name},")), "{name}");
            assert!(sql.contains(&format!("'{name}'")), "{name}");
        }
        assert_eq!(sql.contains("pg_attribute"), added().count() > 0);
        assert!(sql.contains("      FROM user_logins_rows r;"));
    }
}
