//! Database roles as code: the exact `GRANT` statements each login-etl role
//! needs on the schema as `login-etl migrate` leaves it
//! (`login-etl grants --role R --to NAME`).
//!
//! Least privilege, column by column: a role gets only the columns its
//! statements name. `SELECT` on a column is granted where PostgreSQL needs
//! it beyond the obvious: `ON CONFLICT (col) DO NOTHING` reads its arbiter
//! columns, a `DELETE ... WHERE col` reads `col`, and the lost-reply recount
//! reads `xmin` (see `sink::insert`). Nothing here creates a role, sets a
//! password or grants `ALL`: creating the login role stays with whoever
//! administers the server.

use std::fmt::Write as _;

/// A role of the deployment, by what it may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The function (Lambda or `poll`): inserts rows and vault entries,
    /// with the vault and the DLQ on.
    Ingest,
    /// `login-etl reveal`: reads tokens, vault entries and wrapped keys.
    Reveal,
    /// `login-etl forget`: deletes a user's rows and the vault entries only
    /// they used.
    Erase,
    /// `login-etl migrate`: creates the tables (and so owns them).
    Migrate,
    /// `login-etl maintain`: makes and drops partitions through the owner's
    /// functions (EXECUTE on them, no DDL of its own).
    Maintain,
    /// `login-etl audit`: reads the audit trail of reveals and erasures.
    Audit,
    /// `login-etl rotate-key`: re-keys stored tokens (rows, vault, erasure
    /// list) to the next masking-key version.
    Rotate,
}

impl Role {
    /// Every role, in the order docs/configuration.md presents them.
    pub const ALL: [Role; 7] = [
        Role::Ingest,
        Role::Reveal,
        Role::Erase,
        Role::Migrate,
        Role::Maintain,
        Role::Audit,
        Role::Rotate,
    ];

    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Reveal => "reveal",
            Role::Erase => "erase",
            Role::Migrate => "migrate",
            Role::Maintain => "maintain",
            Role::Audit => "audit",
            Role::Rotate => "rotate",
        }
    }

    /// Parses a command-line name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// What the role may do, one line (the SQL's header comment).
    fn purpose(self) -> &'static str {
        match self {
            Role::Ingest => {
                "the function: INSERT rows and PII-vault entries (moving an entry's last_seen forward), read back only what ON CONFLICT and the lost-reply recount need"
            }
            Role::Reveal => {
                "login-etl reveal: read tokens, vault entries and KMS-wrapped data keys (decryption also needs kms:Decrypt)"
            }
            Role::Erase => {
                "login-etl forget: delete a user's rows and the vault entries no other row uses"
            }
            Role::Migrate => {
                "login-etl migrate: create the tables in the schema; the tables it creates are its own"
            }
            Role::Maintain => {
                "login-etl maintain: make partitions ahead, empty the DEFAULT partition, drop partitions and PII-vault entries past retention, only through the owner's login_etl_* functions"
            }
            Role::Audit => {
                "login-etl audit: read the audit trail of reveals and erasures, nothing else"
            }
            Role::Rotate => {
                "login-etl rotate-key: re-key the stored tokens (user_logins, the vault, the erasure list) to the next masking-key version; read no PII, decrypt nothing"
            }
        }
    }
}

/// `(privilege, table, columns)`: one GRANT each; no columns means the
/// whole table (DELETE has no column form).
type Grant = (&'static str, &'static str, &'static [&'static str]);

const REVEAL_AUDIT: &[&str] = &[
    "action",
    "caller_arn",
    "kind",
    "token",
    "data_key_id",
    "detail",
    "key_version",
];
const FORGET_AUDIT: &[&str] = &[
    "action",
    "caller_arn",
    "user_key",
    "rows_deleted",
    "vault_entries_deleted",
];
const VAULT_ENTRY: &[&str] = &[
    "kind",
    "token",
    "key_id",
    "nonce",
    "ciphertext",
    "created_at",
    "key_version",
    "aad_version",
    "last_seen",
];
const ERASURE_TOKEN: &[&str] = &["user_key", "kind", "token"];
const HELD_ENTRY: &[&str] = &[
    "user_key",
    "kind",
    "token",
    "key_id",
    "nonce",
    "ciphertext",
    "created_at",
    "key_version",
    "aad_version",
    "last_seen",
];
/// The owner's functions `login-etl rotate-key` calls (migrations/0006).
const ROTATE_FUNCTIONS: &[&str] = &[
    "login_etl_switch_key(smallint, text, text, text)",
    "login_etl_rekey_erased_chunk(text[], text[], smallint)",
    "login_etl_rekey_vault_chunk(tid[], text[], text[], smallint)",
    "login_etl_audit_to_rekey(smallint, bigint, integer)",
    "login_etl_rekey_audit_chunk(bigint[], text[], text[], smallint)",
    "login_etl_end_rekey(text, double precision)",
    CHECK_KEYS_FUNCTION,
];
/// Records or compares the keys' check values: every program that holds a
/// key (the function, forget, rotate-key) calls it.
const CHECK_KEYS_FUNCTION: &str = "login_etl_check_keys(smallint, text, text)";

/// The argument types of `login_etl_write`, the ingest role's write.
const WRITE_ARGS: &str = "bigint, integer, integer, varchar[], varchar[], varchar[], varchar[], \
    varchar[], varchar[], integer[], varchar[], date[], timestamptz[], smallint[]";
/// The owner's functions `login-etl maintain` calls (migrations/0004).
const MAINTAIN_FUNCTIONS: &[&str] = &[
    "login_etl_ensure_partition(date)",
    "login_etl_ensure_partition(date, bigint)",
    "login_etl_default_size(bigint)",
    "login_etl_swap_default(date[])",
    "login_etl_drain_days()",
    "login_etl_drain_default(bigint, integer)",
    "login_etl_drop_partition(text, date)",
    "login_etl_drop_detached()",
    "login_etl_default_days()",
    "login_etl_purge_default(date)",
    "login_etl_purge_vault(date, bigint, integer)",
];
const AUDIT_COLUMNS: &[&str] = &[
    "id",
    "at",
    "action",
    "caller_arn",
    "kind",
    "token",
    "data_key_id",
    "user_key",
    "rows_deleted",
    "vault_entries_deleted",
    "detail",
];

/// The table grants of the ingest role: The function: its writes, the lost-reply recount, the vault's entries, the erasure list.
const INGEST_GRANTS: &[Grant] = &[
    // Table-level: the write transaction first takes ROW EXCLUSIVE
    // with LOCK TABLE (see ingest::sink::tx::begin_sql), which a
    // column-level grant does not allow.
    ("INSERT", "user_logins", &[]),
    // The lost-reply recount finds the batch's rows by their key
    // and reads xmin.
    (
        "SELECT",
        "user_logins",
        &["message_id", "sent_at", "create_date", "xmin"],
    ),
    (
        "INSERT",
        "user_logins_vault_keys",
        &["key_id", "kms_key_id", "wrapped_key"],
    ),
    ("SELECT", "user_logins_vault_keys", &["key_id"]),
    (
        "INSERT",
        "user_logins_pii_vault",
        &[
            "kind",
            "token",
            "key_id",
            "nonce",
            "ciphertext",
            "key_version",
            "aad_version",
            "last_seen",
        ],
    ),
    // An entry's last_seen moves forward with the rows that use it (its
    // retention: maintain deletes it when no row within it does).
    (
        "SELECT",
        "user_logins_pii_vault",
        &["kind", "token", "last_seen"],
    ),
    ("UPDATE", "user_logins_pii_vault", &["last_seen"]),
    // The erasure list, kept in memory, and the check of its version
    // and the key's (login_etl_check_write, the owner's rights).
    ("SELECT", "user_logins_erased", &["user_key", "seq"]),
];

/// The table grants of the reveal role: `reveal` and `vault-upgrade`: the tokens, the vault's entries and keys, its audit records.
const REVEAL_GRANTS: &[Grant] = &[
    // The key version of each token, which its audit record names
    // (rotate-key re-keys the audit trail too).
    (
        "SELECT",
        "user_logins",
        &["user_id", "masked_ip", "masked_device_id", "key_version"],
    ),
    (
        "SELECT",
        "user_logins_pii_vault",
        &[
            "kind",
            "token",
            "key_id",
            "nonce",
            "ciphertext",
            "aad_version",
            "key_version",
        ],
    ),
    (
        "SELECT",
        "user_logins_vault_keys",
        &["key_id", "wrapped_key"],
    ),
    // Its audit record, in the transaction that reads.
    ("INSERT", "user_logins_pii_audit", REVEAL_AUDIT),
    // `login-etl vault-upgrade`: re-seals entries from before key
    // versions (it decrypts them, as a reveal does, and keeps the
    // values in memory) so that a re-key can change their tokens.
    (
        "UPDATE",
        "user_logins_pii_vault",
        &["nonce", "ciphertext", "aad_version"],
    ),
];

/// The table grants of the erase role: `forget`: the user's rows, the vault entries moved aside and back, the erasure list, its audit.
const ERASE_GRANTS: &[Grant] = &[
    // Deletes one partition (by create_date) at a time.
    (
        "SELECT",
        "user_logins",
        &["user_id", "masked_ip", "masked_device_id", "create_date"],
    ),
    ("DELETE", "user_logins", &[]),
    // Moves the user's vault entries aside while it checks who else
    // uses them, then puts back those in use (it cannot decrypt them).
    ("SELECT", "user_logins_pii_vault", VAULT_ENTRY),
    ("DELETE", "user_logins_pii_vault", &[]),
    ("INSERT", "user_logins_pii_vault", VAULT_ENTRY),
    // An entry put back where the function stored it again meanwhile
    // keeps the later last_seen of the two.
    ("UPDATE", "user_logins_pii_vault", &["last_seen"]),
    ("SELECT", "user_logins_erasure_tokens", ERASURE_TOKEN),
    ("INSERT", "user_logins_erasure_tokens", ERASURE_TOKEN),
    ("DELETE", "user_logins_erasure_tokens", &[]),
    ("SELECT", "user_logins_pii_vault_held", HELD_ENTRY),
    ("INSERT", "user_logins_pii_vault_held", HELD_ENTRY),
    // A rerun after a stop holds an entry held already: the later
    // last_seen of the two stays.
    ("UPDATE", "user_logins_pii_vault_held", &["last_seen"]),
    ("DELETE", "user_logins_pii_vault_held", &[]),
    // The erasure list (ON CONFLICT reads the arbiter) and the audit.
    ("INSERT", "user_logins_erased", &["user_key", "key_version"]),
    ("SELECT", "user_logins_erased", &["user_key"]),
    ("INSERT", "user_logins_pii_audit", FORGET_AUDIT),
];

/// The table grants of the audit role: `audit`: the audit trail, read only.
const AUDIT_GRANTS: &[Grant] = &[("SELECT", "user_logins_pii_audit", AUDIT_COLUMNS)];

/// The table grants of the rotate role: `rotate-key`: the tokens and their version, by chunks of pages; the erasure list; the counters.
const ROTATE_GRANTS: &[Grant] = &[
    // Chunks of pages (ctid ranges) of one partition at a time
    // (tableoid), through the parent; the tokens and their version only.
    (
        "SELECT",
        "user_logins",
        &[
            "tableoid",
            "ctid",
            "masked_ip",
            "masked_device_id",
            "key_version",
            "create_date",
        ],
    ),
    (
        "UPDATE",
        "user_logins",
        &["masked_ip", "masked_device_id", "key_version"],
    ),
    // The vault's tokens (never its ciphertexts), read by chunk;
    // the owner's login_etl_rekey_vault_chunk moves them.
    (
        "SELECT",
        "user_logins_pii_vault",
        &["ctid", "kind", "token", "key_version", "aad_version"],
    ),
    // The erasure list, read to compute its next user keys (the
    // owner's login_etl_rekey_erased_chunk writes them).
    ("SELECT", "user_logins_erased", &["user_key", "key_version"]),
    (
        "SELECT",
        "user_logins_key_state",
        &[
            "version",
            "rekey_from",
            "rekey_rows",
            "rekey_vault",
            "erasure_derived",
            // When the re-key began: the rate `--status` reports.
            "changed_at",
        ],
    ),
    ("UPDATE", "user_logins_key_state", &["rekey_rows"]),
];

fn table_grants(role: Role) -> &'static [Grant] {
    match role {
        Role::Ingest => INGEST_GRANTS,
        Role::Reveal => REVEAL_GRANTS,
        Role::Erase => ERASE_GRANTS,
        Role::Migrate | Role::Maintain => &[],
        Role::Audit => AUDIT_GRANTS,
        Role::Rotate => ROTATE_GRANTS,
    }
}

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
}

/// `name` as a quoted identifier (always quoted, so no keyword or case
/// surprise).
fn ident(name: &str, what: &'static str) -> Result<String, GrantsError> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(GrantsError::BadName {
            what,
            len: name.len(),
        });
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The SQL that gives `to` the privileges of `role` on the login-etl tables
/// in `schema`, to be run by the tables' owner (the migrate role, or the
/// admin that migrated) after `login-etl migrate`.
pub fn sql(role: Role, to: &str, schema: &str) -> Result<String, GrantsError> {
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
    let _ = writeln!(out, "GRANT USAGE ON SCHEMA {ns} TO {to};");
    for (privilege, table, columns) in table_grants(role) {
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
    if role == Role::Ingest {
        let _ = writeln!(
            out,
            "GRANT EXECUTE ON FUNCTION {ns}.\"login_etl_check_write\"(bigint, integer, integer) TO {to};"
        );
        // The write itself (migrations/0009), with the role's own rights.
        let _ = writeln!(
            out,
            "GRANT EXECUTE ON FUNCTION {ns}.\"login_etl_write\"({WRITE_ARGS}) TO {to};"
        );
    }
    let functions = match role {
        Role::Maintain => MAINTAIN_FUNCTIONS,
        Role::Rotate => ROTATE_FUNCTIONS,
        Role::Ingest | Role::Erase => &[CHECK_KEYS_FUNCTION],
        _ => &[],
    };
    {
        for f in functions {
            let (name, args) = f.split_once('(').expect("a signature");
            let _ = writeln!(
                out,
                "GRANT EXECUTE ON FUNCTION {ns}.\"{name}\"({args} TO {to};"
            );
        }
    }
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
            format!(
                "the function's role lacks {} on table {t}",
                privileges.join(" and ")
            )
        }
        Some(other) => format!("the function's role lacks a privilege on {other}"),
        None => "the function's role lacks a privilege".to_owned(),
    };
    format!(
        "; {what}: run the output of `login-etl grants --role ingest --to <the function's role>` as the tables' owner (docs/configuration.md, \"Database roles\")"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_name_only_columns_and_never_all_or_role_creation() {
        for role in Role::ALL {
            let text = sql(role, "login_etl_x", "public").unwrap();
            let upper = text.to_uppercase();
            for banned in [
                " ALL",
                "CREATE ROLE",
                "PASSWORD",
                "SUPERUSER",
                "ALTER ROLE",
                "UPDATE",
            ] {
                // rotate-key updates tokens, vault-upgrade (reveal) re-seals
                // entries, in place; the function and forget move a vault
                // entry's last_seen: column by column only.
                if matches!(
                    role,
                    Role::Rotate | Role::Reveal | Role::Ingest | Role::Erase
                ) && banned == "UPDATE"
                {
                    assert!(
                        upper
                            .lines()
                            .filter(|l| l.contains("UPDATE"))
                            .all(|l| l.starts_with("GRANT UPDATE (")),
                        "{text}"
                    );
                    continue;
                }
                let statements: Vec<&str> =
                    upper.lines().filter(|l| !l.starts_with("--")).collect();
                assert!(
                    statements.iter().all(|l| !l.contains(banned)),
                    "{role:?}: {banned} in {text}"
                );
            }
            assert!(
                text.lines()
                    .filter(|l| !l.starts_with("--"))
                    .all(|l| { l.starts_with("GRANT ") && l.ends_with(" TO \"login_etl_x\";") })
            );
        }
        let ingest = sql(Role::Ingest, "fn", "public").unwrap();
        assert!(ingest.contains(
            "GRANT SELECT (message_id, sent_at, create_date, xmin) ON TABLE \"public\".\"user_logins\" TO \"fn\";"
        ));
        assert!(!ingest.contains("DELETE"));
        let updates: Vec<&str> = ingest.lines().filter(|l| l.contains("UPDATE")).collect();
        assert_eq!(
            updates,
            ["GRANT UPDATE (last_seen) ON TABLE \"public\".\"user_logins_pii_vault\" TO \"fn\";"],
            "the function updates nothing but a vault entry's last_seen"
        );
        let reveal = sql(Role::Reveal, "r", "public").unwrap();
        let inserts: Vec<&str> = reveal.lines().filter(|l| l.contains("INSERT")).collect();
        assert_eq!(
            inserts,
            [
                "GRANT INSERT (action, caller_arn, kind, token, data_key_id, detail, key_version) ON TABLE \"public\".\"user_logins_pii_audit\" TO \"r\";"
            ],
            "reveal inserts its audit records and nothing else"
        );
    }

    #[test]
    fn names_are_quoted_identifiers_and_bad_ones_refused() {
        let text = sql(Role::Erase, "we\"ird", "my schema").unwrap();
        assert!(text.contains("TO \"we\"\"ird\";"), "{text}");
        assert!(text.contains("\"my schema\".\"user_logins\""), "{text}");
        assert!(sql(Role::Ingest, "", "public").is_err());
        assert!(sql(Role::Ingest, &"x".repeat(64), "public").is_err());
        assert_eq!(Role::parse("reveal"), Some(Role::Reveal));
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn the_hint_names_the_table_the_privilege_and_the_command() {
        let hint = missing_privilege_hint(Some("user_logins_vault_keys"));
        assert!(
            hint.contains("INSERT (key_id, kms_key_id, wrapped_key)"),
            "{hint}"
        );
        assert!(hint.contains("login-etl grants --role ingest"), "{hint}");
    }
}
