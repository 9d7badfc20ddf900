//! The triggers the full profile's migrations make (the audit trail and the
//! erasure list append-only and re-keyed only by a rotation, the vault's
//! `last_seen` only forward): what doctor checks is there and enabled,
//! and what `migrate` makes again or enables again when an owner or a
//! superuser dropped or disabled one.

use postgres_protocol::escape::escape_literal;

use super::Profile;

/// Each trigger as `(table, trigger, what follows its name in CREATE
/// TRIGGER)`: the migrations' definitions, which `migrate` makes again
/// when one is missing.
pub const TRIGGERS: [(&str, &str, &str); 7] = [
    (
        "user_logins_erased",
        "user_logins_erased_current_version",
        "BEFORE INSERT ON user_logins_erased FOR EACH ROW EXECUTE FUNCTION login_etl_erased_current_version()",
    ),
    (
        "user_logins_erased",
        "user_logins_erased_no_delete",
        "BEFORE DELETE OR TRUNCATE ON user_logins_erased FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only()",
    ),
    (
        "user_logins_erased",
        "user_logins_erased_rekey_only",
        "BEFORE UPDATE ON user_logins_erased FOR EACH ROW EXECUTE FUNCTION login_etl_erased_rekey_only()",
    ),
    (
        "user_logins_pii_audit",
        "user_logins_pii_audit_no_delete",
        "BEFORE DELETE OR TRUNCATE ON user_logins_pii_audit FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only()",
    ),
    (
        "user_logins_pii_audit",
        "user_logins_pii_audit_rekey_only",
        "BEFORE UPDATE ON user_logins_pii_audit FOR EACH ROW EXECUTE FUNCTION login_etl_audit_rekey_only()",
    ),
    (
        "user_logins_pii_vault",
        "user_logins_pii_vault_seen_forward",
        "BEFORE UPDATE OF last_seen ON user_logins_pii_vault FOR EACH ROW \
         WHEN (NEW.last_seen < OLD.last_seen OR NEW.last_seen > (now() AT TIME ZONE 'UTC')::date) \
         EXECUTE FUNCTION login_etl_vault_last_seen()",
    ),
    (
        "user_logins_pii_vault",
        "user_logins_pii_vault_seen_today",
        "BEFORE INSERT ON user_logins_pii_vault FOR EACH ROW \
         WHEN (NEW.last_seen > (now() AT TIME ZONE 'UTC')::date) EXECUTE FUNCTION login_etl_vault_last_seen()",
    ),
];

/// The triggers of `profile`.
pub fn of(profile: Profile) -> &'static [(&'static str, &'static str, &'static str)] {
    match profile {
        Profile::Full => &TRIGGERS,
        Profile::Masking => &[],
    }
}

/// `(table, trigger, definition)` rows of the triggers as SQL `VALUES`.
fn values() -> String {
    TRIGGERS
        .iter()
        .map(|(t, n, d)| {
            format!(
                "({}, {}, {})",
                escape_literal(t),
                escape_literal(n),
                escape_literal(d)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each trigger of the schema's tables with whether it fires (`tgenabled`
/// `O` or `A`; `D` is disabled, `R` fires only on a replica): `(table,
/// trigger, present, firing)`, catalog only.
pub fn state_sql() -> String {
    format!(
        "SELECT m.t, m.n, g.oid IS NOT NULL, coalesce(g.tgenabled IN ('O', 'A'), false) \
         FROM (VALUES {}) AS m(t, n, d) \
         LEFT JOIN pg_catalog.pg_trigger g ON g.tgname = m.n AND NOT g.tgisinternal \
           AND g.tgrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) \
         WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) IS NOT NULL \
         ORDER BY 1, 2",
        values()
    )
}

/// Whether every trigger of a table present is there and fires (an SQL
/// expression for the schema's inspection: `migrate` runs when one is
/// not).
pub fn intact_sql() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM (VALUES {}) AS m(t, n, d) \
           LEFT JOIN pg_catalog.pg_trigger g ON g.tgname = m.n AND NOT g.tgisinternal \
             AND g.tgrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) \
           WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) IS NOT NULL \
             AND (g.oid IS NULL OR g.tgenabled NOT IN ('O', 'A')))",
        values()
    )
}

/// Makes each missing trigger again and enables each that does not fire:
/// the schema's last step but the privileges. Run before the migrations
/// too (`before_migrations`): a migration that makes two triggers when the
/// first is missing fails on the second if only the first was dropped;
/// there, a trigger whose table is not ready for it yet (an older schema,
/// its column still to come) is left to the run after them.
pub fn ensure_sql(before_migrations: bool) -> String {
    let create = if before_migrations {
        "BEGIN\n                EXECUTE format('CREATE TRIGGER %I %s', r.n, r.d);\n            \
         EXCEPTION WHEN undefined_column OR undefined_function OR undefined_table THEN NULL;\n            END;"
    } else {
        "EXECUTE format('CREATE TRIGGER %I %s', r.n, r.d);"
    };
    format!(
        "DO $login_etl_triggers$\nDECLARE\n    r record;\nBEGIN\n    FOR r IN \
         SELECT m.n, m.d, to_regclass(m.t) AS tbl, g.oid IS NOT NULL AS present, \
                coalesce(g.tgenabled IN ('O', 'A'), false) AS firing \
         FROM (VALUES {}) AS m(t, n, d) \
         LEFT JOIN pg_trigger g ON g.tgname = m.n AND NOT g.tgisinternal AND g.tgrelid = to_regclass(m.t) \
         WHERE to_regclass(m.t) IS NOT NULL\n    LOOP\n        \
         IF NOT r.present THEN\n            {create}\n        \
         ELSIF NOT r.firing THEN\n            EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', r.tbl, r.n);\n        \
         END IF;\n    END LOOP;\nEND\n$login_etl_triggers$;\n",
        values()
    )
}
