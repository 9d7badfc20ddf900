"""The documented database path, checked against the real binary and server:
the roles of docs/configuration.md are those `login-etl grants` prints, and
`make migrate` migrates a DATABASE_URL it is given (with an sslmode) without
touching the local server.

Run by `make test` (after cargo has built the binary).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def login_etl(*args: str) -> subprocess.CompletedProcess:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make test` (it builds the binary first)")
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=30)


def psql(url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True, text=True
    ).stdout.strip()


def db_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.mark.parametrize("role", ["ingest", "reveal", "erase", "migrate", "maintain", "audit", "rotate", "upgrade"])
def test_each_documented_role_is_printed_by_the_command_and_names_what_it_may_run(role):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert re.search(rf"^\| {role} ", doc, re.M), f"docs/configuration.md's table has a row for {role}"
    out = login_etl("grants", "--role", role, "--to", f"login_etl_{role}")
    assert out.returncode == 0, out.stderr
    statements = [line for line in out.stdout.splitlines() if not line.startswith("--")]
    assert statements and all(line.endswith(";") for line in statements), out.stdout
    # Every owner's function the docs name for the role is one it may run.
    row = re.search(rf"^\| {role} .*$", doc, re.M).group(0)
    for name in re.findall(r"`(login_etl_\w+)`", row):
        assert f'"{name}"(' in out.stdout, f"the docs say {role} may run {name}; grants does not give it"


def test_grants_refuses_unknown_roles_and_missing_options_with_the_usage():
    for args in (["--role", "admin", "--to", "x"], ["--role", "ingest"], ["--to", "x"]):
        out = login_etl("grants", *args)
        assert out.returncode != 0 and "GRANT" not in out.stdout
        assert out.returncode == 2 and "error:" in out.stderr and "--help" in out.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The databases the suites that `make test` runs beside this one create and
# drop while it runs (tests/common/mod.rs, benches/common.rs, the e2e runs).
OTHER_SUITES = ("login_etl_test_", "login_etl_bench_", "login_etl_e2e", "login_etl_poll")


def databases() -> str:
    """The server's databases, but for those of the suites running beside."""
    names = psql(PG_ADMIN_URL, "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database").split(",")
    return ",".join(n for n in names if not n.startswith(OTHER_SUITES))


def test_make_migrate_migrates_the_given_url_with_sslmode_and_leaves_the_local_server_alone():
    name = f"login_etl_mkmig_{os.getpid()}"
    psql(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}"')
    psql(PG_ADMIN_URL, f'CREATE DATABASE "{name}"')
    try:
        databases_before = databases()
        # The "remote" server is this one under a URL with an sslmode; the
        # local admin URL points where nothing listens, so any use of it fails.
        remote = db_url(name) + "?sslmode=disable"
        nowhere = f"postgres://postgres@127.0.0.1:{closed_port()}/postgres"
        done = subprocess.run(
            ["make", "--no-print-directory", "migrate", f"DATABASE_URL={remote}", f"PG_ADMIN_URL={nowhere}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert psql(db_url(name), "SELECT to_regclass('user_logins') IS NOT NULL") == "t"
        databases_after = databases()
        assert databases_after == databases_before, "no database created by make migrate"
        assert urllib.parse.quote("?") not in databases_after and "sslmode" not in databases_after
    finally:
        psql(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
