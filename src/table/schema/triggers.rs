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
pub const TRIGGERS: [(&str, &str, &str); 8] = [
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
    (
        "user_logins_rekeyed",
        "user_logins_rekeyed_append_only",
        "BEFORE UPDATE OR DELETE OR TRUNCATE ON user_logins_rekeyed FOR EACH STATEMENT EXECUTE FUNCTION login_etl_audit_is_append_only()",
    ),
];

/// The triggers of `profile`.
pub fn of(profile: Profile) -> &'static [(&'static str, &'static str, &'static str)] {
    match profile {
        Profile::Full => &TRIGGERS,
        Profile::Masking => &[],
    }
}

/// What `pg_trigger` holds for a definition of [`TRIGGERS`]: its
/// function, its `tgtype` bits (row 1, before 2, insert 4, delete 8,
/// update 16, truncate 32), the column of an `UPDATE OF`, and the text of
/// its `WHEN` condition.
struct Shape {
    function: &'static str,
    tgtype: i16,
    column: Option<&'static str>,
    when: Option<&'static str>,
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    Some(&text[from..from + text[from..].find(end)?])
}

fn shape(definition: &'static str) -> Shape {
    let head = &definition[..definition.find(" ON ").expect("a table")];
    let bit = |word: &str, value: i16| if head.contains(word) { value } else { 0 };
    Shape {
        function: between(definition, "EXECUTE FUNCTION ", "(").expect("a function"),
        tgtype: bit("BEFORE", 2)
            | bit("INSERT", 4)
            | bit("DELETE", 8)
            | bit("UPDATE", 16)
            | bit("TRUNCATE", 32)
            | i16::from(definition.contains("FOR EACH ROW")),
        column: between(definition, "UPDATE OF ", " ON "),
        when: between(definition, "WHEN (", ") EXECUTE"),
    }
}

/// `(table, trigger, definition, function, tgtype, column, when)` rows of
/// the triggers as SQL `VALUES`.
fn values() -> String {
    let text = |v: Option<&str>| v.map_or("NULL::pg_catalog.text".into(), escape_literal);
    TRIGGERS
        .iter()
        .map(|(t, n, d)| {
            let s = shape(d);
            format!(
                "({}, {}, {}, {}, {}, {}, {})",
                escape_literal(t),
                escape_literal(n),
                escape_literal(d),
                escape_literal(s.function),
                s.tgtype,
                text(s.column),
                text(s.when)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `m` (a row of [`values`]) joined to its trigger `g`, if any.
fn joined() -> String {
    format!(
        "(VALUES {}) AS m(t, n, d, f, ty, c, w) \
         LEFT JOIN pg_catalog.pg_trigger g ON g.tgname = m.n AND NOT g.tgisinternal \
           AND g.tgrelid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) \
         WHERE pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t)) IS NOT NULL",
        values()
    )
}

/// Whether trigger `g` fires (`tgenabled` `O` or `A`; `D` is disabled,
/// `R` fires only on a replica).
const FIRING: &str = "coalesce(g.tgenabled IN ('O', 'A'), false)";

/// Whether trigger `g` is what its definition `m` makes: the same function
/// of the tables' schema, events, timing and level, columns (compared as
/// text: an `int2vector` is numbered from 0), and `WHEN`
/// condition (its text as the server prints it, without case, spaces,
/// parentheses or the `::text` of literals), no arguments or constraint: a
/// twin under the same name with `WHEN (false)` or another function is not.
const AS_MADE: &str = "coalesce(g.tgfoid = pg_catalog.to_regprocedure(pg_catalog.format('%I.%I()', pg_catalog.current_schema(), m.f)) \
     AND g.tgtype = m.ty::pg_catalog.int2 AND g.tgnargs = 0 AND NOT g.tgdeferrable AND g.tgconstraint = 0 \
     AND g.tgoldtable IS NULL AND g.tgnewtable IS NULL \
     AND pg_catalog.array_to_string(g.tgattr::pg_catalog.int2[], ',') = coalesce((SELECT a.attnum::pg_catalog.text \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid = g.tgrelid AND a.attname = m.c), '') \
     AND CASE WHEN m.w IS NULL THEN g.tgqual IS NULL ELSE \
         pg_catalog.regexp_replace(pg_catalog.lower((pg_catalog.regexp_match(pg_catalog.pg_get_triggerdef(g.oid), ' WHEN \\((.*)\\) EXECUTE '))[1]), '\\s|\\(|\\)|::text', '', 'g') \
         = pg_catalog.regexp_replace(pg_catalog.lower(m.w), '\\s|\\(|\\)|::text', '', 'g') END, false)";

/// Each trigger of the schema's tables: `(table, trigger, present, firing,
/// as made)`, catalog only.
pub fn state_sql() -> String {
    format!(
        "SELECT m.t, m.n, g.oid IS NOT NULL, {FIRING}, {AS_MADE} FROM {} ORDER BY 1, 2",
        joined()
    )
}

/// Triggers on the schema's `user_logins*` tables that login-etl did not
/// make (a partition's copy of its parent's trigger aside): `(table,
/// definition)`, catalog only.
pub fn unknown_sql() -> String {
    format!(
        "SELECT c.relname::pg_catalog.text, pg_catalog.pg_get_triggerdef(g.oid) \
         FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid \
         WHERE NOT g.tgisinternal AND g.tgparentid = 0 \
           AND c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = pg_catalog.current_schema()) \
           AND pg_catalog.left(c.relname::pg_catalog.text, 11) = 'user_logins' \
           AND (c.relname::pg_catalog.text, g.tgname::pg_catalog.text) NOT IN (SELECT m.t, m.n FROM (VALUES {}) AS m(t, n, d, f, ty, c, w)) \
         ORDER BY 1, 2",
        values()
    )
}

/// Whether every trigger of a table present is there, as made, and fires
/// (an SQL expression for the schema's inspection: `migrate` runs when one
/// is not).
pub fn intact_sql() -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM {} AND (g.oid IS NULL OR NOT {FIRING} OR NOT {AS_MADE}))",
        joined()
    )
}

/// Makes each missing trigger again, makes again each that is not as
/// its definition makes it, and enables each that does not fire: the
/// schema's last step but the privileges. Run before the migrations too
/// (`before_migrations`): a migration that makes two triggers when the
/// first is missing fails on the second if only the first was dropped;
/// there, only missing ones are made (one an older schema made otherwise
/// is its migration's to change), and a trigger whose table is not ready
/// for it yet (an older schema, its column still to come) is left to the
/// run after them.
pub fn ensure_sql(before_migrations: bool) -> String {
    let (create, remake) = if before_migrations {
        (
            "BEGIN\n                EXECUTE format('CREATE TRIGGER %I %s', r.n, r.d);\n            \
             EXCEPTION WHEN undefined_column OR undefined_function OR undefined_table THEN NULL;\n            END;",
            "NULL;",
        )
    } else {
        (
            "EXECUTE format('CREATE TRIGGER %I %s', r.n, r.d);",
            "EXECUTE format('DROP TRIGGER %I ON %s', r.n, r.tbl);\n            \
             EXECUTE format('CREATE TRIGGER %I %s', r.n, r.d);",
        )
    };
    format!(
        "DO $login_etl_triggers$\nDECLARE\n    r record;\nBEGIN\n    FOR r IN \
         SELECT m.n, m.d, pg_catalog.to_regclass(m.t) AS tbl, g.oid IS NOT NULL AS present, \
                {FIRING} AS firing, {AS_MADE} AS as_made \
         FROM {}\n    LOOP\n        \
         IF NOT r.present THEN\n            {create}\n        \
         ELSIF NOT r.as_made THEN\n            {remake}\n        \
         ELSIF NOT r.firing THEN\n            EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', r.tbl, r.n);\n        \
         END IF;\n    END LOOP;\nEND\n$login_etl_triggers$;\n",
        joined()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_definition_reads_as_its_catalog_row() {
        let s = shape(TRIGGERS[1].2);
        assert_eq!(
            (s.function, s.tgtype, s.column, s.when),
            ("login_etl_audit_is_append_only", 42, None, None)
        );
        let s = shape(TRIGGERS[5].2);
        assert_eq!(
            (s.function, s.tgtype, s.column),
            ("login_etl_vault_last_seen", 19, Some("last_seen"))
        );
        assert!(
            s.when
                .unwrap()
                .starts_with("NEW.last_seen < OLD.last_seen OR"),
            "{:?}",
            s.when
        );
        assert_eq!(shape(TRIGGERS[0].2).tgtype, 7);
        assert_eq!(shape(TRIGGERS[7].2).tgtype, 58);
    }
}
