#!/usr/bin/env python3
"""docs/development.md's "Adding a field", done: in a scratch copy of the
repository, a new string field `os_name` is added in the three places the
page names (the contract, the column list, one migration) and nothing else,
then the library's tests run there, with one more that writes `os_name`
end to end: migrate, the ingest role's grants, a batch by INSERT and one by
COPY, the column read back, the JSON Schema naming the field.

`make test-add-a-field` runs it (CI does, after make test). The scratch
copy builds into this repository's target directory (its dependencies are
already built there); as a package at another path its library and test
binaries have names of their own and replace nothing of this checkout's.
Needs PostgreSQL (LOGIN_ETL_TEST_PG, as the Rust tests).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    found = text.count(old)
    if found != count:
        sys.exit(f"add_a_field: {path.relative_to(path.parents[2] if 'src' in path.parts else path.parent)}: "
                 f"expected {count} of {old!r}, found {found}: the page's steps no longer match the code")  # fmt: skip
    path.write_text(text.replace(old, new))


def add_the_field(repo: Path) -> None:
    c = repo / "src" / "contract"
    # 1. The contract: the field, its length, its place, its parse, the row.
    edit(c / "field.rs", "    /// `device_id`\n    DeviceId,\n}",
         "    /// `device_id`\n    DeviceId,\n    /// `os_name`\n    OsName,\n}")  # fmt: skip
    edit(c / "field.rs", '            Field::DeviceId => "device_id",\n',
         '            Field::DeviceId => "device_id",\n            Field::OsName => "os_name",\n')  # fmt: skip
    edit(c / "field.rs", "            Field::DeviceId => 256,\n",
         "            Field::DeviceId => 256,\n            Field::OsName => 64,\n")  # fmt: skip
    edit(c / "field.rs", "pub const FIELDS: [Field; 6] = [", "pub const FIELDS: [Field; 7] = [")
    edit(c / "field.rs", "    Field::DeviceId,\n];", "    Field::DeviceId,\n    Field::OsName,\n];")
    edit(c / "field.rs", "        self != Field::Locale\n", "        !matches!(self, Field::Locale | Field::OsName)\n")
    edit(c / "field.rs", "            Field::DeviceId => {",
         '            Field::OsName => "The device\'s operating system, or null; stored as it is.",\n'
         "            Field::DeviceId => {")  # fmt: skip
    edit(c / "body.rs", "let [user_id, app_version, device_type, ip, locale, device_id] = raw.fields;",
         "let [user_id, app_version, device_type, ip, locale, device_id, os_name] = raw.fields;")  # fmt: skip
    edit(c / "body.rs", "    if contract.unknown == UnknownFields::Reject",
         "    let os_name = found.kept(checked(Field::OsName, os_name))?;\n"
         "    if contract.unknown == UnknownFields::Reject")  # fmt: skip
    edit(c / "body.rs", "    pub app_version_text: Option<Cow<'a, str>>,\n    /// The declared extra",
         "    pub app_version_text: Option<Cow<'a, str>>,\n    /// The device's operating system.\n"
         "    pub os_name: Option<Cow<'a, str>>,\n    /// The declared extra")  # fmt: skip
    edit(c / "body.rs", "        app_version_text,\n        extra,", "        app_version_text,\n        os_name,\n        extra,")
    edit(c / "body.rs", "            app_version_text: own(self.app_version_text),\n",
         "            app_version_text: own(self.app_version_text),\n            os_name: own(self.os_name),\n")  # fmt: skip
    edit(c / "row.rs", "    /// The declared extra fields present, as a JSON object (`extra`).",
         "    /// The device's operating system.\n    pub os_name: Option<Cow<'a, str>>,\n"
         "    /// The declared extra fields present, as a JSON object (`extra`).")  # fmt: skip
    edit(c / "row.rs", "            app_version_text,\n            extra,", "            app_version_text,\n            os_name,\n            extra,")
    edit(c / "row.rs", "            device_id,\n            extra,", "            device_id,\n            os_name,\n            extra,")
    # 2. The column list: one line.
    edit(c / "columns.rs", "            extra: Jsonb,",
         "            os_name: Varchar, Option<&'r str> = r.os_name.as_deref();\n"
         "            extra: Jsonb,")  # fmt: skip
    # 3. One migration, listed last, and the schema's version + 1 (read
    # from the code, so the walk follows the migrations added since).
    schema = repo / "src" / "table" / "schema" / "mod.rs"
    literal = re.search(r"macro_rules! schema_version \{\s*\(\) => \{\s*(\d+)\s*\};", schema.read_text())
    if literal is None:
        sys.exit("add_a_field: src/table/schema/mod.rs: no `schema_version!` literal: the page's steps no longer match the code")
    version = int(literal.group(1))
    # The stack's setup resource carries it too: an update migrates.
    edit(repo / "template.yaml", f'SchemaVersion: "{version}"', f'SchemaVersion: "{version + 1}"')
    # The next number after the last file's.
    last = max(int(p.name[:4]) for p in (repo / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    name = f"{last + 1:04d}_os_name"
    (repo / "migrations" / f"{name}.sql").write_text(
        "-- profile: all\n"
        "DO $$\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('user_logins_rows')\n"
        "                   AND attname = 'os_name' AND NOT attisdropped) THEN\n"
        "        ALTER TABLE user_logins_rows ADD COLUMN os_name varchar(64);\n    END IF;\nEND\n$$;\n"
    )
    # No list to edit: build.rs reads the folder.
    edit(schema, literal.group(0), literal.group(0).replace(str(version), str(version + 1)))


# The end-to-end check, a unit test of the scratch library (its own
# binaries: nothing of this checkout's target is replaced).
E2E = r'''
//! The added field, end to end (tests/add_a_field.py).

use crate::config::Config;
use crate::table::privileges::Role;

fn event(n: usize, os: Option<&str>) -> crate::SqsBatch {
    let seed = n as u64 * 1_000 + os.map_or(0, |o| o.len() as u64);
    let mut event = crate::synth::event(&crate::synth::Options { count: n, seed, ..Default::default() });
    for m in &mut event.records {
        let mut body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        body["os_name"] = os.map_or(serde_json::Value::Null, Into::into);
        m.body = Some(body.to_string());
    }
    crate::SqsBatch::from(&event)
}

#[tokio::test]
async fn os_name_is_validated_written_and_published() {
    let admin = std::env::var("LOGIN_ETL_TEST_PG").expect("LOGIN_ETL_TEST_PG");
    let db = format!("add_a_field_{}", std::process::id());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let url = format!("{}/{db}", admin.rsplit_once('/').unwrap().0);
    let (owner, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    crate::startup::migrate(&crate::database::settings::DbConfig::from_lookup(&|k: &str| (k == "DATABASE_URL").then(|| url.clone())).unwrap(), crate::profile::Profile::Masking).await.unwrap();
    let role = format!("{db}_ingest");
    owner.batch_execute(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN")).await.unwrap();
    owner.batch_execute(&crate::grants::sql(Role::Ingest, &role, "public", crate::profile::Profile::Masking).unwrap()).await.unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let ingest = format!("{scheme}://{role}@{host}");
    let config = Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(ingest.clone()),
        "MASKING_KEY" => Some("ab".repeat(32)),
        _ => None,
    }).unwrap();
    let h = crate::startup::build(&config).await.unwrap();
    for (n, os) in [(10, Some("android 15")), (crate::ingest::sink::COPY_MIN_ROWS + 10, Some("iOS 18")), (3, None)] {
        let outcome = h.handle(&event(n, os), crate::Deadline::NONE).await.unwrap();
        assert_eq!(outcome.summary.inserted as usize, n, "{os:?}");
    }
    let counts = owner.query(
        "SELECT os_name, count(*) FROM user_logins GROUP BY os_name ORDER BY os_name", &[]).await.unwrap();
    let got: Vec<(Option<String>, i64)> = counts.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(Some("android 15".into()), 10), (Some("iOS 18".into()), (crate::ingest::sink::COPY_MIN_ROWS + 10) as i64), (None, 3)]);
    let long = event(1, Some(&"x".repeat(65)));
    let outcome = h.handle(&long, crate::Deadline::NONE).await.unwrap();
    // Kept (the login is stored), the defect recorded and counted.
    assert_eq!((outcome.summary.inserted, outcome.summary.defects.get("os_name.too_long")), (1, Some(&1)));
    let strict = crate::contract::Contract::default().with_mode(crate::contract::Mode::Strict);
    let schema = crate::contract::schema::schema(&strict);
    assert_eq!(schema["properties"]["os_name"]["maxLength"], 64);
    let lenient = crate::contract::schema::schema(&crate::contract::Contract::default());
    assert!(lenient["properties"]["os_name"].is_object());
    drop(h);
    client.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.unwrap();
    client.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
}
'''


def main() -> None:
    if not os.environ.get("LOGIN_ETL_TEST_PG"):
        sys.exit("add_a_field: set LOGIN_ETL_TEST_PG to an admin URL of a PostgreSQL (make test-add-a-field does)")
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryDirectory(prefix="login-etl-add-a-field-") as tmp:
        repo = Path(tmp) / "login-etl"
        for name in files.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, repo / name)
        add_the_field(repo)
        (repo / "src" / "add_a_field_e2e.rs").write_text(E2E)
        edit(repo / "src" / "lib.rs", "pub mod contract;", "pub mod contract;\n#[cfg(test)]\nmod add_a_field_e2e;")
        print("add_a_field: os_name added to the contract, the column list and a migration; building the scratch library's tests", flush=True)
        target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
        done = subprocess.run(["cargo", "test", "--lib", "--quiet"], cwd=repo,
                              env={**os.environ, "CARGO_TARGET_DIR": target})  # fmt: skip
        if done.returncode != 0:
            sys.exit("add_a_field: the scratch copy with os_name does not pass its tests (above)")
    print("add_a_field: os_name is validated, written by INSERT and by COPY as the ingest role, and in the schema")


if __name__ == "__main__":
    main()
