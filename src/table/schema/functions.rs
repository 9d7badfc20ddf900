//! The owner's functions, each name's current definition in one file of
//! `migrations/functions/` (every overload of that name, its comment, and
//! a first line `-- roles: <kinds>` naming the role kinds that may run it:
//! `all`, `none`, or kinds of [`crate::table::privileges::Role`]; a second
//! line `-- profile: full` when only the full profile has it: its tables
//! are the vault's, the erasure list's or the audit trail's). A file of
//! `migrations/functions/masking/` is made in its namesake's place in the
//! masking-only profile ([`Profile`]).
//!
//! Every `login-etl migrate` makes them from these files, in its
//! transaction, before the migrations (which only change tables and data,
//! and may name a function in a trigger or a default): a function whose
//! comment already carries its file's tag is left alone, so a repeated
//! migrate rewrites no catalog row and takes no lock a running write
//! waits on. The search path, the revoke from PUBLIC and the grants are
//! then applied to all of them in one place
//! ([`crate::table::privileges::apply_sql`]). A function an older version
//! calls keeps its file (and its signature and meaning) until a migration
//! retires it with `DROP FUNCTION`.

use std::borrow::Cow;
use std::sync::LazyLock;

use sha2::{Digest, Sha256};

use super::Profile;

/// One file of `migrations/functions/`.
pub struct FunctionFile {
    /// The function's name (the file's, without `.sql`).
    pub name: &'static str,
    /// The file's text.
    pub sql: &'static str,
}

macro_rules! function_files {
    ($($name:literal),* $(,)?) => {
        function_files_in!("", [$($name),*])
    };
}

macro_rules! function_files_in {
    ($dir:literal, [$($name:literal),* $(,)?]) => {
        &[$(FunctionFile {
            name: $name,
            sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/functions/", $dir, $name, ".sql")),
        }),*]
    };
}

/// Every file of `migrations/functions/` (a test checks that none is left
/// out, and that the schema holds no `login_etl_*` function without one).
pub const FUNCTION_FILES: &[FunctionFile] = function_files![
    "login_etl_armed",
    "login_etl_audit",
    "login_etl_audit_is_append_only",
    "login_etl_audit_rekey_only",
    "login_etl_audit_to_rekey",
    "login_etl_begin_rekey",
    "login_etl_check_cutoff",
    "login_etl_check_keys",
    "login_etl_check_write",
    "login_etl_copy_grants",
    "login_etl_current_key_version",
    "login_etl_default_days",
    "login_etl_default_size",
    "login_etl_drain_days",
    "login_etl_drain_default",
    "login_etl_drain_state",
    "login_etl_drop_detached",
    "login_etl_drop_partition",
    "login_etl_end_rekey",
    "login_etl_ensure_partition",
    "login_etl_erased_below",
    "login_etl_erased_current_version",
    "login_etl_erased_rekey_only",
    "login_etl_forget_begin",
    "login_etl_forget_lock",
    "login_etl_forget_rows",
    "login_etl_hold_lock",
    "login_etl_hold_vault",
    "login_etl_kept_days",
    "login_etl_key_changed_at",
    "login_etl_key_state",
    "login_etl_lock_shared",
    "login_etl_narrow_row",
    "login_etl_partitions",
    "login_etl_profile",
    "login_etl_purge_default",
    "login_etl_purge_vault",
    "login_etl_put_back_vault",
    "login_etl_refuse_erased",
    "login_etl_refuse_erased_at",
    "login_etl_rekey_audit_chunk",
    "login_etl_rekey_erased_chunk",
    "login_etl_rekey_rows_chunk",
    "login_etl_rekey_under_way",
    "login_etl_rekey_vault_chunk",
    "login_etl_relation",
    "login_etl_reveal",
    "login_etl_reveal_request",
    "login_etl_schema_version",
    "login_etl_store_vault",
    "login_etl_swap_default",
    "login_etl_switch_key",
    "login_etl_vault_last_seen",
    "login_etl_write",
    "login_etl_write_through",
    "login_etl_write_tx",
];

/// What the masking-only profile makes in place of the file of the same
/// name (a test checks each has one, with the same signatures and roles).
pub const MASKING_FILES: &[FunctionFile] =
    function_files_in!("masking/", ["login_etl_check_write", "login_etl_profile"]);

/// The function whose body says which profile a database has (`'masking'`
/// or `'full'`), for 0.2.0's binaries, which read it; later ones read
/// `user_logins_schema` ([`super::state`]). Goes after 0.3.0.
pub const PROFILE_FUNCTION: &str = "login_etl_profile";

/// The function whose body says which migrations a database is at, for
/// 0.2.0's binaries, which read it (see [`PROFILE_FUNCTION`]).
pub const SCHEMA_VERSION_FUNCTION: &str = "login_etl_schema_version";

impl FunctionFile {
    /// Its text, with the contract's columns filled in where it names them
    /// (`{{columns}}`, `{{array_arguments}}`, `{{array_names}}`,
    /// `{{select_list}}`: the write function, see
    /// [`crate::contract::columns`]) and the schema's version
    /// (`{{schema_version}}`: [`super::SCHEMA_VERSION`]).
    pub fn text(&self) -> Cow<'static, str> {
        use crate::contract::columns;
        if !self.sql.contains("{{") {
            return Cow::Borrowed(self.sql);
        }
        Cow::Owned(
            self.sql
                .replace("{{columns}}", &columns::names())
                .replace("{{array_arguments}}", &columns::array_arguments())
                .replace("{{array_names}}", &columns::array_names())
                .replace("{{select_list}}", &columns::select_list())
                .replace("{{schema_version}}", &super::SCHEMA_VERSION.to_string()),
        )
    }

    /// The role kinds of its `-- roles:` line (empty for `none`).
    pub fn kinds(&self) -> Vec<&'static str> {
        let line = self.sql.lines().next().unwrap_or_default();
        let list = line.strip_prefix("-- roles:").unwrap_or_default().trim();
        if list == "none" {
            return Vec::new();
        }
        list.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Only the full profile has it (its second line is `-- profile: full`).
    pub fn full_only(&self) -> bool {
        self.sql.lines().nth(1) == Some("-- profile: full")
    }

    /// How many functions (overloads) it defines.
    pub fn overloads(&self) -> usize {
        self.text().matches("CREATE OR REPLACE FUNCTION ").count()
    }

    /// Each function it defines as `"name"(arguments)`, the arguments as
    /// written (names, modes and types; a GRANT ignores what is not a type).
    pub fn signatures(&self) -> Vec<String> {
        let head = format!("CREATE OR REPLACE FUNCTION {}(", self.name);
        let text = self.text();
        text.match_indices(&head)
            .map(|(at, _)| {
                let args = &text[at + head.len()..];
                let mut depth = 1;
                let end = args
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(args.len(), |(i, _)| i);
                let args = args[..end].split_whitespace().collect::<Vec<_>>().join(" ");
                format!("\"{}\"({args})", self.name)
            })
            .collect()
    }

    /// `login-etl:<the first 16 hex digits of SHA-256 of its text>`: what
    /// each function it defines carries in its comment once made from it.
    pub fn tag(&self) -> String {
        tag_of(&self.text())
    }
}

fn tag_of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!("login-etl:{}", &hex::encode(digest)[..16])
}

/// The files `profile` makes: every file for the full profile; for the
/// masking-only one, those not [`FunctionFile::full_only`], each in
/// [`MASKING_FILES`] taking its namesake's place.
pub fn files(profile: Profile) -> Vec<&'static FunctionFile> {
    FUNCTION_FILES
        .iter()
        .filter(|f| profile == Profile::Full || !f.full_only())
        .map(|f| match profile {
            Profile::Full => f,
            Profile::Masking => MASKING_FILES.iter().find(|m| m.name == f.name).unwrap_or(f),
        })
        .collect()
}

/// The tag of every file of `profile`, the profile and the schema version
/// together: what a migrate that installed them records
/// ([`super::state::record_sql`]).
pub fn all_tag(schema_version: i32, profile: Profile) -> String {
    fn tags(profile: Profile) -> String {
        let mut all = String::from(profile.as_str());
        for f in files(profile) {
            all.push_str(f.name);
            all.push_str(&f.tag());
        }
        all
    }
    static MASKING: LazyLock<String> = LazyLock::new(|| tags(Profile::Masking));
    static FULL: LazyLock<String> = LazyLock::new(|| tags(Profile::Full));
    let tags = match profile {
        Profile::Masking => &*MASKING,
        Profile::Full => &*FULL,
    };
    tag_of(&format!("{tags}{schema_version}"))
}

/// A statement that runs `sql` unless `count` functions named `name` in
/// the current schema carry `tag` already, with the body they were made
/// with (see [`crate::table::privileges::apply_sql`]).
fn unless_current(name: &str, tag: &str, count: usize, sql: &str) -> String {
    format!(
        "DO $login_etl_sync$\nBEGIN\n    IF (SELECT count(*) FROM pg_proc p \
         WHERE p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()) AND p.proname = '{name}' \
         AND obj_description(p.oid, 'pg_proc') = '{tag}:' || md5(p.prosrc)) < {count} THEN\n        \
         EXECUTE $login_etl_fn$\n{sql}\n$login_etl_fn$;\n    END IF;\nEND\n$login_etl_sync$;\n"
    )
}

/// The functions made from their files, each only where it is not current
/// (see the module documentation), for the migration's transaction before
/// its tables: function bodies are not checked when made
/// (`check_function_bodies` off), as `pg_dump` makes them, so a function
/// may name a table a later migration creates.
pub fn sync_sql(profile: Profile) -> String {
    let mut out = String::from("SET LOCAL check_function_bodies = off;\n");
    for f in files(profile) {
        out.push_str(&unless_current(f.name, &f.tag(), f.overloads(), &f.text()));
    }
    out
}

/// Each file's privileges as [`crate::table::privileges::apply_sql`] takes
/// them: (tag, name, role kinds).
pub fn grants(profile: Profile) -> Vec<(String, &'static str, Vec<&'static str>)> {
    files(profile)
        .into_iter()
        .map(|f| (f.tag(), f.name, f.kinds()))
        .collect()
}

/// The functions of `profile` as two arrays, their names and their tags,
/// and how many functions (overloads) they define: what the catalog holds
/// when every one is its file's, unchanged (see [`super::inspect`]).
pub fn expected(profile: Profile) -> &'static (Vec<String>, Vec<String>, i32) {
    fn of(profile: Profile) -> (Vec<String>, Vec<String>, i32) {
        let files = files(profile);
        let overloads = files.iter().map(|f| f.overloads()).sum::<usize>();
        (
            files.iter().map(|f| f.name.to_owned()).collect(),
            files.iter().map(|f| f.tag()).collect(),
            i32::try_from(overloads).unwrap_or(i32::MAX),
        )
    }
    static MASKING: LazyLock<(Vec<String>, Vec<String>, i32)> =
        LazyLock::new(|| of(Profile::Masking));
    static FULL: LazyLock<(Vec<String>, Vec<String>, i32)> = LazyLock::new(|| of(Profile::Full));
    match profile {
        Profile::Masking => &MASKING,
        Profile::Full => &FULL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::privileges::Role;

    #[test]
    fn every_file_is_listed_once_and_names_its_function_and_kinds() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/functions");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "sql")
            })
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".sql")
                    .to_owned()
            })
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = FUNCTION_FILES.iter().map(|f| f.name).collect();
        assert_eq!(
            on_disk, listed,
            "migrations/functions/ and FUNCTION_FILES differ"
        );
        for f in FUNCTION_FILES {
            assert!(
                f.sql.starts_with("-- roles: "),
                "{}: the first line names the roles",
                f.name
            );
            for kind in f.kinds() {
                assert!(
                    kind == "all" || Role::parse(kind).is_some_and(|r| r != Role::Migrate),
                    "{}: unknown role kind {kind}",
                    f.name
                );
            }
            assert!(f.overloads() >= 1, "{}", f.name);
            assert_eq!(
                f.sql.matches("CREATE OR REPLACE FUNCTION ").count(),
                f.sql
                    .matches(&format!("CREATE OR REPLACE FUNCTION {}(", f.name))
                    .count(),
                "{}: a file defines its own name only",
                f.name
            );
            // The search path, revoke and grants are applied in one place.
            assert!(!f.sql.contains("SET search_path"), "{}", f.name);
            for line in f.sql.lines().map(str::trim_start) {
                for elsewhere in ["ALTER FUNCTION", "REVOKE ", "GRANT "] {
                    assert!(
                        !line.starts_with(elsewhere),
                        "{}: {elsewhere} belongs in privileges::apply_sql",
                        f.name
                    );
                }
            }
            assert!(
                !f.sql.contains("$login_etl_fn$"),
                "{}: the quote sync_sql wraps it in",
                f.name
            );
        }
    }

    #[test]
    fn a_masking_file_stands_in_for_its_namesake_with_its_signatures_and_roles() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/functions/masking");
        let on_disk = std::fs::read_dir(dir).unwrap().count();
        assert_eq!(
            on_disk,
            MASKING_FILES.len(),
            "masking/ and MASKING_FILES differ"
        );
        for m in MASKING_FILES {
            let full = FUNCTION_FILES.iter().find(|f| f.name == m.name).unwrap();
            assert!(
                !full.full_only(),
                "{}: its namesake is in every profile",
                m.name
            );
            assert_eq!(m.signatures(), full.signatures(), "{}", m.name);
            assert_eq!(m.kinds(), full.kinds(), "{}", m.name);
            let made = files(Profile::Masking);
            assert!(made.iter().any(|f| f.sql == m.sql), "{}", m.name);
            assert!(!made.iter().any(|f| f.sql == full.sql), "{}", m.name);
        }
        // The masking profile's files name no table it does not have.
        for f in files(Profile::Masking) {
            let code: String = f
                .sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect();
            for table in [
                "user_logins_pii_vault",
                "user_logins_vault_keys",
                "user_logins_pii_audit",
                "user_logins_erased",
                "user_logins_erasure_tokens",
            ] {
                assert!(!code.contains(table), "{} names {table}", f.name);
            }
        }
        assert_eq!(files(Profile::Full).len(), FUNCTION_FILES.len());
        assert_ne!(all_tag(11, Profile::Masking), all_tag(11, Profile::Full));
    }

    #[test]
    fn a_tag_changes_with_the_text_and_the_version() {
        let a = FunctionFile {
            name: "x",
            sql: "-- roles: all\nCREATE OR REPLACE FUNCTION x() ...",
        };
        let b = FunctionFile {
            name: "x",
            sql: "-- roles: all\nCREATE OR REPLACE FUNCTION x() ..;",
        };
        assert_ne!(a.tag(), b.tag());
        assert!(a.tag().starts_with("login-etl:") && a.tag().len() == 26);
        assert_ne!(all_tag(10, Profile::Full), all_tag(11, Profile::Full));
        assert_eq!(a.kinds(), ["all"]);
    }

    #[test]
    fn signatures_are_read_whole_across_lines_and_overloads() {
        let f = FUNCTION_FILES
            .iter()
            .find(|f| f.name == "login_etl_ensure_partition")
            .unwrap();
        assert_eq!(
            f.signatures(),
            [
                "\"login_etl_ensure_partition\"(for_day date)",
                "\"login_etl_ensure_partition\"(for_day date, max_move bigint)"
            ]
        );
        let w = FUNCTION_FILES
            .iter()
            .find(|f| f.name == "login_etl_write")
            .unwrap();
        // Filled in from the contract's columns; then 0.2.0's, written out.
        let sigs = w.signatures();
        assert_eq!(sigs.len(), 2, "{sigs:?}");
        assert_eq!(
            sigs[0],
            format!(
                "\"login_etl_write\"(known bigint, key_version integer, checked_from integer, {})",
                crate::contract::columns::array_arguments()
            )
        );
        assert!(sigs[0].ends_with("extras jsonb[])"), "{}", sigs[0]);
        assert!(sigs[0].contains("defectss text[]"), "{}", sigs[0]);
        assert!(sigs[0].contains("user_tags bigint[]"), "{}", sigs[0]);
        assert!(
            sigs[1].ends_with("key_versions smallint[], defectss text[], extras jsonb[])")
                && !sigs[1].contains("user_tag"),
            "{}",
            sigs[1]
        );
    }
}
