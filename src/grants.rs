//! Database roles as code: the exact `GRANT` statements each login-etl role
//! needs on the schema as `login-etl migrate` leaves it
//! (`login-etl grants --role R --to NAME`), from what
//! [`crate::table::privileges`] says each kind needs and the owner's
//! functions' files name it for, and the role's registration, through
//! which later migrations give it what their versions add. Nothing here
//! creates a role, sets a password or grants `ALL`: creating the login
//! role stays with whoever administers the server.

use std::fmt::Write as _;

use crate::profile::Profile;
use crate::table::privileges::Role;
use crate::table::privileges::{FULL_ONLY_TABLES, table_grants};
use crate::table::schema::functions::files;

/// Why no SQL could be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantsError {
    /// The role or schema name cannot be a PostgreSQL identifier.
    #[error(
        "{what} must be 1 to 63 bytes without NUL characters (a PostgreSQL identifier); got {len} bytes"
    )]
    BadName {
        /// `--to` or `--schema`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The role is not one of the profile's.
    #[error(
        "the {role} role exists in the full profile only (the masking-only profile has the migrate, ingest, maintain and reader roles); give the database the full profile first: `login-etl migrate --profile full` (docs/profiles.md), then run grants with --profile full"
    )]
    NotInProfile {
        /// The role's kind.
        role: &'static str,
    },
}

use postgres_protocol::escape::{escape_identifier, escape_literal as literal};

/// `name` as a quoted identifier (always quoted, so no keyword or case
/// surprise).
fn ident(name: &str, what: &'static str) -> Result<String, GrantsError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(GrantsError::BadName {
            what,
            len: name.len(),
        });
    }
    Ok(escape_identifier(name))
}

/// The SQL that gives `to` the privileges of `role` on the login-etl tables
/// of `profile` in `schema`, to be run by the tables' owner (the migrate
/// role, or the admin that migrated) after `login-etl migrate`. What the
/// full profile adds later, `migrate --profile full` gives the roles
/// registered here.
pub fn sql(role: Role, to: &str, schema: &str, profile: Profile) -> Result<String, GrantsError> {
    if !role.in_profile(profile) {
        return Err(GrantsError::NotInProfile {
            role: role.as_str(),
        });
    }
    let to_name = to;
    let to = ident(to, "--to")?;
    let ns = ident(schema, "--schema")?;
    let when = if role == Role::Migrate {
        "Run as the schema's owner or an admin, before `login-etl migrate`."
    } else {
        "Run as the owner of the login-etl tables (the migrate role), after `login-etl migrate`."
    };
    let mut out = format!(
        "-- login-etl grants --role {}: {}.\n-- {when}\n",
        role.as_str(),
        role.purpose()
    );
    if role == Role::Migrate {
        let _ = writeln!(out, "GRANT USAGE, CREATE ON SCHEMA {ns} TO {to};");
        out.push_str(
            "-- A user_logins created before login-etl (the upstream DDL) belongs to another role:\n\
             -- its owner runs `ALTER TABLE user_logins OWNER TO <this role>` once, as ALTER TABLE needs ownership.\n",
        );
        return Ok(out);
    }
    // USAGE on the schema is the schema owner's to give. Where the tables'
    // owner may (a schema of its own) it is given here; on a shared schema
    // the admin gives it (README's block does), and a GRANT the owner may
    // not make would only warn "no privileges were granted".
    let _ = writeln!(
        out,
        "DO $usage$ BEGIN IF has_schema_privilege({}, 'USAGE WITH GRANT OPTION') THEN GRANT USAGE ON SCHEMA {ns} TO {to}; END IF; END $usage$;",
        literal(schema)
    );
    for (privilege, table, columns) in table_grants(role) {
        if profile == Profile::Masking && FULL_ONLY_TABLES.contains(table) {
            continue;
        }
        let cols = if columns.is_empty() {
            String::new()
        } else {
            format!(" ({})", columns.join(", "))
        };
        let _ = writeln!(
            out,
            "GRANT {privilege}{cols} ON TABLE {ns}.\"{table}\" TO {to};"
        );
    }
    for file in files(profile) {
        if !role.may_run(&file.kinds()) {
            continue;
        }
        for signature in file.signatures() {
            let _ = writeln!(out, "GRANT EXECUTE ON FUNCTION {ns}.{signature} TO {to};");
        }
    }
    // Later migrations give it what their versions add (migrations/0011).
    let _ = writeln!(
        out,
        "INSERT INTO {ns}.\"user_logins_roles\" (role_name, kind) VALUES ({}, '{}') \
         ON CONFLICT (role_name) DO UPDATE SET kind = EXCLUDED.kind;",
        literal(to_name),
        role.as_str()
    );
    Ok(out)
}

/// The `grants` command for an insufficient-privilege error on `table`:
/// names the privilege the function lacks and the command that prints it.
pub fn missing_privilege_hint(table: Option<&str>) -> String {
    let what = match table {
        Some(t) if t.starts_with("user_logins") => {
            let privileges: Vec<String> = table_grants(Role::Ingest)
                .iter()
                .filter(|(_, name, _)| *name == t)
                .map(|(p, _, cols)| match cols {
                    [] => (*p).to_owned(),
                    cols => format!("{p} ({})", cols.join(", ")),
                })
                .collect();
            if privileges.is_empty() {
                format!("the function's role lacks a privilege on {t}")
            } else {
                format!(
                    "the function's role lacks {} on table {t}",
                    privileges.join(" and ")
                )
            }
        }
        Some(other) => format!("the function's role lacks a privilege on {other}"),
        None => "the function's role lacks a privilege".to_owned(),
    };
    grants_hint(&what)
}

/// The `grants` hint for a 42501 (insufficient privilege): the function
/// or table it names.
pub fn privilege_hint(e: &tokio_postgres::Error) -> String {
    match crate::database::sqlstate::denied(e) {
        Some(("function", f)) => missing_execute_hint(f),
        Some(("table", t)) => missing_privilege_hint(Some(t)),
        _ => missing_privilege_hint(None),
    }
}

/// The hint for a write refused EXECUTE on one of the owner's functions
/// (the ingest role's: `login_etl_write_tx` and the rest).
pub fn missing_execute_hint(function: &str) -> String {
    grants_hint(&format!(
        "the function's role lacks EXECUTE on function {function}"
    ))
}

/// `what` the role lacks, then the command that prints the grants.
fn grants_hint(what: &str) -> String {
    format!(
        "; {what}: run the output of `login-etl grants --role ingest --to <the function's role> --profile <the database's: masking or full>` as the tables' owner (docs/configuration.md, \"Database roles\")"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements of `text` (no comment lines).
    fn statements(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with("--")).collect()
    }

    #[test]
    fn grants_name_only_columns_and_never_all_or_role_creation() {
        for role in Role::ALL {
            let text = sql(role, "login_etl_x", "public", Profile::Full).unwrap();
            let upper = text.to_uppercase();
            for banned in [
                " ALL",
                "CREATE ROLE",
                "PASSWORD",
                "SUPERUSER",
                "ALTER ROLE",
                "TRUNCATE",
            ] {
                assert!(
                    statements(&upper).iter().all(|l| !l.contains(banned)),
                    "{role:?}: {banned} in {text}"
                );
            }
            // Only vault-upgrade (its own role) changes a column in place, and
            // column by column; re-keys and the vault's last_seen go
            // through the owner's functions.
            let updates: Vec<&str> = statements(&text)
                .into_iter()
                .filter(|l| l.starts_with("GRANT") && l.contains("UPDATE"))
                .collect();
            match role {
                Role::Upgrade => assert_eq!(
                    updates,
                    [
                        "GRANT UPDATE (nonce, ciphertext, aad_version) ON TABLE \"public\".\"user_logins_pii_vault\" TO \"login_etl_x\";"
                    ]
                ),
                _ => assert!(updates.is_empty(), "{role:?}: {updates:?}"),
            }
            let (grants, registered): (Vec<&str>, Vec<&str>) = statements(&text)
                .into_iter()
                .partition(|l| l.starts_with("GRANT "));
            assert!(
                grants.iter().all(|l| l.ends_with(" TO \"login_etl_x\";")),
                "{text}"
            );
            assert!(!text.contains("GRANT OPTION;"), "no grant option: {text}");
            // USAGE on the schema, only where the owner may give it.
            let usage = "DO $usage$ BEGIN IF has_schema_privilege('public', 'USAGE WITH GRANT OPTION') THEN GRANT USAGE ON SCHEMA \"public\" TO \"login_etl_x\"; END IF; END $usage$;";
            assert_eq!(registered.contains(&usage), role != Role::Migrate, "{text}");
            let registered: Vec<&str> = registered.into_iter().filter(|l| *l != usage).collect();
            if role == Role::Migrate {
                assert!(registered.is_empty(), "{text}");
            } else {
                assert_eq!(
                    registered,
                    [format!(
                        "INSERT INTO \"public\".\"user_logins_roles\" (role_name, kind) VALUES ('login_etl_x', '{}') ON CONFLICT (role_name) DO UPDATE SET kind = EXCLUDED.kind;",
                        role.as_str()
                    )]
                );
            }
        }
    }

    #[test]
    fn the_function_reveal_and_maintain_hold_only_what_they_use() {
        let ingest = sql(Role::Ingest, "fn", "public", Profile::Full).unwrap();
        assert!(ingest.contains(
            "GRANT SELECT (message_id, sent_at, xmin) ON TABLE \"public\".\"user_logins_rows\" TO \"fn\";"
        ));
        assert!(!ingest.contains("DELETE"));
        assert!(
            !ingest.contains("user_logins_pii_vault\""),
            "the function has no privilege on the vault itself: {ingest}"
        );
        assert!(ingest.contains(
            "GRANT EXECUTE ON FUNCTION \"public\".\"login_etl_store_vault\"(key_id varchar,"
        ));
        // reveal runs login_etl_reveal and touches no table itself.
        let reveal = sql(Role::Reveal, "r", "public", Profile::Full).unwrap();
        let tables: Vec<&str> = statements(&reveal)
            .into_iter()
            .filter(|l| l.contains(" ON TABLE "))
            .collect();
        assert!(tables.is_empty(), "{tables:?}");
        assert!(reveal.contains("GRANT EXECUTE ON FUNCTION \"public\".\"login_etl_reveal\"("));
        let maintain = sql(Role::Maintain, "m", "public", Profile::Full).unwrap();
        assert!(
            statements(&maintain)
                .iter()
                .filter(|l| l.starts_with("GRANT "))
                .skip(1)
                .all(|l| l.starts_with("GRANT EXECUTE ON FUNCTION \"public\".\"login_etl_")),
            "maintain runs functions only: {maintain}"
        );
    }

    #[test]
    fn names_are_quoted_identifiers_and_bad_ones_refused() {
        let text = sql(Role::Erase, "we\"ird", "my schema", Profile::Full).unwrap();
        assert!(text.contains("TO \"we\"\"ird\";"), "{text}");
        assert!(text.contains("\"my schema\".\"user_logins\""), "{text}");
        assert!(text.contains("VALUES ('we\"ird', 'erase')"), "{text}");
        let quote = sql(Role::Audit, "o'brien", "public", Profile::Full).unwrap();
        assert!(quote.contains("VALUES ('o''brien', 'audit')"), "{quote}");
        assert!(sql(Role::Ingest, "", "public", Profile::Full).is_err());
        assert!(sql(Role::Ingest, &"x".repeat(64), "public", Profile::Full).is_err());
        assert_eq!(Role::parse("reveal"), Some(Role::Reveal));
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn the_hint_names_the_table_the_privilege_and_the_command() {
        let hint = missing_privilege_hint(Some("user_logins_erased"));
        assert!(hint.contains("SELECT (user_key, seq)"), "{hint}");
        assert!(hint.contains("login-etl grants --role ingest"), "{hint}");
        let vault = missing_privilege_hint(Some("user_logins_pii_vault"));
        assert!(
            vault.contains("lacks a privilege on user_logins_pii_vault"),
            "{vault}"
        );
    }
}
