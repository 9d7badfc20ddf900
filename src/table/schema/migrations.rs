//! The migrations, embedded in the binary: what changes tables and data,
//! one file each in `migrations/`, applied in the order of their numbers
//! (unique; a test holds the list below to the folder). A file's first
//! line says which profiles apply it: `-- profile: all`, or `-- profile:
//! full` for the full profile's tables (the vault, the audit trail, the
//! erasure list). Each is idempotent, and `migrate` applies every one of
//! its profile's each time, so a file's number is its place, not a record.

use std::sync::LazyLock;

use super::Profile;

/// One file of `migrations/`.
pub struct MigrationFile {
    /// Its name, without `.sql`: `NNNN_what`.
    pub name: &'static str,
    /// Its text.
    pub sql: &'static str,
}

impl MigrationFile {
    /// Whether only the full profile applies it (its first line).
    pub fn full_only(&self) -> bool {
        self.sql.starts_with("-- profile: full\n")
    }
}

macro_rules! migration_files {
    ($($name:literal),* $(,)?) => {
        &[$(MigrationFile {
            name: $name,
            sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $name, ".sql")),
        }),*]
    };
}

/// Every file of `migrations/`, in order.
pub const MIGRATION_FILES: &[MigrationFile] = migration_files![
    "0001_user_logins",
    "0002_pii_vault",
    "0003_pii_audit_and_erasure",
    "0004_partitions",
    "0005_erasure_state",
    "0006_key_versions",
    "0007_vault_key_versions",
    "0008_online_operations",
    "0009_vault_online_operations",
    "0010_vault_retention",
    "0011_insiders",
    "0012_vault_insiders",
    "0013_extra_fields",
    "0014_defects",
    "0015_reader_role",
    "0016_retention_floor",
    "0017_reveal_tickets",
    "0018_forget_by_the_owner",
    "0019_rotation_arming",
    "0020_tokens_only",
    "0021_vault_tokens_only",
    "0022_locks",
    "0023_rekey_record",
    "0024_schema_state",
    "0025_retired",
    "0026_user_tag",
    "0027_defects_codes_only",
    "0028_narrow_row",
];

/// The files `keep` takes, joined in order.
fn joined(keep: impl Fn(&MigrationFile) -> bool) -> String {
    MIGRATION_FILES
        .iter()
        .filter(|f| keep(f))
        .map(|f| f.sql)
        .collect::<Vec<_>>()
        .join("\n")
}

static MASKING: LazyLock<String> = LazyLock::new(|| joined(|f| !f.full_only()));
static FULL: LazyLock<String> = LazyLock::new(|| joined(|_| true));

/// The migrations `profile` applies. Applied through
/// [`schema_sql`](super::schema_sql), which makes the owner's functions
/// first and applies the privileges after.
pub fn migration_sql(profile: Profile) -> &'static str {
    match profile {
        Profile::Masking => &MASKING,
        Profile::Full => &FULL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_listed_once_in_the_order_of_its_unique_number_and_says_its_profile() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = MIGRATION_FILES.iter().map(|f| f.name).collect();
        assert_eq!(listed, on_disk, "MIGRATION_FILES is the folder, in order");
        let numbers: Vec<&str> = listed.iter().map(|n| &n[..4]).collect();
        for (i, n) in numbers.iter().enumerate() {
            assert_eq!(*n, format!("{:04}", i + 1), "numbered 0001, 0002, ...: {listed:?}");
        }
        for f in MIGRATION_FILES {
            assert!(
                f.sql.starts_with("-- profile: all\n") || f.full_only(),
                "{}: its first line is `-- profile: all` or `-- profile: full`",
                f.name
            );
            // No stub: a file changes something.
            let statements = f
                .sql
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                .count();
            assert!(statements > 0, "{} holds no statement", f.name);
        }
    }

    #[test]
    fn the_masking_profile_applies_the_full_ones_order_without_the_vaults_tables() {
        let full = migration_sql(Profile::Full);
        let masking = migration_sql(Profile::Masking);
        assert!(full.contains("CREATE TABLE IF NOT EXISTS user_logins_pii_vault"));
        assert!(!masking.contains("CREATE TABLE IF NOT EXISTS user_logins_pii_vault"));
        assert!(masking.len() < full.len());
        // 0001 first, the schema's recorded state and the retired last, in both.
        for sql in [full, masking] {
            assert!(sql.starts_with("-- profile: all\n-- login-etl schema."));
            let state = sql.find("CREATE TABLE IF NOT EXISTS user_logins_schema").unwrap();
            assert!(sql[state..].contains("What no supported binary calls any more"));
        }
    }
}
