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
pub const TRIGGERS: [(&str, &str, &str); 9] = [
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
    // Every profile's (the view is every profile's): the previous
    // release's writes, which name user_logins (migrations/0028).
    (
        "user_logins",
        "user_logins_write_through",
        "INSTEAD OF INSERT ON user_logins FOR EACH ROW EXECUTE FUNCTION login_etl_write_through()",
    ),
];

/// The triggers of `profile`.
pub fn of(profile: Profile) -> &'static [(&'static str, &'static str, &'static str)] {
    match profile {
        Profile::Full => &TRIGGERS,
        Profile::Masking => &TRIGGERS[8..],
    }
}

/// How the server prints each `WHEN` condition of [`TRIGGERS`]
/// (`pg_get_triggerdef`, inside `WHEN (…)`), compared exactly: a
/// normalized comparison let a condition that casts both sides to text,
/// and so compares dates as strings, pass for the real one. PostgreSQL 14
/// and later print `AT TIME ZONE` as written (seen on 15); 13 prints the
/// function call it stands for (from its deparser; no 13 server here).
const PRINTED_WHEN: [(&str, &[&str]); 2] = [
    (
        "user_logins_pii_vault_seen_forward",
        &[
            "((new.last_seen < old.last_seen) OR (new.last_seen > ((now() AT TIME ZONE 'UTC'::text))::date))",
            "((new.last_seen < old.last_seen) OR (new.last_seen > (timezone('UTC'::text, now()))::date))",
        ],
    ),
    (
        "user_logins_pii_vault_seen_today",
        &[
            "(new.last_seen > ((now() AT TIME ZONE 'UTC'::text))::date)",
            "(new.last_seen > (timezone('UTC'::text, now()))::date)",
        ],
    ),
];

/// What `pg_trigger` holds for a definition of [`TRIGGERS`]: its
/// function, its `tgtype` bits (row 1, before 2, insert 4, delete 8,
/// update 16, truncate 32), the column of an `UPDATE OF`, and whether it
/// has a `WHEN` condition.
struct Shape {
    function: &'static str,
    tgtype: i16,
    column: Option<&'static str>,
    when: bool,
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
            | bit("INSTEAD OF", 64)
            | bit("INSERT", 4)
            | bit("DELETE", 8)
            | bit("UPDATE", 16)
            | bit("TRUNCATE", 32)
            | i16::from(definition.contains("FOR EACH ROW")),
        column: between(definition, "UPDATE OF ", " ON "),
        when: definition.contains(" WHEN ("),
    }
}

/// `(table, trigger, definition, function, tgtype, column, when)` rows of
/// the triggers as SQL `VALUES` (`when`: the printed forms, or NULL).
fn values() -> String {
    let column = |v: Option<&str>| v.map_or("NULL::pg_catalog.text".into(), escape_literal);
    TRIGGERS
        .iter()
        .map(|(t, n, d)| {
            let s = shape(d);
            let printed = PRINTED_WHEN
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, forms)| *forms);
            assert_eq!(
                s.when,
                printed.is_some(),
                "{n}: a WHEN condition needs its printed forms"
            );
            let when = printed.map_or("NULL::pg_catalog.text[]".into(), |forms| {
                let forms: Vec<String> = forms.iter().map(|f| escape_literal(f)).collect();
                format!("ARRAY[{}]::pg_catalog.text[]", forms.join(", "))
            });
            format!(
                "({}, {}, {}, {}, {}, {}, {when})",
                escape_literal(t),
                escape_literal(n),
                escape_literal(d),
                escape_literal(s.function),
                s.tgtype,
                column(s.column),
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The relation `m.t` of the tables' schema (an SQL expression).
const TABLE: &str =
    "pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), m.t))";

/// `m` (a row of [`values`]) joined to its trigger `g`, if any. Every
/// operator qualified: doctor may run these as a superuser, and an
/// operator of another schema on its path matching an argument type
/// exactly would win over the catalog's.
fn joined() -> String {
    format!(
        "(VALUES {}) AS m(t, n, d, f, ty, c, w) \
         LEFT JOIN pg_catalog.pg_trigger g ON g.tgname OPERATOR(pg_catalog.=) m.n::pg_catalog.name AND NOT g.tgisinternal \
           AND g.tgrelid OPERATOR(pg_catalog.=) {TABLE}::pg_catalog.oid \
         WHERE {TABLE} IS NOT NULL",
        values()
    )
}

/// Whether trigger `g` fires (`tgenabled` `O` or `A`; `D` is disabled,
/// `R` fires only on a replica).
const FIRING: &str =
    "coalesce(g.tgenabled OPERATOR(pg_catalog.=) ANY ('{O,A}'::pg_catalog.\"char\"[]), false)";

/// Whether trigger `g` is what its definition `m` makes: the same function
/// of the tables' schema, events, timing and level, columns (compared as
/// text: an `int2vector` is numbered from 0), `WHEN` condition as the
/// server prints it ([`PRINTED_WHEN`]), no arguments or constraint: a twin
/// under the same name with `WHEN (false)` or another function is not.
const AS_MADE: &str = "coalesce(g.tgfoid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure(pg_catalog.format('%I.%I()', pg_catalog.current_schema(), m.f))::pg_catalog.oid \
     AND g.tgtype OPERATOR(pg_catalog.=) m.ty::pg_catalog.int2 AND g.tgnargs OPERATOR(pg_catalog.=) 0::pg_catalog.int2 AND NOT g.tgdeferrable \
     AND g.tgconstraint OPERATOR(pg_catalog.=) 0::pg_catalog.oid AND g.tgoldtable IS NULL AND g.tgnewtable IS NULL \
     AND pg_catalog.array_to_string(g.tgattr::pg_catalog.int2[], ',') OPERATOR(pg_catalog.=) coalesce((SELECT a.attnum::pg_catalog.text \
         FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) g.tgrelid AND a.attname OPERATOR(pg_catalog.=) m.c::pg_catalog.name), '') \
     AND CASE WHEN m.w IS NULL THEN g.tgqual IS NULL ELSE \
         (pg_catalog.regexp_match(pg_catalog.pg_get_triggerdef(g.oid), ' WHEN \\((.*)\\) EXECUTE '))[1] OPERATOR(pg_catalog.=) ANY (m.w) END, false)";

/// Each trigger of the schema's tables: `(table, trigger, present, firing,
/// as made)`, catalog only.
pub fn state_sql() -> String {
    format!(
        "SELECT m.t, m.n, g.oid IS NOT NULL, {FIRING}, {AS_MADE} FROM {} ORDER BY 1, 2",
        joined()
    )
}

/// What changes the schema's `user_logins*` tables beside login-etl's
/// triggers: a trigger it did not make (a partition's copy of a parent's
/// too: login-etl puts none on a partitioned table), a rule, row-level
/// security: `(table, kind, definition)`, catalog only.
pub fn unknown_sql() -> String {
    format!(
        "WITH tbl AS (SELECT c.oid, c.relname::pg_catalog.text AS name, c.relrowsecurity FROM pg_catalog.pg_class c \
             WHERE c.relnamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n \
                   WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema()) \
               AND pg_catalog.left(c.relname::pg_catalog.text, 11) OPERATOR(pg_catalog.=) 'user_logins') \
         SELECT tbl.name, 'trigger', pg_catalog.pg_get_triggerdef(g.oid) \
         FROM pg_catalog.pg_trigger g JOIN tbl ON tbl.oid OPERATOR(pg_catalog.=) g.tgrelid \
         WHERE NOT g.tgisinternal AND NOT EXISTS (SELECT FROM (VALUES {}) AS m(t, n, d, f, ty, c, w) \
             WHERE m.t OPERATOR(pg_catalog.=) tbl.name AND m.n::pg_catalog.name OPERATOR(pg_catalog.=) g.tgname) \
           AND NOT {UPGRADE_TRIGGER} \
         UNION ALL \
         SELECT tbl.name, 'rule', pg_catalog.pg_get_ruledef(r.oid) FROM pg_catalog.pg_rewrite r JOIN tbl ON tbl.oid OPERATOR(pg_catalog.=) r.ev_class \
         WHERE r.rulename OPERATOR(pg_catalog.<>) '_RETURN'::pg_catalog.name \
         UNION ALL \
         SELECT tbl.name, 'row-level security', 'enabled' FROM tbl WHERE tbl.relrowsecurity \
         ORDER BY 1, 2, 3",
        values()
    )
}

/// Whether trigger `g` is one of the narrow row's upgrade while it runs
/// (src/table/schema/narrow.rs: the key and the mirror on the old table,
/// the key's clone on each partition, each firing its own function of the
/// schema): login-etl's, and dropped at its cutover. Another function
/// under such a name is not.
const UPGRADE_TRIGGER: &str = "(EXISTS (SELECT FROM (VALUES \
        ('user_logins_narrow_key', 'login_etl_narrow_key'), \
        ('user_logins_narrow_insert', 'login_etl_narrow_mirror_insert'), \
        ('user_logins_narrow_update', 'login_etl_narrow_mirror_update'), \
        ('user_logins_narrow_delete', 'login_etl_narrow_mirror_delete')) AS t(n, f) \
      JOIN pg_catalog.pg_proc p ON p.proname OPERATOR(pg_catalog.=) t.f::pg_catalog.name \
       AND p.pronamespace OPERATOR(pg_catalog.=) (SELECT n.oid FROM pg_catalog.pg_namespace n \
           WHERE n.nspname OPERATOR(pg_catalog.=) pg_catalog.current_schema()) \
      WHERE t.n::pg_catalog.name OPERATOR(pg_catalog.=) g.tgname AND p.oid OPERATOR(pg_catalog.=) g.tgfoid))";

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
             EXCEPTION WHEN undefined_column OR undefined_function OR undefined_table OR wrong_object_type THEN NULL;\n            END;",
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
            ("login_etl_audit_is_append_only", 42, None, false)
        );
        let s = shape(TRIGGERS[5].2);
        assert_eq!(
            (s.function, s.tgtype, s.column, s.when),
            ("login_etl_vault_last_seen", 19, Some("last_seen"), true)
        );
        assert_eq!(shape(TRIGGERS[0].2).tgtype, 7);
        assert_eq!(shape(TRIGGERS[7].2).tgtype, 58);
        assert_eq!(shape(TRIGGERS[8].2).tgtype, 69);
        // Every WHEN condition has its printed forms (values() asserts it).
        assert_eq!(values().matches("ARRAY[").count(), PRINTED_WHEN.len());
    }
}
