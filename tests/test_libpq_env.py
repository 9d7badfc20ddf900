"""psql's variables reach a `login-etl` command the way they reach psql:
`PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE` and
`~/.pgpass`, `PGSSLMODE`, `PGSSLROOTCERT`, alone and beside a connection
URL whose parts win. Each case runs psql and `login-etl migrate` with the
same environment against a server that takes only passwords over TLS
(localstack/pg_cluster.py), and compares the role and database each one
reached (or that both were refused).

Run by `make test` (after cargo has built the binary).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
sys.path.insert(0, str(ROOT / "localstack"))
import pg_cluster  # noqa: E402

ROLES = {"alice": "alice-pw-1f9c", "bob": "bob-pw-77ad"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("libpq-env")
    cluster = pg_cluster.start(d / "state.json")
    try:
        for role, pw in ROLES.items():
            run_psql(cluster.url(), f"CREATE ROLE {role} LOGIN PASSWORD '{pw}'")
            run_psql(cluster.url(), f"CREATE DATABASE db_{role} OWNER {role}")
        yield cluster, d
    finally:
        pg_cluster.stop(d / "state.json")


def run_psql(url: str, sql: str) -> str:
    return subprocess.run(["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True,
                          text=True, env=clean_env()).stdout.strip()  # fmt: skip


def clean_env(**given: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "DB_", "AWS_"))}
    return {**env, **given}


def both(env: dict[str, str], url: str | None = None) -> tuple[str | None, str | None]:
    """Where psql and `login-etl migrate` logged in with `env` (and `url`:
    psql's argument, login-etl's DATABASE_URL): `role/database`, or None
    where refused."""
    psql = subprocess.run(["psql", *([url] if url else []), "-qAtXw", "-c",
                           "SELECT current_user || '/' || current_database()"],
                          env=env, capture_output=True, text=True, timeout=30)  # fmt: skip
    ours = subprocess.run([str(BINARY), "migrate"], env={**env, **({"DATABASE_URL": url} if url else {})},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    theirs = psql.stdout.strip() if psql.returncode == 0 else None
    applied = re.search(r"^schema applied: ([^@\s]+)@[^/\s]+/(\S+)", ours.stdout, re.M)
    mine = f"{applied[1]}/{applied[2]}" if ours.returncode == 0 and applied else None
    if mine is None:
        assert ours.returncode != 0, ours.stdout + ours.stderr
        for pw in ROLES.values():
            assert pw not in ours.stdout + ours.stderr, "no password in errors"
    return theirs, mine


def pgpass(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    path.chmod(0o600)
    return str(path)


def test_the_variables_alone_reach_both_alike(server):
    cluster, d = server
    tls = {"PGHOST": "localhost", "PGPORT": str(cluster.port), "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": cluster.ca_file}  # fmt: skip
    # Every part from the variables.
    env = clean_env(**tls, PGUSER="alice", PGDATABASE="db_alice", PGPASSWORD=ROLES["alice"])
    assert both(env) == ("alice/db_alice", "alice/db_alice")
    # No PGDATABASE: the role's name (both refused: no such database), then one that exists.
    env = clean_env(**tls, PGUSER="bob", PGPASSWORD=ROLES["bob"])
    assert both(env) == (None, None)
    # The password from PGPASSFILE, from ~/.pgpass (HOME), and a wildcard line.
    passfile = pgpass(d / "passfile", [f"localhost:{cluster.port}:db_bob:bob:{ROLES['bob']}"])
    assert both(clean_env(**tls, PGUSER="bob", PGDATABASE="db_bob", PGPASSFILE=passfile)) == ("bob/db_bob",) * 2
    home = d / "home"
    home.mkdir(exist_ok=True)
    pgpass(home / ".pgpass", [f"*:*:*:alice:{ROLES['alice']}"])
    assert both(clean_env(**tls, PGUSER="alice", PGDATABASE="db_alice", HOME=str(home))) == ("alice/db_alice",) * 2
    # A password file others may read is ignored, as libpq ignores it.
    (home / ".pgpass").chmod(0o644)
    assert both(clean_env(**tls, PGUSER="alice", PGDATABASE="db_alice", HOME=str(home))) == (None, None)
    # PGPASSWORD wins over the password file.
    wrong = clean_env(**tls, PGUSER="bob", PGDATABASE="db_bob", PGPASSFILE=passfile, PGPASSWORD="wrong")
    assert both(wrong) == (None, None)
    # A CA that is not the server's: both refuse the server.
    other_ca = d / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                    "-keyout", str(d / "other.key"), "-out", str(other_ca)], check=True, capture_output=True)  # fmt: skip
    bad_ca = clean_env(**{**tls, "PGSSLROOTCERT": str(other_ca)}, PGUSER="alice", PGDATABASE="db_alice",
                       PGPASSWORD=ROLES["alice"])  # fmt: skip
    assert both(bad_ca) == (None, None)


def test_the_urls_parts_win_over_the_variables(server):
    cluster, d = server
    # The variables say bob on db_bob with a CA that is not the server's;
    # the URL says alice on db_alice with the right one.
    other = clean_env(PGHOST="localhost", PGPORT=str(cluster.port), PGUSER="bob", PGDATABASE="db_bob",
                      PGPASSWORD=ROLES["bob"], PGSSLMODE="verify-full", PGSSLROOTCERT=str(d / "missing.crt"))  # fmt: skip
    url = cluster.url("db_alice", "alice", ROLES["alice"])
    assert both(other, url) == ("alice/db_alice",) * 2
    # A URL without a password or database: PGPASSWORD and PGDATABASE fill in.
    bare = f"postgres://bob@localhost:{cluster.port}?sslmode=verify-full&sslrootcert={cluster.ca_file}"
    assert both(other, bare) == ("bob/db_bob",) * 2
    # A URL without a port: PGPORT's.
    no_port = f"postgres://alice:{ROLES['alice']}@localhost/db_alice?sslmode=verify-full&sslrootcert={cluster.ca_file}"
    assert both(other, no_port) == ("alice/db_alice",) * 2
