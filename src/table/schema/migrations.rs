//! The migrations of each profile, embedded in the binary: what changes
//! tables and data, in order (`migrations/`, and `migrations/privacy/` for
//! the full profile's tables).

use super::Profile;

/// One migration's text, by its path under `migrations/` (without `.sql`).
macro_rules! migration {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/",
            $name,
            ".sql"
        ))
    };
}

/// The migrations of the masking-only profile: what changes tables and
/// data, in order (0001 creates or upgrades `user_logins`, 0004 its
/// partition machinery, 0006 the key state, 0007 the DEFAULT partition's
/// drains, 0010 the role registry, 0011 the declared extra fields, 0012
/// each row's defects, 0013 the reader's kind, 0014 the retention floor, 0018 tokens only in the masked columns, 0019 locks only login-etl's roles hold, 0021 the schema's recorded state and what no supported binary calls retired).
pub const MASKING_MIGRATION_SQL: &str = concat!(
    migration!("0001_user_logins"),
    "\n",
    migration!("0004_partitions"),
    "\n",
    migration!("0006_key_versions"),
    "\n",
    migration!("0007_online_operations"),
    "\n",
    migration!("0009_write_function"),
    "\n",
    migration!("0010_insiders"),
    "\n",
    migration!("0011_extra_fields"),
    "\n",
    migration!("0012_defects"),
    "\n",
    migration!("0013_reader_role"),
    "\n",
    migration!("0014_retention_floor"),
    "\n",
    migration!("0018_tokens_only"),
    "\n",
    migration!("0019_locks"),
    "\n",
    migration!("0021_schema_state"),
    "\n",
    migration!("0021_retired"),
);

/// The full profile's migrations from 0005 on: the tail both of its
/// lists share.
macro_rules! full_from_0005 {
    () => {
        concat!(
            migration!("privacy/0005_erasure_state"),
            "\n",
            migration!("0006_key_versions"),
            "\n",
            migration!("privacy/0006_key_versions"),
            "\n",
            migration!("0007_online_operations"),
            "\n",
            migration!("privacy/0007_online_operations"),
            "\n",
            migration!("privacy/0008_vault_retention"),
            "\n",
            migration!("0009_write_function"),
            "\n",
            migration!("0010_insiders"),
            "\n",
            migration!("privacy/0010_insiders"),
            "\n",
            migration!("0011_extra_fields"),
            "\n",
            migration!("0012_defects"),
            "\n",
            migration!("0013_reader_role"),
            "\n",
            migration!("0014_retention_floor"),
            "\n",
            migration!("privacy/0015_reveal_tickets"),
            "\n",
            migration!("privacy/0016_forget_by_the_owner"),
            "\n",
            migration!("privacy/0017_rotation_arming"),
            "\n",
            migration!("0018_tokens_only"),
            "\n",
            migration!("privacy/0018_tokens_only"),
            "\n",
            migration!("0019_locks"),
            "\n",
            migration!("privacy/0020_rekey_record"),
            "\n",
            migration!("0021_schema_state"),
            "\n",
            migration!("0021_retired"),
        )
    };
}

/// The migrations of the full profile: the masking-only profile's with
/// `migrations/privacy/` in their order (the PII vault, the audit trail
/// and erasure list, their state for key versions and retention). Applied
/// through [`schema_sql`](super::schema_sql), which makes the owner's
/// functions first and applies the privileges after.
pub const MIGRATION_SQL: &str = concat!(
    migration!("0001_user_logins"),
    "\n",
    migration!("privacy/0002_pii_vault"),
    "\n",
    migration!("privacy/0003_pii_audit_and_erasure"),
    "\n",
    migration!("0004_partitions"),
    "\n",
    full_from_0005!(),
);

/// The migrations `profile` applies.
pub fn migration_sql(profile: Profile) -> &'static str {
    match profile {
        Profile::Masking => MASKING_MIGRATION_SQL,
        Profile::Full => MIGRATION_SQL,
    }
}

/// The full profile's migrations but 0001 and 0004, which rebuild
/// `user_logins` (0011 and 0012 only add nullable columns, which an older
/// version's writes do not name): what `migrate --prepare` applies beside
/// an older version's writes into an unpartitioned table (see
/// [`convert`](super::convert); such a table is from before profiles, so
/// full).
pub const SIDE_TABLES_SQL: &str = concat!(
    migration!("privacy/0002_pii_vault"),
    "\n",
    migration!("privacy/0003_pii_audit_and_erasure"),
    "\n",
    full_from_0005!(),
);
