#!/usr/bin/env python3
"""A throwaway PostgreSQL server that logs in as RDS does: passwords
(scram-sha-256) over TLS only, no trust line anywhere, a server certificate
for `localhost` signed by a CA of its own (given to clients as RDS's bundle
is: a file). `make demo` and `make e2e` deploy against it (localstack/up.sh
starts it beside LocalStack, down.sh stops it), and README's setup block is
tested against it (tests/test_database_roles.py).

    python3 localstack/pg_cluster.py start [--state FILE]   # idempotent
    python3 localstack/pg_cluster.py url [--state FILE] [--db NAME]
    python3 localstack/pg_cluster.py stop [--state FILE]

The state file (mode 0600: it holds the admin's password) names the data
directory (under /tmp: the server runs as `postgres` when started as root,
and may not be able to reach the clone), the port and the CA file. Bound
to 127.0.0.1 on a free port; stopped by `pg_ctl` and removed by `stop`.
Standard library only (and the openssl and PostgreSQL binaries).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE = ROOT / ".localstack" / "pg-cluster.json"
ADMIN = "postgres"


@dataclass
class Cluster:
    dir: str
    port: int
    password: str
    bin: str

    @property
    def ca_file(self) -> str:
        return str(Path(self.dir) / "ca.crt")

    def url(self, db: str = "postgres", user: str = ADMIN, password: str | None = None) -> str:
        """A URL as psql and login-etl take it: TLS checked against the CA."""
        pw = self.password if password is None and user == ADMIN else password
        auth = urllib.parse.quote(user, safe="") + (f":{urllib.parse.quote(pw, safe='')}" if pw else "")
        query = urllib.parse.urlencode({"sslmode": "verify-full", "sslrootcert": self.ca_file})
        return f"postgres://{auth}@localhost:{self.port}/{urllib.parse.quote(db, safe='')}?{query}"

    def admin_env(self, db: str = "postgres") -> dict[str, str]:
        """The admin's connection as psql's variables (README's block reads them)."""
        return {"PGHOST": "localhost", "PGPORT": str(self.port), "PGDATABASE": db, "PGUSER": ADMIN,
                "PGPASSWORD": self.password, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": self.ca_file}  # fmt: skip

    def running(self) -> bool:
        if not Path(self.dir, "data", "postmaster.pid").exists():
            return False
        return _run(self._as_owner([str(Path(self.bin, "pg_ctl")), "-D", str(Path(self.dir, "data")), "status"]),
                    check=False).returncode == 0  # fmt: skip

    def stop(self) -> None:
        if Path(self.dir, "data").exists():
            _run(self._as_owner([str(Path(self.bin, "pg_ctl")), "-D", str(Path(self.dir, "data")),
                                 "stop", "-m", "fast", "-w", "-t", "30"]), check=False)  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def _pg_bin() -> Path:
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError(f"no PostgreSQL server binaries under {base} (Debian's postgresql package installs them)")
    return versions[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A direct RDS endpoint's name for the server too (reached at 127.0.0.1 with
# PGHOSTADDR): tests/test_dist.py's test build trusts its CA as the RDS CAs.
RDS_HOST = "db.test.us-east-1.rds.amazonaws.com"


def _certificates(d: Path) -> None:
    """A CA, and a server certificate for localhost, 127.0.0.1 and RDS_HOST it signed."""
    script = f"""
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj '/CN=login-etl throwaway CA' -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout server.key -out server.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:{RDS_HOST}\\n' > san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile san.ext -out server.crt
    chmod 600 server.key ca.key; chmod 644 ca.crt
    """
    _run(["bash", "-ec", script], cwd=d)


def start(state: Path = DEFAULT_STATE) -> Cluster:
    """The cluster of `state`, started when it is not running."""
    if state.exists():
        cluster = Cluster(**json.loads(state.read_text()))
        if cluster.running():
            return cluster
        cluster.stop()
    bin_dir = _pg_bin()
    d = Path(tempfile.mkdtemp(prefix="login-etl-pg-cluster."))
    d.chmod(0o755)
    cluster = Cluster(dir=str(d), port=_free_port(), password=secrets.token_hex(16), bin=str(bin_dir))
    try:
        _certificates(d)
        pwfile = d / "admin.pw"
        pwfile.write_text(cluster.password)
        if os.geteuid() == 0:
            _run(["chown", "-R", "postgres:postgres", str(d)])
        _run(cluster._as_owner([str(bin_dir / "initdb"), "-U", ADMIN, "-A", "scram-sha-256", "--pwfile", str(pwfile),
                                "--no-sync", "-D", str(d / "data")]))  # fmt: skip
        pwfile.unlink()
        conf = (f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\nunix_socket_directories = '{d}'\n"
                "fsync = off\nsynchronous_commit = off\nmax_connections = 200\n"
                f"ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n"
                "password_encryption = 'scram-sha-256'\n")  # fmt: skip
        (d / "data" / "postgresql.auto.conf").write_text(conf)
        # As RDS: TLS and a password for every connection; no trust line.
        (d / "data" / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n"
        )
        if os.geteuid() == 0:
            _run(["chown", "-R", "postgres:postgres", str(d / "data")])
        _run(cluster._as_owner([str(bin_dir / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "server.log"),
                                "start", "-w", "-t", "60"]))  # fmt: skip
    except BaseException:
        cluster.stop()
        raise
    state.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(cluster), f)
    return cluster


def load(state: Path = DEFAULT_STATE) -> Cluster | None:
    """The running cluster of `state`, if any."""
    if not state.exists():
        return None
    cluster = Cluster(**json.loads(state.read_text()))
    return cluster if cluster.running() else None


def stop(state: Path = DEFAULT_STATE) -> bool:
    if not state.exists():
        return False
    Cluster(**json.loads(state.read_text())).stop()
    state.unlink()
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["start", "stop", "url"])
    p.add_argument("--state", type=Path, default=DEFAULT_STATE)
    p.add_argument("--db", default="postgres")
    a = p.parse_args()
    if a.command == "start":
        c = start(a.state)
        print(f"PostgreSQL (passwords over TLS only) on localhost:{c.port}, CA {c.ca_file}")
    elif a.command == "stop":
        print("PostgreSQL stopped" if stop(a.state) else "no PostgreSQL of ours was running")
    else:
        c = load(a.state)
        if c is None:
            sys.exit(f"no PostgreSQL of ours is running ({a.state}): localstack/up.sh starts it")
        print(c.url(a.db))


if __name__ == "__main__":
    main()
