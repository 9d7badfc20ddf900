//! The migrations' list, from the files: every numbered `.sql` file of
//! `migrations/`, in the order of its number, embedded as
//! `MIGRATION_FILES` (src/table/schema/migrations.rs). A file added there
//! is applied; no list to keep by hand.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read when the script runs (not when it was compiled: a copy of the
    // tree elsewhere may reuse the script).
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            p.file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut list = String::from("&[\n");
    for name in &names {
        let path = dir.join(format!("{name}.sql"));
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            list,
            "    MigrationFile {{ name: {name:?}, sql: include_str!({:?}) }},",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    list.push(']');
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("migration_files.rs");
    std::fs::write(&out, list).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
