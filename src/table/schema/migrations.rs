//! The migrations, embedded in the binary: what changes tables and data,
//! one file each in `migrations/`, applied in the order of their numbers
//! (unique and contiguous: a test holds them so; build.rs lists the
//! folder). A file's first
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

/// Every file of `migrations/`, in order: the list build.rs reads from
/// the folder.
pub const MIGRATION_FILES: &[MigrationFile] =
    include!(concat!(env!("OUT_DIR"), "/migration_files.rs"));

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
        assert_eq!(listed, on_disk, "MIGRATION_FILES is the folder, in order (build.rs)");
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
