"""The documented database path, checked against the real binary and server:
the roles of docs/configuration.md are those `login-etl grants` prints,
`make migrate` migrates a DATABASE_URL it is given (with an sslmode) without
touching the local server, and README's setup block runs as written, twice,
against a server that takes only passwords over TLS (as RDS), the roles then
logging in with the passwords it set.

Run by `make test` (after cargo has built the binary).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
sys.path.insert(0, str(ROOT / "localstack"))
import pg_cluster  # noqa: E402
import stack  # noqa: E402

BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def login_etl(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """The binary with `args`; `env` over this environment (None: unset)."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make test` (it builds the binary first)")
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=30, env=full)


def psql(url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True, text=True
    ).stdout.strip()


def db_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.mark.parametrize("role", ["ingest", "reveal", "erase", "migrate", "maintain", "audit", "rotate", "upgrade", "reader"])
def test_each_documented_role_is_printed_by_the_command_and_names_what_it_may_run(role):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert re.search(rf"^\| {role} ", doc, re.M), f"docs/configuration.md's table has a row for {role}"
    out = login_etl("grants", "--role", role, "--to", f"login_etl_{role}", "--profile", "full")
    assert out.returncode == 0, out.stderr
    statements = [line for line in out.stdout.splitlines() if not line.startswith("--")]
    assert statements and all(line.endswith(";") for line in statements), out.stdout
    # Every owner's function the docs name for the role is one it may run.
    row = re.search(rf"^\| {role} .*$", doc, re.M).group(0)
    for name in re.findall(r"`(login_etl_\w+)`", row):
        assert f'"{name}"(' in out.stdout, f"the docs say {role} may run {name}; grants does not give it"


def test_grants_default_to_the_masking_profile_and_name_nothing_a_masking_database_lacks():
    full_only = ("user_logins_pii_vault", "user_logins_erased", "user_logins_audit", "login_etl_store_vault",
                 "login_etl_purge_vault", "user_logins_data_keys")  # fmt: skip
    for role in ("ingest", "maintain", "reader"):
        out = login_etl("grants", "--role", role, "--to", f"login_etl_{role}", env={"LOGIN_ETL_PROFILE": None})
        assert out.returncode == 0, out.stderr
        statements = "\n".join(line for line in out.stdout.splitlines() if not line.startswith("--"))
        named = [name for name in full_only if name in statements]
        assert not named, f"grants --role {role} without a profile names full-profile objects {named}:\n{out.stdout}"
    # The analysts' role: SELECT on the table (its partitions inherit it), no function.
    reader = login_etl("grants", "--role", "reader", "--to", "analysts").stdout
    statements = [line for line in reader.splitlines() if line.startswith("GRANT")]
    assert any("SELECT ON" in line and "user_logins" in line for line in statements), reader
    assert not any("EXECUTE" in line for line in statements), reader


def test_grants_refuses_unknown_roles_and_missing_options_with_the_usage():
    for args in (["--role", "admin", "--to", "x"], ["--role", "ingest"], ["--to", "x"]):
        out = login_etl("grants", *args)
        assert out.returncode != 0 and "GRANT" not in out.stdout
        assert out.returncode == 2 and "error:" in out.stderr and "--help" in out.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def databases() -> set[str]:
    """The server's databases."""
    return set(psql(PG_ADMIN_URL, "SELECT string_agg(datname, ',') FROM pg_database").split(","))


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
        # Other suites create and drop theirs meanwhile: what make migrate
        # could have made is the Makefile's local default, or one named after
        # the given URL's path and query.
        created = databases() - databases_before
        local_default = "login_etl"
        assert local_default not in created, "make migrate created the local default database"
        assert not [n for n in created if "sslmode" in n or "?" in n or urllib.parse.quote("?") in n], created
    finally:
        psql(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _FakeRuntime:
    """The Lambda Runtime API on 127.0.0.1 for one invocation: serves
    `event`, keeps the function's response, and holds the next poll."""

    def __init__(self, event: bytes):
        import http.server
        import threading

        self.response: bytes | None = None
        self.done = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if outer.response is not None or getattr(outer, "served", False):
                    outer.done.wait(30)  # no second invocation
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.served = True
                self.send_response(200)
                self.send_header("Lambda-Runtime-Aws-Request-Id", "req-1")
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int((__import__("time").time() + 30) * 1000)))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:login-etl")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(event)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.response = body if self.path.endswith("/response") else b"ERROR " + body
                outer.done.set()
                self.send_response(202)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.done.set()
        self.server.shutdown()


class DeployServer:
    """The deploy path's server: as RDS, it takes only passwords over TLS
    (localstack/pg_cluster.py, no trust line), and moto's Secrets Manager
    keeps the passwords README's block sets (`$SECRETS/<role>`, here
    `<database>/<role>`)."""

    def __init__(self, cluster, endpoint: str):
        import boto3

        self.cluster, self.endpoint = cluster, endpoint
        self.aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                    "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
        self.sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                               aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip

    def admin(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        return self.cluster.url(db, user, password)

    def secret(self, db: str, role: str) -> dict:
        return json.loads(self.sm.get_secret_value(SecretId=f"{db}/{role}")["SecretString"])

    def role(self, db: str, role: str) -> str:
        """`role`'s URL, with the password its secret holds (TLS checked)."""
        return self.cluster.url(db, f"{db}_{role}", self.secret(db, role)["password"])

    def env(self, db: str, role: str) -> dict[str, str]:
        """A command's environment as the deployment gives it: the role's
        secret, TLS checked against the server's CA file."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "DB_", "AWS_"))}
        return {**base, **self.aws, "DB_SECRET_ID": f"{db}/{role}", "DB_CA_BUNDLE": self.cluster.ca_file}

    def block(self, db: str, profile: str | None = None, schema: str | None = None, admin_user: str = "postgres",
              admin_password: str | None = None, secrets: str | None = None,
              prefix: str | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        """README's deploy block, saved and run with `bash -euo pipefail` as
        README says, as `admin_user` (psql's variables, the password in
        PGPASSWORD), on database `db` (roles `<db>_<kind>`, secrets
        `<db>/<kind>`), LOGIN_ETL_PROFILE and SCHEMA set where given (as
        written: masking, public)."""
        admin = self.cluster.admin_env(db)
        values = {"PGHOST": admin["PGHOST"], "PGPORT": admin["PGPORT"], "PGDATABASE": db, "PGUSER": admin_user,
                  "PGSSLMODE": "verify-full", "PGSSLROOTCERT": self.cluster.ca_file, "PREFIX": prefix or db, "SECRETS": secrets or db}  # fmt: skip
        if profile:
            values["LOGIN_ETL_PROFILE"] = profile
        if schema:
            values["SCHEMA"] = schema
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "DB_", "AWS_", "LOGIN_ETL"))}
        env |= {**self.aws, "PATH": f"{BINARY.parent}:{os.environ['PATH']}",
                "PGPASSWORD": admin_password if admin_password is not None else self.cluster.password}  # fmt: skip
        return stack.run_deploy_sequence(values, env)

    def drop(self, db: str) -> None:
        psql(self.admin(), f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        psql(self.admin(), "DROP ROLE IF EXISTS " + ", ".join(f'"{db}_{r}"' for r in ROLE_KINDS))
        for r in ROLE_KINDS:
            try:
                self.sm.delete_secret(SecretId=f"{db}/{r}", ForceDeleteWithoutRecovery=True)
            except self.sm.exceptions.ResourceNotFoundException:
                pass


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy-server")
    cluster = pg_cluster.start(d / "state.json")
    try:
        with stack.moto_server(d / "moto.log") as endpoint:
            yield DeployServer(cluster, endpoint)
    finally:
        pg_cluster.stop(d / "state.json")


ROLE_KINDS = ["migrate", "ingest", "maintain", "reader", "reveal", "erase", "audit", "rotate"]


def test_doctor_passes_a_sound_deployment_and_names_each_break_with_its_fix(srv):
    """`login-etl doctor` as the migrate role: nothing on the README's
    deployment; then one break at a time, each found by its check, naming
    the role, function or setting and the statement that mends it, exit 1;
    mended, nothing again."""
    name = f"login_etl_doc_{os.getpid()}"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        psql(srv.admin(name), "REVOKE ALL ON SCHEMA public FROM PUBLIC")
        done = srv.block(name)
        assert done.returncode == 0, done.stdout + done.stderr
        env = {**os.environ, "DATABASE_URL": srv.role(name, "migrate")}

        def doctor(**more: str) -> tuple[int, dict]:
            out = subprocess.run([str(BINARY), "doctor", "--json"], env={**env, **more}, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            return out.returncode, json.loads(out.stdout)

        code, report = doctor()
        assert code == 0 and report["findings"] == [], report
        assert set(report["checks"]) == {"schema_writers", "schema_version", "search_path", "roles", "privileges",
                                         "grantees", "triggers", "locks", "functions", "owner", "planted", "partitions", "retention",
                                         "timeouts", "replication"}  # fmt: skip
        assert report["profile"] == "masking", report
        human = subprocess.run([str(BINARY), "doctor"], env=env, capture_output=True, text=True, timeout=60)
        assert human.returncode == 0 and "nothing to mend" in human.stdout, human.stdout + human.stderr

        ingest, admin = f"{name}_ingest", srv.admin(name)
        tomorrow_on = ("SELECT string_agg(format('DROP TABLE %I', name), '; ') FROM login_etl_partitions() "
                       "WHERE lo > current_date")  # fmt: skip
        breaks = [
            # (what breaks it, as whom; the check; a word the finding must name; what mends it)
            ("GRANT CREATE ON SCHEMA public TO PUBLIC", admin, "schema_writers", "REVOKE CREATE ON SCHEMA",
             "REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
            (f'REVOKE USAGE ON SCHEMA public FROM "{ingest}"', admin, "roles", f'GRANT USAGE ON SCHEMA "public" TO "{ingest}"',
             f'GRANT USAGE ON SCHEMA public TO "{ingest}"'),
            (f'ALTER ROLE "{ingest}" NOLOGIN', admin, "roles", "LOGIN", f'ALTER ROLE "{ingest}" LOGIN'),
            # A privilege beyond the kind (a whole-table read, another kind's
            # function), and one the kind needs, revoked.
            (f'GRANT SELECT ON user_logins TO "{ingest}"', admin, "privileges",
             f'REVOKE SELECT ON TABLE "user_logins" FROM "{ingest}"', None),
            (f'GRANT EXECUTE ON FUNCTION login_etl_purge_default(date) TO "{ingest}"', admin, "privileges",
             f'REVOKE EXECUTE ON FUNCTION login_etl_purge_default(date) FROM "{ingest}"',
             f'REVOKE EXECUTE ON FUNCTION login_etl_purge_default(date) FROM "{ingest}"'),
            (f'REVOKE INSERT ON user_logins FROM "{ingest}"', admin, "privileges",
             f"login-etl grants --role ingest --to {ingest} --profile masking", f'GRANT INSERT ON user_logins TO "{ingest}"'),
            # Beyond any grant: another role's membership, an attribute, PUBLIC's privileges.
            (f'GRANT "{name}_migrate" TO "{ingest}"', admin, "privileges", f'REVOKE "{name}_migrate" FROM "{ingest}"',
             f'REVOKE "{name}_migrate" FROM "{ingest}"'),
            (f'ALTER ROLE "{ingest}" CREATEDB', admin, "privileges", "NOCREATEDB", f'ALTER ROLE "{ingest}" NOCREATEDB'),
            ("GRANT SELECT ON user_logins TO PUBLIC", admin, "privileges", 'REVOKE SELECT ON TABLE "user_logins" FROM PUBLIC',
             "REVOKE SELECT ON user_logins FROM PUBLIC"),
            ("GRANT EXECUTE ON FUNCTION login_etl_purge_default(date) TO PUBLIC", admin, "privileges",
             "REVOKE EXECUTE ON FUNCTION login_etl_purge_default(date) FROM PUBLIC",
             "REVOKE EXECUTE ON FUNCTION login_etl_purge_default(date) FROM PUBLIC"),
            ("ALTER FUNCTION login_etl_partitions() SET search_path = public, pg_catalog", admin, "search_path",
             "login_etl_partitions", "ALTER FUNCTION login_etl_partitions() SET search_path = pg_catalog, public, pg_temp"),
            ("ALTER FUNCTION login_etl_partitions() RESET DateStyle", admin, "search_path",
             "login_etl_partitions", "ALTER FUNCTION login_etl_partitions() SET DateStyle = 'ISO, MDY'"),
            # A setting a role stored for itself that changes results.
            (f"ALTER ROLE \"{ingest}\" IN DATABASE \"{name}\" SET datestyle = 'SQL, DMY'", admin, "roles",
             f'ALTER ROLE "{ingest}" IN DATABASE "{name}" RESET DateStyle',
             f'ALTER ROLE "{ingest}" IN DATABASE "{name}" RESET DateStyle'),
            # No idle-transaction timeout: a session left idle in one holds retention off.
            (f'ALTER ROLE "{ingest}" IN DATABASE "{name}" RESET idle_in_transaction_session_timeout', admin, "timeouts",
             "idle_in_transaction_session_timeout = '10min'",
             f"ALTER ROLE \"{ingest}\" IN DATABASE \"{name}\" SET idle_in_transaction_session_timeout = '10min'"),
            # No statement timeout for the analysts: a forgotten query holds retention off.
            (f'ALTER ROLE "{name}_reader" IN DATABASE "{name}" RESET statement_timeout', admin, "timeouts",
             "statement_timeout = '30min'",
             f"ALTER ROLE \"{name}_reader\" IN DATABASE \"{name}\" SET statement_timeout = '30min'"),
            ("INSERT INTO user_logins (message_id, sent_at) VALUES ('doc-1', TIMESTAMPTZ '2001-01-01 12:00Z')",
             admin, "partitions", "login-etl maintain", "DELETE FROM user_logins_rows WHERE message_id_text = 'doc-1'"),
        ]  # fmt: skip
        for breaking, url, check, named, mend in breaks:
            psql(url, breaking)
            code, report = doctor()
            found = [f for f in report["findings"] if f["check"] == check]
            assert code == 1 and found, (breaking, report)
            assert any(named in f["fix"] or named in f["subject"] for f in found), (breaking, found)
            if mend is None:
                # doctor's own fix, followed as it says: its SQL as the
                # tables' owner, then its grants command piped to psql.
                (fix,) = [f["fix"] for f in found]
                sql, command = fix.removeprefix("as the tables' owner: ").split(" then ", 1)
                psql(srv.role(name, "migrate"), sql)
                command = command.split(": ", 1)[1].removesuffix(" | psql")
                printed = subprocess.run([str(BINARY), *command.split()[1:]], capture_output=True, text=True, check=True)
                psql(srv.role(name, "migrate"), printed.stdout)
                code, report = doctor()
                assert code == 0, (fix, report)
                continue
            psql(url, mend)
            code, report = doctor()
            assert code == 0, (mend, report)

        # The partitions made ahead, dropped (as the owner): found; maintain mends.
        drops = psql(srv.role(name, "migrate"), tomorrow_on)
        psql(srv.role(name, "migrate"), drops)
        code, report = doctor()
        assert code == 1 and any(f["check"] == "partitions" and "day(s) ahead" in f["problem"]
                                 for f in report["findings"]), report  # fmt: skip
        maintain = subprocess.run([str(BINARY), "maintain"], capture_output=True, text=True, timeout=60,
                                  env={**env, "DATABASE_URL": srv.role(name, "maintain")})  # fmt: skip
        assert maintain.returncode == 0, maintain.stderr
        assert doctor()[0] == 0
        # A partition 100 days back, and RETENTION_DAYS=30 where the owner
        # recorded no retention (every login is kept): doctor says they
        # disagree and how to make them one; maintain applies the longer,
        # drops nothing, says so, and succeeds (the hourly run never fails
        # for it).
        unrecorded = subprocess.run([str(BINARY), "migrate"], capture_output=True, text=True, timeout=60,
                                    env={**env, "RETENTION_DAYS": "all"})  # the block recorded its 90 days  # fmt: skip
        assert unrecorded.returncode == 0, unrecorded.stderr
        psql(srv.role(name, "migrate"), "SELECT login_etl_ensure_partition(current_date - 100)")
        old_day = "SELECT count(*) FROM login_etl_partitions() WHERE name = to_char(current_date - 100, '\"user_logins_p\"YYYYMMDD')"
        code, report = doctor(RETENTION_DAYS="30")
        assert code == 1 and any(f["check"] == "retention" and "RETENTION_DAYS=30 disagrees" in f["problem"]
                                 and "RETENTION_DAYS=30 login-etl migrate" in f["fix"] for f in report["findings"]), report  # fmt: skip
        assert doctor()[0] == 0, "without RETENTION_DAYS everything is kept, as recorded"
        as_maintain = {**env, "DATABASE_URL": srv.role(name, "maintain"), "RETENTION_DAYS": "30"}
        kept = subprocess.run([str(BINARY), "maintain"], capture_output=True, text=True, timeout=60, env=as_maintain)
        assert kept.returncode == 0, kept.stderr
        assert "the longer, every login, is applied" in kept.stdout + kept.stderr, (kept.stdout, kept.stderr)
        assert psql(srv.role(name, "maintain"), old_day) == "1", "the longer retention kept it"
        recorded = subprocess.run([str(BINARY), "migrate"], capture_output=True, text=True, timeout=60,
                                  env={**env, "RETENTION_DAYS": "30"})  # fmt: skip
        assert recorded.returncode == 0, recorded.stderr
        code, report = doctor(RETENTION_DAYS="30")
        assert code == 1 and any(f["check"] == "retention" and "past the retention of 30 days" in f["problem"]
                                 for f in report["findings"]), report  # fmt: skip
        maintain = subprocess.run([str(BINARY), "maintain"], capture_output=True, text=True, timeout=60, env=as_maintain)
        assert maintain.returncode == 0, maintain.stderr
        assert psql(srv.role(name, "maintain"), old_day) == "0", "dropped once both say 30 days"
        assert doctor(RETENTION_DAYS="30")[0] == 0
        # A schema this binary is newer than.
        psql(admin, "UPDATE user_logins_schema SET version = 3")
        code, report = doctor()
        assert code == 1 and any(f["check"] == "schema_version" and "pending" in f["problem"]
                                 for f in report["findings"]), report  # fmt: skip
    finally:
        srv.drop(name)


def _ingest_once(srv: DeployServer, name: str) -> int:
    """The function, as database `name`'s ingest role, behind a Runtime API
    of its own, given events/sqs-valid.json: asserts it answered with no
    failure; the number of records it was given."""
    import json
    import signal

    event = (ROOT / "events" / "sqs-valid.json").read_bytes()
    runtime = _FakeRuntime(event)
    # As deployed: the ingest role's secret, the password README's block set.
    fn_env = srv.env(name, "ingest")
    fn_env.update({"AWS_LAMBDA_RUNTIME_API": runtime.address, "AWS_LAMBDA_FUNCTION_NAME": "login-etl",
                   "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "AWS_LAMBDA_FUNCTION_VERSION": "1",
                   "MASKING_KEY": "ab" * 32, "BACKOFF_BASE_SECONDS": "0"})  # fmt: skip
    proc = subprocess.Popen([str(BINARY)], env=fn_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert runtime.done.wait(60), "the function answered no invocation"
    finally:
        proc.send_signal(signal.SIGKILL)
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        runtime.close()
    assert runtime.response is not None and not runtime.response.startswith(b"ERROR"), (runtime.response, log)
    assert json.loads(runtime.response) == {"batchItemFailures": []}, log
    return len(json.loads(event)["Records"])


def test_the_readme_block_with_a_schema_of_its_own_keeps_everything_there(srv):
    """README's block with SCHEMA set (docs/deploy.md, "A schema of its
    own"), twice, on a database where PUBLIC has no right on `public`: the
    tables and functions in that schema only, each role's search_path set to
    it in the database, the function ingests there as the ingest role,
    maintain (in the block) made its partitions, and doctor finds nothing."""
    name, schema = f"login_etl_own_{os.getpid()}", "Login ETL"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        psql(srv.admin(name), "REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for attempt in (1, 2):
            done = srv.block(name, schema=schema)
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{out}"
            assert "no privileges were granted" not in out and "already exists" not in out, f"run {attempt}\n{out}"
        objects = ("SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE c.relname LIKE 'user\\_logins%' GROUP BY 1 ORDER BY 1")  # fmt: skip
        tables = psql(srv.admin(name), objects).splitlines()
        assert len(tables) == 1 and tables[0].startswith(f"{schema}|"), tables
        assert psql(srv.admin(name), "SELECT count(*) FROM pg_proc WHERE proname LIKE 'login\\_etl\\_%' "
                                  "AND pronamespace = 'public'::regnamespace") == "0"  # fmt: skip
        for r in ("migrate", "ingest", "maintain"):
            setting = psql(srv.admin(name), f"SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                                         f"WHERE r.rolname = '{name}_{r}' AND s.setdatabase = "
                                         f"(SELECT oid FROM pg_database WHERE datname = current_database())")  # fmt: skip
            assert f'search_path=\\"{schema}\\"' in setting or f'search_path="{schema}"' in setting, (r, setting)
            assert psql(srv.admin(name), f"SELECT has_schema_privilege('{name}_{r}', 'public', 'USAGE')") == "f", r
        partitions = f"""SELECT count(*) FROM pg_inherits WHERE inhparent = '"{schema}".user_logins_rows'::regclass"""
        assert int(psql(srv.admin(name), partitions)) > 7, "maintain made the partitions ahead"
        records = _ingest_once(srv, name)
        assert psql(srv.admin(name), f'SELECT count(*) FROM "{schema}".user_logins') == str(records)
        # The fixture's days have no partition: maintain, as the maintain
        # role, moves them out of DEFAULT, there too.
        maintain = subprocess.run([str(BINARY), "maintain"], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "DATABASE_URL": srv.role(name, "maintain")})  # fmt: skip
        assert maintain.returncode == 0, maintain.stdout + maintain.stderr
        assert psql(srv.admin(name), f'SELECT count(*) FROM ONLY "{schema}".user_logins_default') == "0"
        assert psql(srv.admin(name), f'SELECT count(*) FROM "{schema}".user_logins') == str(records)
        doc = subprocess.run([str(BINARY), "doctor", "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DATABASE_URL": srv.role(name, "migrate")})  # fmt: skip
        report = json.loads(doc.stdout)
        assert doc.returncode == 0 and report["schema"] == schema and report["findings"] == [], doc.stdout + doc.stderr
    finally:
        srv.drop(name)


def test_the_readme_block_as_an_admin_that_is_no_superuser_leaves_doctor_nothing_to_mend(srv):
    """As on RDS: the block's admin is a role with CREATEROLE that owns the
    database, not a superuser, on a hardened database. The block runs twice
    in the full profile, the function ingests as the ingest role, and
    doctor, as the migrate role, finds nothing."""
    name = f"login_etl_rds_{os.getpid()}"
    admin_role = f"{name}_admin"
    srv.drop(name)
    admin_password = secrets.token_hex(16)
    psql(srv.admin(), f'DROP ROLE IF EXISTS "{admin_role}"')
    psql(srv.admin(), f"CREATE ROLE \"{admin_role}\" LOGIN CREATEROLE PASSWORD '{admin_password}'")
    psql(srv.admin(), f'CREATE DATABASE "{name}" OWNER "{admin_role}"')
    try:
        psql(srv.admin(name), "REVOKE ALL ON SCHEMA public FROM PUBLIC")
        for attempt in (1, 2):
            done = srv.block(name, "full", admin_user=admin_role, admin_password=admin_password)
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{out}"
            assert "no privileges were granted" not in out and "WARNING" not in out, f"run {attempt}\n{out}"
        records = _ingest_once(srv, name)
        assert psql(srv.admin(name), "SELECT count(*) FROM user_logins") == str(records)
        # The fixture's old days went to DEFAULT: maintain moves them, as the maintain role.
        maintain = subprocess.run([str(BINARY), "maintain"], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "DATABASE_URL": srv.role(name, "maintain")})  # fmt: skip
        assert maintain.returncode == 0, maintain.stdout + maintain.stderr
        doc = subprocess.run([str(BINARY), "doctor", "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DATABASE_URL": srv.role(name, "migrate")})  # fmt: skip
        report = json.loads(doc.stdout)
        assert doc.returncode == 0 and report["findings"] == [], doc.stdout + doc.stderr
        # docs/upgrade.md's "Remove everything", step 2, as written, as that admin.
        text = (ROOT / "docs" / "upgrade.md").read_text()
        start = text.index("```sh\n", text.index("<!-- teardown -->")) + len("```sh\n")
        block = textwrap.dedent(text[start:text.index("```", start)])
        admin = srv.cluster.admin_env(name) | {"PGUSER": admin_role, "PGPASSWORD": admin_password}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))} | admin | {"PREFIX": name}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        left = psql(srv.admin(name), "SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE 'user\\_logins%') "
                                     "+ (SELECT count(*) FROM pg_proc WHERE proname LIKE 'login\\_etl\\_%')")  # fmt: skip
        assert left == "0", f"{left} objects of login-etl left"
        roles = psql(srv.admin(), f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{name}\\_%' AND rolname <> '{admin_role}'")
        assert roles == "0", f"{roles} roles left"
    finally:
        srv.drop(name)
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{admin_role}"')


def test_the_readme_block_runs_twice_on_a_hardened_database_and_every_role_works_after_it(srv):
    """README's deploy block, as written (under bash -euo pipefail, the
    masking-only profile), twice, then widened with LOGIN_ETL_PROFILE=full, on a
    database where PUBLIC has no right on the schema (the common
    hardening, and PostgreSQL 15's default made stricter): no GRANT is a
    no-op, the second run changes nothing and fails on nothing, `maintain`
    runs as the maintain role (in the block), and the function, as the
    ingest role, writes a batch."""
    import json
    import signal

    name = f"login_etl_hard_{os.getpid()}"
    roles = ["migrate", "ingest", "maintain"]  # the masking-only profile's, as the block is written

    def drop():
        srv.drop(name)

    drop()
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        psql(srv.admin(name), "REVOKE ALL ON SCHEMA public FROM PUBLIC")
        role_url = lambda r: srv.role(name, r)  # noqa: E731
        for attempt in (1, 2):
            done = srv.block(name)
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{out}"
            assert "no privileges were granted" not in out, f"run {attempt}: a GRANT did nothing\n{out}"
            assert "already exists" not in out, f"run {attempt}\n{out}"
        # Every role may use the schema by its own grant, not PUBLIC's.
        for r in roles:
            assert psql(srv.admin(name), f"SELECT has_schema_privilege('{name}_{r}', 'public', 'USAGE')") == "t", r
        assert psql(srv.admin(name), "SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a "
                                  "WHERE n.nspname = 'public' AND a.grantee = 0") == "0", "PUBLIC has nothing"  # fmt: skip

        records = _ingest_once(srv, name)
        assert psql(srv.admin(name), "SELECT count(*) FROM user_logins") == str(records)
        assert psql(srv.admin(name), "SELECT to_regclass('user_logins_pii_vault') IS NULL") == "t", "masking-only"

        # Widened: the block again with LOGIN_ETL_PROFILE=full adds the other four
        # roles and the full profile's tables; the rows stay.
        done = srv.block(name, "full")
        out = done.stdout + done.stderr
        assert done.returncode == 0 and "no privileges were granted" not in out, out
        for r in ROLE_KINDS:
            assert psql(srv.admin(name), f"SELECT has_schema_privilege('{name}_{r}', 'public', 'USAGE')") == "t", r
        assert psql(srv.admin(name), "SELECT profile FROM user_logins_schema") == "full"
        assert psql(srv.admin(name), "SELECT to_regclass('user_logins_pii_vault') IS NOT NULL") == "t"
        assert psql(srv.admin(name), "SELECT count(*) FROM user_logins") == str(records)
        # doctor finds every one of the seven roles holding exactly its kind's.
        doc = subprocess.run([str(BINARY), "doctor", "--json"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "DATABASE_URL": role_url("migrate")})  # fmt: skip
        report = json.loads(doc.stdout)
        assert doc.returncode == 0 and report["profile"] == "full" and report["findings"] == [], doc.stdout + doc.stderr
        # Given the key the function wrote with, nothing; given another (a
        # secret replaced instead of appended to), the keys check names it.
        for key, code in (("ab" * 32, 0), ("cd" * 32, 1)):
            doc = subprocess.run([str(BINARY), "doctor", "--json"], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "DATABASE_URL": role_url("migrate"),
                                      "MASKING_KEY": key})  # fmt: skip
            report = json.loads(doc.stdout)
            assert doc.returncode == code and "keys" in report["checks"], doc.stdout + doc.stderr
            found = [f for f in report["findings"] if f["check"] == "keys"]
            assert [f["subject"] for f in found] == (["MASKING_KEY_SECRET_ID"] if code else []), found
            assert "cd" * 32 not in doc.stdout + doc.stderr
    finally:
        drop()


def test_each_secret_is_readable_by_its_principals_alone_and_one_made_by_someone_else_is_not_adopted(srv):
    """`login-etl password` (README's block) puts a resource policy on each
    secret it makes before the password goes in: every principal is denied
    reading or changing it but the admin who ran it (by STS). It adopts a
    secret only where it names this server's host and database and carries
    that policy; a secret someone made first (no policy: its maker knows
    its password) or one naming another host is refused, and nothing
    changes; --new-password puts the policy on it, then a new password."""
    import boto3

    name = f"login_etl_pol_{os.getpid()}"
    extra = f"{name}_extra"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        done = srv.block(name)
        assert done.returncode == 0, done.stdout + done.stderr
        sts = boto3.client("sts", endpoint_url=srv.endpoint, region_name="us-east-1", aws_access_key_id="test",
                           aws_secret_access_key="test")  # fmt: skip
        caller = sts.get_caller_identity()["Arn"]
        for role in ("migrate", "ingest", "maintain", "reader"):
            policy = json.loads(srv.sm.get_resource_policy(SecretId=f"{name}/{role}")["ResourcePolicy"])
            [statement] = policy["Statement"]
            assert (statement["Sid"], statement["Effect"], statement["Principal"]) == (
                "LoginEtlOnlyItsPrincipals", "Deny", "*"), statement  # fmt: skip
            assert "secretsmanager:GetSecretValue" in statement["Action"], statement
            assert statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [caller], (caller, statement)

        admin = srv.cluster.admin_env(name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "DB_", "AWS_"))}
        env |= {**srv.aws, **admin}

        def password(secret: str, *more: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BINARY), "password", "--role", extra, "--secret-id", secret, *more],
                                  capture_output=True, text=True, timeout=60, env=env)  # fmt: skip

        def logs_in(pw: str) -> bool:
            probe = subprocess.run(["psql", srv.cluster.url(name, extra, pw), "-qAtXc", "SELECT 1"],
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
            return probe.returncode == 0

        psql(srv.admin(name), f'CREATE ROLE "{extra}" LOGIN')
        # Made first by someone else, without a policy: its maker knows the password.
        planted = {"engine": "postgres", "username": extra, "password": "chosen-by-its-maker", "host": admin["PGHOST"],
                   "port": int(admin["PGPORT"]), "dbname": name}  # fmt: skip
        srv.sm.create_secret(Name=f"{name}/extra", SecretString=json.dumps(planted))
        refused = password(f"{name}/extra")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is not adopted: it has no resource policy" in refused.stderr and "--new-password" in refused.stderr, refused.stderr
        assert "chosen-by-its-maker" not in refused.stdout + refused.stderr
        assert not logs_in("chosen-by-its-maker"), "nothing changed: the role has no password"
        taken = password(f"{name}/extra", "--new-password")
        assert taken.returncode == 0, taken.stderr
        now = json.loads(srv.sm.get_secret_value(SecretId=f"{name}/extra")["SecretString"])
        assert now["password"] != "chosen-by-its-maker" and logs_in(now["password"])
        assert not logs_in("chosen-by-its-maker")
        assert "LoginEtlOnlyItsPrincipals" in srv.sm.get_resource_policy(SecretId=f"{name}/extra")["ResourcePolicy"]
        again = password(f"{name}/extra")
        assert again.returncode == 0 and "(generated now)" not in again.stdout, again.stdout + again.stderr
        # A reader named later widens the policy; the password stays.
        reader = "arn:aws:iam::123456789012:role/login-etl-operators"
        widened = password(f"{name}/extra", "--reader-arn", reader)
        assert widened.returncode == 0 and "(generated now)" not in widened.stdout, widened.stderr
        policy = json.loads(srv.sm.get_resource_policy(SecretId=f"{name}/extra")["ResourcePolicy"])
        assert policy["Statement"][0]["Condition"]["ArnNotLike"]["aws:PrincipalArn"] == [caller, reader], policy
        assert json.loads(srv.sm.get_secret_value(SecretId=f"{name}/extra")["SecretString"])["password"] == now["password"]
        # One naming another host (where its maker would have the function connect).
        srv.sm.create_secret(Name=f"{name}/elsewhere", SecretString=json.dumps({**planted, "host": "db.example.net"}))
        elsewhere = password(f"{name}/elsewhere", "--new-password")
        assert elsewhere.returncode == 1 and "names db.example.net:" in elsewhere.stderr and "--secret-host" in elsewhere.stderr, elsewhere.stderr

        # doctor, connected with the owner's secret, checks that secret's
        # policy: none found; its policy taken off, found, with the command
        # that mends it, which mends it (a new password nobody has seen).
        def doctor() -> dict:
            out = subprocess.run([str(BINARY), "doctor", "--json"], env=srv.env(name, "migrate"), capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            return json.loads(out.stdout)

        report = doctor()
        assert "secret" in report["checks"] and not [f for f in report["findings"] if f["check"] == "secret"], report
        srv.sm.delete_resource_policy(SecretId=f"{name}/migrate")
        (found,) = [f for f in doctor()["findings"] if f["check"] == "secret"]
        assert found["subject"] == f"{name}/migrate" and "no resource policy" in found["problem"], found
        command = f"login-etl password --role {name}_migrate --secret-id {name}/migrate --new-password"
        assert found["fix"].startswith(f"as the admin: {command},"), found["fix"]
        mended = subprocess.run([str(BINARY), *command.split()[1:]], capture_output=True, text=True, timeout=60, env=env)
        assert mended.returncode == 0, mended.stderr
        report = doctor()
        assert "secret" in report["checks"] and not [f for f in report["findings"] if f["check"] == "secret"], report
    finally:
        for secret in (f"{name}/extra", f"{name}/elsewhere"):
            try:
                srv.sm.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
            except srv.sm.exceptions.ResourceNotFoundException:
                pass
        srv.drop(name)
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{extra}"')


def test_a_second_deployment_never_resets_the_roles_of_another(srv):
    """Roles belong to the server: a second deployment (another stack, or
    README's block with other secrets) naming the same roles would set
    passwords the first one's functions never read. Setup marks each role
    with the secrets that hold its password, and refuses, changing
    nothing, where a role is another deployment's or was made by hand;
    the first deployment's roles keep logging in, and its own second run
    goes through."""
    name = f"login_etl_two_{os.getpid()}"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    other = f"{name}-second-stack"
    try:
        done = srv.block(name)
        assert done.returncode == 0, done.stdout + done.stderr
        before = {r: srv.secret(name, r)["password"] for r in ("migrate", "ingest", "maintain")}
        refused = srv.block(name, secrets=other)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0, out
        assert f"the role {name}_migrate belongs to another login-etl deployment" in out and "nothing was changed" in out, out
        for r in ("migrate", "ingest", "maintain"):
            assert psql(srv.role(name, r), "SELECT current_user") == f"{name}_{r}", f"{r} no longer logs in"
            assert srv.secret(name, r)["password"] == before[r]
            with pytest.raises(srv.sm.exceptions.ResourceNotFoundException):
                srv.sm.get_secret_value(SecretId=f"{other}/{r}")
        # A role made by hand (no mark, no secret of this deployment's): refused,
        # with the statement that hands it over; once run, adopted.
        psql(srv.admin(), f'COMMENT ON ROLE "{name}_ingest" IS NULL')
        refused = srv.block(name, secrets=other)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0, out
        assert f"the role {name}_migrate belongs to another" in out, "the first role's mark still refuses"
        psql(srv.admin(), "DO $$ DECLARE r text; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE "
                          f"'{name}\\_%' LOOP EXECUTE format('COMMENT ON ROLE %I IS NULL', r); END LOOP; END $$")  # fmt: skip
        refused = srv.block(name, secrets=other)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0 and "was not made by this deployment" in out, out
        mark = lambda secrets: f"login-etl setup, secrets {secrets}, account 123456789012, region us-east-1"  # noqa: E731 (moto's)
        assert f"COMMENT ON ROLE \"{name}_migrate\" IS '{mark(other)}'" in out, out
        # Its own second run (its secrets name the roles): adopted, marked again.
        done = srv.block(name)
        assert done.returncode == 0, done.stdout + done.stderr
        assert psql(srv.admin(), f"SELECT shobj_description('{name}_ingest'::regrole, 'pg_authid')") == mark(name)
        for r in ("migrate", "ingest", "maintain"):
            assert srv.secret(name, r)["password"] == before[r]
    finally:
        srv.drop(name)
        for r in ROLE_KINDS:
            try:
                srv.sm.delete_secret(SecretId=f"{other}/{r}", ForceDeleteWithoutRecovery=True)
            except srv.sm.exceptions.ResourceNotFoundException:
                pass


def test_two_deployments_share_one_database_each_with_its_own_roles_and_tables(srv):
    """Two stacks in one database with their default parameters (each
    stack's role prefix its name, DbSchema auto): the first takes public;
    the second finds the first's tables there and takes a schema of its
    own. Both ingest, and neither's passwords change when the other's
    setup runs again. A deployment whose roles carry another prefix (a
    stack made with the old default, login_etl) is refused, changing
    nothing, with the prefix to keep."""
    db = f"login_etl_side_{os.getpid()}"
    first, second, moved = f"{db}_one", f"{db}_two", f"{db}_three"
    deployments = (first, second, moved)

    def clean():
        srv.drop(db)
        psql(srv.admin(), "DROP ROLE IF EXISTS " + ", ".join(f'"{d}_{r}"' for d in deployments for r in ROLE_KINDS))
        for d in deployments:
            for r in ROLE_KINDS:
                try:
                    srv.sm.delete_secret(SecretId=f"{d}/{r}", ForceDeleteWithoutRecovery=True)
                except srv.sm.exceptions.ResourceNotFoundException:
                    pass

    clean()
    psql(srv.admin(), f'CREATE DATABASE "{db}"')
    try:
        for d in (first, second):
            done = srv.block(db, schema="auto", prefix=d, secrets=d)
            assert done.returncode == 0, done.stdout + done.stderr
        where = psql(srv.admin(db), "SELECT string_agg(n.nspname || '=' || pg_get_userbyid(c.relowner), ',' ORDER BY 1) "
                                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE c.relname = 'user_logins_rows'")  # fmt: skip
        assert where == f"public={first}_migrate,{second}={second}_migrate", where
        passwords = lambda: {(d, r): srv.secret(d, r)["password"] for d in (first, second) for r in ("migrate", "ingest", "maintain")}  # noqa: E731
        before = passwords()
        for d in (first, second):
            done = srv.block(db, schema="auto", prefix=d, secrets=d)
            assert done.returncode == 0, done.stdout + done.stderr
        assert passwords() == before, "a setup changed a password"
        records = [_ingest_once(srv, d) for d in (first, second)]
        assert psql(srv.admin(db), "SELECT count(*) FROM public.user_logins") == str(records[0])
        assert psql(srv.admin(db), f'SELECT count(*) FROM "{second}".user_logins') == str(records[1])
        # The first deployment's secrets under another prefix: refused.
        refused = srv.block(db, schema="auto", prefix=moved, secrets=first)
        out = refused.stdout + refused.stderr
        assert refused.returncode != 0 and f"Keep its prefix: DbRolePrefix={first}" in out, out
        assert psql(srv.admin(), f"SELECT count(*) FROM pg_roles WHERE rolname LIKE '{moved}%'") == "0"
        assert passwords() == before
    finally:
        clean()


def test_setup_takes_a_schema_of_its_own_where_public_is_open_to_others(srv):
    """PostgreSQL 14's default (PUBLIC may CREATE in public), where migrate
    refuses public: README's block with SCHEMA=auto (the stack's DbSchema
    default) makes and uses a schema named as the prefix, with no step by
    hand, twice; the function ingests there as the ingest role. An
    overload of format() another role planted in the open public (one that
    matches setup's call better than pg_catalog's) is never called by the
    admin. Closed again, the tables stay where they are."""
    name = f"login_etl_auto_{os.getpid()}"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        psql(srv.admin(name), "GRANT CREATE ON SCHEMA public TO PUBLIC")
        planter = f"{name}_planter"
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{planter}"; CREATE ROLE "{planter}"')
        psql(srv.admin(name), f"""CREATE TABLE public.ran_as (who text); GRANT INSERT ON public.ran_as TO PUBLIC;
            SET ROLE "{planter}";
            CREATE FUNCTION public.format(f text, a text, b name, c text) RETURNS text LANGUAGE sql
              AS $$ INSERT INTO public.ran_as VALUES (current_user) RETURNING pg_catalog.format(f, a, b, c) $$""")  # fmt: skip
        for attempt in (1, 2):
            done = srv.block(name, schema="auto")
            out = done.stdout + done.stderr
            assert done.returncode == 0, f"run {attempt}: exit {done.returncode}\n{out}"
            assert f"schema {name}\n" in done.stdout or f"schema {name}" in out, out
        assert psql(srv.admin(name), "SELECT count(*) FROM public.ran_as") == "0", "the admin ran a planted function"
        owner = psql(srv.admin(name), "SELECT n.nspname || '|' || pg_get_userbyid(c.relowner) FROM pg_class c "
                                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'user_logins_rows'")  # fmt: skip
        assert owner == f"{name}|{name}_migrate", owner
        records = _ingest_once(srv, name)
        assert psql(srv.admin(name), f'SELECT count(*) FROM "{name}".user_logins') == str(records)
        # Closed again, the tables stay where they are (this stack's own).
        psql(srv.admin(name), "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        done = srv.block(name, schema="auto")
        assert done.returncode == 0, done.stdout + done.stderr
        assert psql(srv.admin(name), "SELECT count(*) FROM pg_class WHERE relname = 'user_logins_rows'") == "1"
    finally:
        srv.drop(name)
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{name}_planter"')


def test_auto_refuses_a_schema_of_its_name_someone_else_made_first(srv):
    """Where public is open, `auto` would make a schema named as the
    prefix; one another role made first (and so owns, and may plant in)
    is refused, changing nothing."""
    name = f"login_etl_squat_{os.getpid()}"
    squatter = f"{name}_squatter"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{squatter}"; CREATE ROLE "{squatter}"')
        psql(srv.admin(name), f'GRANT CREATE ON SCHEMA public TO PUBLIC; CREATE SCHEMA "{name}" AUTHORIZATION "{squatter}"')
        done = srv.block(name, schema="auto")
        out = done.stdout + done.stderr
        assert done.returncode != 0 and f"the schema {name} that setup would use instead already exists, owned by {squatter}" in out, out
        assert psql(srv.admin(name), "SELECT count(*) FROM pg_class WHERE relname LIKE 'user\\_logins%'") == "0"
    finally:
        srv.drop(name)
        psql(srv.admin(), f'DROP ROLE IF EXISTS "{squatter}"')
