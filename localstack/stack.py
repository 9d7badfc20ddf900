#!/usr/bin/env python3
"""login-etl's stack in LocalStack: deploy template.yaml, send login messages,
watch the queue drain, report what happened.

`make demo` runs `python localstack/stack.py demo`; the end-to-end test
(tests/test_localstack_e2e.py) imports the same functions, so the demo and the
test exercise one code path. LocalStack must be running (localstack/up.sh).

The stack is the real template.yaml, packaged like `sam build` does for this
host's CPU (parameter Architecture; see build()) and deployed by `sam deploy` into LocalStack's
CloudFormation (SAM transform included). Only two things are made outside
the template, as in a real account: the DB secret (the template takes its ARN)
and the artifact bucket.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import hmac
import ipaddress
import json
import re
import os
import platform
import random
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = os.environ.get("LOCALSTACK_ENDPOINT", f"http://127.0.0.1:{os.environ.get('LOCALSTACK_PORT', '4566')}")
REGION = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pg_cluster  # noqa: E402 - beside this file


@functools.cache
def admin_url() -> str:
    """The admin's URL: PG_ADMIN_URL where given, else the throwaway server
    localstack/up.sh starts beside LocalStack (passwords over TLS, as RDS)."""
    given = os.environ.get("PG_ADMIN_URL")
    if given:
        return given
    cluster = pg_cluster.load(ROOT / os.environ.get("LOCALSTACK_STATE", ".localstack") / "pg-cluster.json")
    if cluster is None:
        raise RuntimeError("no PostgreSQL for the stacks: localstack/up.sh starts one (passwords over TLS only), "
                           "or set PG_ADMIN_URL")  # fmt: skip
    return cluster.url()


def __getattr__(name: str) -> str:
    # stack.PG_ADMIN_URL, read when first used (importing needs no server).
    if name == "PG_ADMIN_URL":
        return admin_url()
    raise AttributeError(name)
BUILD_DIR = ROOT / ".aws-sam" / "localstack"
ARTIFACT_BUCKET = "login-etl-local-artifacts"
HOST_ARCH = "arm64" if platform.machine().lower() in ("aarch64", "arm64") else "x86_64"
# LocalStack accepts any credentials; these never leave the machine.
LOCAL_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ENDPOINT_URL": ENDPOINT,
    "AWS_EC2_METADATA_DISABLED": "true",
    "SAM_CLI_TELEMETRY": "0",
    # sam deploy polls the stack's events every 0.5 s by default: with four
    # stacks deploying at once, LocalStack's busiest work in make e2e.
    "SAM_CLI_POLL_DELAY": "2",
}
# Redeliveries within seconds instead of minutes (see VisibilityTimeoutSeconds).
LOCAL_VISIBILITY_TIMEOUT = 5


def say(msg: str) -> None:
    print(msg, flush=True)


def localstack_running() -> bool:
    """Whether the LocalStack of localstack/up.sh runs (its pid file names a live process)."""
    pidfile = ROOT / os.environ.get("LOCALSTACK_STATE", ".localstack") / "localstack.pid"
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False


def client(service: str):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=60),
    )


# -- PostgreSQL (psql, the client every PostgreSQL install has) ---------------


def db_url(dbname: str, user: str | None = None, password: str | None = None) -> str:
    """admin_url() with its database (and, given, its user and password)
    replaced; its TLS settings kept."""
    pg = urllib.parse.urlsplit(admin_url())
    if user is None:
        netloc = pg.netloc
    else:
        auth = urllib.parse.quote(user, safe="") + (f":{urllib.parse.quote(password, safe='')}" if password else "")
        netloc = f"{auth}@{pg.hostname}:{pg.port or 5432}"
    return urllib.parse.urlunsplit((pg.scheme, netloc, "/" + urllib.parse.quote(dbname, safe=""), pg.query, ""))


def admin_env(dbname: str) -> dict[str, str]:
    """admin_url() as psql's variables, on `dbname` (README's block reads them)."""
    pg = urllib.parse.urlsplit(admin_url())
    query = dict(urllib.parse.parse_qsl(pg.query))
    env = {"PGHOST": pg.hostname or "localhost", "PGPORT": str(pg.port or 5432), "PGDATABASE": dbname,
           "PGUSER": urllib.parse.unquote(pg.username or "postgres")}  # fmt: skip
    if pg.password:
        env["PGPASSWORD"] = urllib.parse.unquote(pg.password)
    if "sslmode" in query:
        env["PGSSLMODE"] = query["sslmode"]
    if "sslrootcert" in query:
        env["PGSSLROOTCERT"] = query["sslrootcert"]
    return env


def psql(url: str, sql: str) -> list[list[str]]:
    """Rows of `sql` as lists of strings (unaligned, tab-separated)."""
    out = subprocess.run(
        ["psql", url, "-qAtX", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line.split("\t") for line in out.splitlines()]


def create_database(dbname: str) -> None:
    if not psql(admin_url(), f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'"):
        psql(admin_url(), f'CREATE DATABASE "{dbname}"')


def drop_database(dbname: str) -> None:
    _HAS_TABLE.discard(dbname)
    psql(admin_url(), f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    # One statement for the roles (each psql is a TLS and SCRAM connection).
    psql(admin_url(), "DROP ROLE IF EXISTS " + ", ".join(f'"{role_name(dbname, role)}"' for role in ROLES))
    for role in ROLES:
        try:
            client("secretsmanager").delete_secret(SecretId=secret_id(dbname, role), ForceDeleteWithoutRecovery=True)
        except Exception:  # noqa: BLE001 - none made yet, or LocalStack is not running
            pass
    _passwords.clear()


# The database roles of the README's deploy sequence (`login-etl grants`):
# the function connects as ingest, `reveal` and `forget` as their own roles.
ROLES = ("migrate", "ingest", "maintain", "reader", "reveal", "erase", "audit", "rotate")


def role_name(dbname: str, role: str) -> str:
    return f"{dbname}_{role}"


def secret_id(dbname: str, role: str) -> str:
    """The secret README's block keeps `role`'s password in ($SECRETS/<role>)."""
    return f"login-etl-local/{dbname}/{role}"


_passwords: dict[tuple[str, str], str] = {}


def role_password(dbname: str, role: str) -> str | None:
    """`role`'s password, from the secret the block made (None before it ran)."""
    key = (dbname, role)
    if key not in _passwords:
        try:
            text = client("secretsmanager").get_secret_value(SecretId=secret_id(dbname, role))["SecretString"]
        except Exception:  # noqa: BLE001 - the block has not made it
            return None
        _passwords[key] = json.loads(text)["password"]
    return _passwords[key]


def role_url(dbname: str, role: str) -> str:
    """The URL of `role` on `dbname`, with the password its secret holds."""
    return db_url(dbname, role_name(dbname, role), role_password(dbname, role))


def deploy_sequence() -> str:
    """The README's deploy sequence (the sh block after `<!-- deploy-sequence -->`)."""
    text = (ROOT / "README.md").read_text()
    after = text.split("<!-- deploy-sequence -->", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    return textwrap.dedent(block)


def run_deploy_sequence(values: dict[str, str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """README's block, saved and run with `bash -euo pipefail` as it says,
    its `export NAME=` lines set to `values` (each name must have one)."""
    lines = deploy_sequence().splitlines()
    for name, value in values.items():
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"export {name}=")]
        lines[i] = f"export {name}={shlex.quote(value)}"
    with tempfile.TemporaryDirectory(prefix="login-etl-setup.") as d:
        script = Path(d) / "setup.sh"
        script.write_text("\n".join(lines) + "\n")
        return subprocess.run(["bash", "-euo", "pipefail", str(script)], env=env, cwd=d,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def prepare_database(dbname: str, profile: str = "full", env: dict[str, str] | None = None,
                     secrets_prefix: str | None = None, host: str | None = None) -> None:
    """The README's deploy sequence, run as written against the stacks'
    server as its admin (psql's variables, as the block says), its settings
    pointed at `dbname`, its LOGIN_ETL_PROFILE set to `profile` and its
    secrets made in LocalStack: the admin creates the roles and their
    passwords, the migrate role creates the tables and applies each role's
    `login-etl grants`. Run again with "full" on a masking-only database,
    it widens it (as the README says). With `env`, the block runs in that
    environment (its PATH gives `login-etl`), else with the packaged bootstrap;
    with `secrets_prefix`, its SECRETS (a stack's own: `<stack>`); with
    `host`, the server by that name (pg_cluster.RDS_HOST), reached at
    127.0.0.1 (PGHOSTADDR: the operator's tunnel)."""
    admin = admin_env(dbname)
    values = {name: admin[name] for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER")}
    if host:
        values["PGHOST"] = host
    values |= {"PGSSLMODE": admin.get("PGSSLMODE", "disable"), "PGSSLROOTCERT": admin.get("PGSSLROOTCERT", ""),
               "PREFIX": dbname, "LOGIN_ETL_PROFILE": profile,
               "SECRETS": secrets_prefix or f"login-etl-local/{dbname}"}  # fmt: skip
    if env is None:
        bin_dir = BUILD_DIR / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        # Replaced atomically: pytest workers side by side prepare databases at
        # once, and another's deploy sequence may be running the link.
        link, new_link = bin_dir / "login-etl", bin_dir / f".login-etl.{os.getpid()}"
        new_link.unlink(missing_ok=True)
        new_link.symlink_to(BUILD_DIR / "LoginEtlFunction" / "bootstrap")
        new_link.replace(link)
        env = {**os.environ, **LOCAL_ENV, "AWS_REGION": REGION, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env = {k: v for k, v in env.items() if not k.startswith(("PG", "DATABASE_URL", "DB_"))}
    if "PGPASSWORD" in admin:  # the admin's password, as an operator exports it
        env["PGPASSWORD"] = admin["PGPASSWORD"]
    if host:
        env["PGHOSTADDR"] = "127.0.0.1"
    done = run_deploy_sequence(values, env)
    if done.returncode != 0:
        raise RuntimeError(f"the README's deploy sequence failed:\n{done.stdout}{done.stderr}")
    _passwords.clear()


# Databases whose user_logins was seen (until the database is dropped or
# made again): row_count, called in every wait loop, asks once.
_HAS_TABLE: set[str] = set()


def row_count(dbname: str) -> int:
    """Rows in user_logins; 0 before the function's first cold start created it."""
    if dbname not in _HAS_TABLE:
        if not table_exists(dbname):
            return 0
        _HAS_TABLE.add(dbname)
    return int(psql(db_url(dbname), "SELECT count(*) FROM user_logins")[0][0])


def table_exists(dbname: str) -> bool:
    return psql(db_url(dbname), "SELECT to_regclass('user_logins') IS NOT NULL")[0][0] == "t"


# -- build and deploy ---------------------------------------------------------


def sam(*args: str, extra_env: dict[str, str] | None = None, log: Path | None = None) -> None:
    """Runs the SAM CLI against LocalStack; with `log`, its output goes to
    that file (tests running side by side), and its tail is printed if it fails."""
    env = {**os.environ, **LOCAL_ENV, **(extra_env or {})}
    if log is None:
        subprocess.run(["sam", *args], cwd=ROOT, env=env, check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(["sam", *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        say("\n".join(["sam failed; the end of its output:", *tail, f"(all of it: {log})"]))
        raise subprocess.CalledProcessError(done.returncode, done.args)


@contextlib.contextmanager
def build_lock():
    """Held while the package is written: pytest workers side by side
    (make e2e) each package the same files."""
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with (BUILD_DIR.parent / "localstack.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# The local package is the host's debug build of the bootstrap: the one
# `cargo test` builds too, so `make demo`, `make test` and `make e2e` compile
# the dependency graph once, with one profile, and link the system OpenSSL
# (the Makefile's OPENSSL_NO_VENDOR=1). The AWS artifact (`make sam-build`,
# `make deploy`, and CI's arm64 build) is `sam build` with cargo lambda, the
# full release profile and vendored OpenSSL.
HOST_BUILD_ENV = {"OPENSSL_NO_VENDOR": os.environ.get("OPENSSL_NO_VENDOR", "1"),
                  "CARGO_INCREMENTAL": os.environ.get("CARGO_INCREMENTAL", "0")}  # the Makefile's too


def build() -> None:
    """The function's package for LocalStack in .aws-sam/localstack, as `sam build` lays it out.

    `cargo build --bin login-etl` (the host's CPU, shown with cargo's own
    progress), its binary copied to LoginEtlFunction/bootstrap, and
    template.yaml with the function's CodeUri pointing there: exactly what
    `sam build` writes, without a second, release-profile compile of the
    whole dependency graph."""
    with build_lock():
        _build()


def _build() -> None:
    from samcli.yamlhelper import yaml_dump, yaml_parse  # the SAM CLI's own CloudFormation YAML (intrinsic tags)

    built = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
    prebuilt = os.environ.get("LOGIN_ETL_PREBUILT", "")
    if prebuilt not in ("", "1"):
        # make test's copy of the binary host-build made: cargo builds
        # beside this and may replace target/debug/login-etl meanwhile.
        built = Path(prebuilt)
        if not built.is_file():
            raise SystemExit(f"LOGIN_ETL_PREBUILT={prebuilt}: no such binary; unset it to build with cargo")
    if prebuilt and built.exists():
        # make test built it already, and runs cargo test beside this: a
        # second cargo would wait for the first's lock on target/.
        say(f"==> using {built} as built by make test (LOGIN_ETL_PREBUILT)")
    else:
        say("==> cargo build --bin login-etl --examples (the first build compiles every dependency: a few minutes; cargo shows its progress)")
        env = {**os.environ, **HOST_BUILD_ENV}
        # --examples: building an example activates the dev-dependencies' features
        # (tokio's, hyper's), so the crates compiled here are the ones `cargo test`
        # compiles, and make test after make demo (or CI's e2e after the tests)
        # compiles nothing twice.
        subprocess.run(["cargo", "build", "--bin", "login-etl", "--examples"], cwd=ROOT, env=env, check=True)
    say(f"==> packaging the bootstrap and template.yaml into {BUILD_DIR.relative_to(ROOT)} (Architecture={HOST_ARCH}, the host's CPU)")
    function_dir = BUILD_DIR / "LoginEtlFunction"
    function_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = function_dir / "bootstrap"
    source, have = built.stat(), bootstrap.stat() if bootstrap.exists() else None
    if have is None or (have.st_size, have.st_mtime_ns) != (source.st_size, source.st_mtime_ns):
        # Copied beside the packaged folder, then renamed into it: a running
        # function keeps its old file, and another pytest worker's sam deploy,
        # packaging LoginEtlFunction/, never meets a half-written copy.
        tmp = BUILD_DIR / f".bootstrap.{os.getpid()}.tmp"
        shutil.copy2(built, tmp)  # copy2 keeps the mtime: the next build() sees it is the same
        tmp.replace(bootstrap)
    template = yaml_parse((ROOT / "template.yaml").read_text())
    # The functions run the one binary: one package.
    for name in ("LoginEtlFunction", "MaintenanceFunction", "SetupFunction"):
        function = template["Resources"][name]
        if function["Properties"].get("CodeUri") != ".":
            raise RuntimeError(f"template.yaml: {name}'s CodeUri is no longer '.'; update stack.build()")
        function["Properties"]["CodeUri"] = "LoginEtlFunction"
    # Atomic too: another pytest worker may be deploying from it.
    written = BUILD_DIR / "template.yaml.tmp"
    written.write_text(yaml_dump(template))
    written.replace(BUILD_DIR / "template.yaml")


def master_name(dbname: str) -> str:
    return f"{dbname}_master"


def master_secret(dbname: str) -> str:
    """As RDS keeps a master user: a role that is no superuser (CREATEROLE,
    owning the database), its password in an RDS-managed-style secret
    (username and password only); the secret's ARN."""
    name = master_name(dbname)
    password = secrets.token_hex(16)
    psql(admin_url(), f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN "
                      f"CREATE ROLE \"{name}\" LOGIN CREATEROLE; END IF; END $$")  # fmt: skip
    psql(admin_url(), f"ALTER ROLE \"{name}\" PASSWORD '{password}'")
    psql(admin_url(), f'ALTER DATABASE "{dbname}" OWNER TO "{name}"')
    sm = client("secretsmanager")
    text = json.dumps({"username": name, "password": password})
    try:
        return sm.create_secret(Name=f"rds-master/{dbname}", SecretString=text)["ARN"]
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=f"rds-master/{dbname}", SecretString=text)
        return sm.describe_secret(SecretId=f"rds-master/{dbname}")["ARN"]


def replay_custom_resource(stack: str, logical_id: str, kind: str = "Update", changes: dict | None = None,
                           forged: bool = False) -> dict:  # fmt: skip
    """CloudFormation's next request to a custom resource, as an update of
    the stack sends it when the resource's properties are what they were
    (the `SchemaVersion` of a release that changes the schema aside): the
    last request the LocalStack provider kept for it
    (localstack/host_executor), sent again as `kind`, with
    `OldResourceProperties` its properties and its physical id, and
    `changes` over its properties (a parameter changed on the update). As
    CloudFormation does, the function the resource names is updated first:
    its SETUP_* variable of each property changed (DatabaseSetup's); a
    `forged` request changes the properties alone, as anyone allowed to
    invoke the function could. Waits for the function's answer and
    returns it."""
    s3 = client("s3")
    bucket = "login-etl-cfn-responses"  # the provider's BUCKET (it imports LocalStack, this venv has none)
    kept = s3.list_objects_v2(Bucket=bucket, Prefix=f"requests/{stack}/{logical_id}/").get("Contents", [])
    assert kept, f"no request to {stack}'s {logical_id} kept"
    last = json.loads(s3.get_object(Bucket=bucket, Key=max(o["Key"] for o in kept))["Body"].read())
    key = f"{stack}/{logical_id}/replay-{secrets.token_hex(8)}"
    physical = describe_physical_id(stack, logical_id)
    if changes and not forged:
        set_environment(last["ServiceToken"], {setup_variable(k): v for k, v in changes.items()})
    event = {**last, "RequestType": kind, "RequestId": secrets.token_hex(16), "PhysicalResourceId": physical,
             "OldResourceProperties": last["ResourceProperties"],
             "ResourceProperties": {**last["ResourceProperties"], **(changes or {})},
             "ResponseURL": s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)}  # fmt: skip
    resp = client("lambda").invoke(FunctionName=event["ServiceToken"], Payload=json.dumps(event).encode())
    assert "FunctionError" not in resp, resp["Payload"].read()
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def setup_variable(prop: str) -> str:
    """The setup function's variable of a DatabaseSetup property
    (src/cli/setup/resource.rs: Properties::from_environment)."""
    return "SETUP_" + {"SetupRoleArn": "ROLE_ARN"}.get(prop, re.sub(r"(?<!^)(?=[A-Z])", "_", prop).upper())


def set_environment(function: str, changes: dict) -> None:
    """`changes` over a function's environment, once the update is done."""
    lam = client("lambda")
    env = lam.get_function_configuration(FunctionName=function)["Environment"]["Variables"]
    lam.update_function_configuration(FunctionName=function, Environment={"Variables": {**env, **changes}})
    wait_for(f"{function}'s configuration updated",
             lambda: lam.get_function_configuration(FunctionName=function).get("LastUpdateStatus") == "Successful", timeout=60)  # fmt: skip


def describe_physical_id(stack: str, logical_id: str) -> str:
    return client("cloudformation").describe_stack_resource(StackName=stack, LogicalResourceId=logical_id)[
        "StackResourceDetail"
    ]["PhysicalResourceId"]


def forget_stack_setup(stack: str, dbname: str) -> None:
    """What a stack's setup left behind, which a stack delete keeps: its
    roles' secrets, and the master role and secret of master_secret."""
    sm = client("secretsmanager")
    for name in [f"{stack}/{role}" for role in ROLES] + [f"rds-master/{dbname}"]:
        try:
            sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        except sm.exceptions.ResourceNotFoundException:
            pass
    psql(admin_url(), f'DROP ROLE IF EXISTS "{master_name(dbname)}"')


def db_secret_arn(dbname: str, role: str = "ingest", port: int | None = None) -> str:
    """The ARN of `role`'s secret README's block made; with `port`, of a
    copy that names that port on the same host (a proxy in front of it),
    as `login-etl password --secret-port` would."""
    sm = client("secretsmanager")
    if port is None:
        return sm.describe_secret(SecretId=secret_id(dbname, role))["ARN"]
    value = json.loads(sm.get_secret_value(SecretId=secret_id(dbname, role))["SecretString"])
    value["port"] = port
    name = f"{secret_id(dbname, role)}-via-{port}"
    try:
        return sm.create_secret(Name=name, SecretString=json.dumps(value))["ARN"]
    except sm.exceptions.ResourceExistsException:
        sm.put_secret_value(SecretId=name, SecretString=json.dumps(value))
        return sm.describe_secret(SecretId=name)["ARN"]


def ca_bundle_file() -> str | None:
    """The CA file admin_url() verifies the server with, if any."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(admin_url()).query))
    return query.get("sslrootcert")


def package_ca_bundle() -> str:
    """The CA bundle beside each function's bootstrap, as `make deploy
    DB_CA_BUNDLE=...` packages the RDS bundle; its file name (the
    template's DbCaBundleFile), or "" without one."""
    ca = ca_bundle_file()
    if not ca:
        return ""
    for function in BUILD_DIR.glob("*/bootstrap"):
        tmp = function.parent / f".db-ca.pem.{os.getpid()}"
        shutil.copyfile(ca, tmp)
        tmp.replace(function.parent / "db-ca.pem")  # workers side by side
    return "db-ca.pem"


@dataclass
class Stack:
    """What a deployed stack gives the driver (the template's outputs)."""

    name: str
    dbname: str
    queue_url: str
    dlq_url: str
    function_name: str
    masking_key_secret_arn: str
    max_receive_count: int
    fifo: bool
    log_level: str
    maintenance_function_name: str = ""
    vault_key_arn: str = ""
    dlq_key_arn: str = ""


def deploy(
    stack: str,
    dbname: str,
    *,
    fifo: bool = False,
    batch_size: int = 25,
    log_level: str = "WARN",
    db_port: int | None = None,
    overrides: dict[str, str] | None = None,
    log: Path | None = None,
    profile: str = "full",
    with_sam: bool = True,
    set_up_by_stack: bool = False,
    keep_database: bool = False,
    failure_expected: bool = False,
) -> Stack:
    """Deploy the built template as `stack`, its DB secret pointing at a fresh
    database `dbname`, migrated by the admin, which the function writes as
    the ingest role; at `log_level` (the production level: WARN, docs/metrics.md).

    LocalStack's community CloudFormation creates stacks but cannot update them
    (CreateChangeSet on an existing stack is not emulated), so an existing stack
    is deleted first. That makes a new masking key, so the database starts
    empty too: tokens under two keys in one table would not compare.

    With `log`, sam's output goes to that file instead of the terminal.
    `with_sam=False` (make e2e, four stacks at once): the template packaged
    once by `sam package`, each stack created from it with CloudFormation's
    API; sam deploy's own CPU, eight seconds a stack, was a tenth of the
    suite's. `set_up_by_stack`: no README block; the stack's setup resource
    sets the database up as its master (MasterSecretArn: see master_secret),
    its roles named as the stack (DbRolePrefix's default: `login-etl-x`
    makes `login_etl_x_*`) and their secrets `<stack>/<role>`."""
    if stack_exists(stack):
        say(f"==> deleting the previous {stack} (LocalStack cannot update a stack) and its database {dbname}")
        delete_stack(stack)
    if not keep_database:  # a second stack in one database keeps the first's
        drop_database(dbname)
    create_database(dbname)
    if not set_up_by_stack:
        prepare_database(dbname, profile)
    s3 = client("s3")
    try:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    # The secrets README's block made: the function's (ingest) and the
    # scheduled maintenance function's (maintain; its schedule is hourly:
    # the tests invoke it themselves).
    if set_up_by_stack:
        admin = admin_env(dbname)
        # (No DbSecretReaderPrincipalArns: LocalStack cannot delete a stack
        # given one, and enforces no resource policy to need it.)
        database = {"MasterSecretArn": master_secret(dbname), "DbHost": admin["PGHOST"], "DbPort": admin["PGPORT"],
                    "DbName": dbname}  # fmt: skip
    else:
        database = {"DbSecretArn": db_secret_arn(dbname, "ingest", db_port),
                   "MaintainDbSecretArn": db_secret_arn(dbname, "maintain")}  # fmt: skip
    ca_file = package_ca_bundle()
    max_receive = int((overrides or {}).get("MaxReceiveCount", 5))
    params = {
        **database,
        # As against RDS: TLS checked against the server's CA, packaged beside bootstrap.
        "DbSslMode": "verify-full" if ca_file else "disable",
        "DbCaBundleFile": ca_file,
        "RunMigrations": "false",  # the admin migrated; the function's role cannot
        "LogLevel": log_level,
        "Architecture": HOST_ARCH,
        "QueueType": "fifo" if fifo else "standard",
        "BatchSize": str(min(batch_size, 10) if fifo else batch_size),
        "MaximumBatchingWindowInSeconds": "1",
        "VisibilityTimeoutSeconds": str(LOCAL_VISIBILITY_TIMEOUT),
        "MaxReceiveCount": str(max_receive),
        # Required with the vault: the role whose sessions may reveal (LocalStack
        # does not enforce IAM; AWS would, with MFA and a source identity).
        "RevealTrustedPrincipalArn": "arn:aws:iam::000000000000:role/investigators",
        "DlqOperatorTrustedPrincipalArn": "arn:aws:iam::000000000000:role/dlq-operators",
        "Profile": profile,
        **(overrides or {}),
    }
    say(f"==> {'sam deploy' if with_sam else 'create (sam package, once)'} {stack} into LocalStack ({ENDPOINT}), database {dbname}"
        + (f" (its output: {log.relative_to(ROOT) if log.is_relative_to(ROOT) else log})" if log else ""))
    if with_sam:
        sam(
            "deploy",
            "--template-file", str(BUILD_DIR / "template.yaml"),
            "--stack-name", stack,
            "--s3-bucket", ARTIFACT_BUCKET,
            "--s3-prefix", stack,
            "--capabilities", "CAPABILITY_IAM",
            "--no-confirm-changeset",
            "--no-fail-on-empty-changeset",
            "--region", REGION,
            "--parameter-overrides", *[f"{k}={v}" for k, v in params.items()],
            log=log,
        )  # fmt: skip
    else:
        create_stack(stack, packaged_template_url(log), params, log, quiet=failure_expected)
    made = outputs(stack)
    s = Stack(
        name=stack,
        dbname=dbname,
        queue_url=made["QueueUrl"],
        dlq_url=made["DeadLetterQueueUrl"],
        function_name=made["FunctionName"],
        masking_key_secret_arn=made["MaskingKeySecretArn"],
        vault_key_arn=made.get("VaultKeyArn", ""),
        dlq_key_arn=made.get("DlqKeyArn", ""),
        max_receive_count=max_receive,
        fifo=fifo,
        log_level=log_level,
        maintenance_function_name=made["MaintenanceFunctionName"],
    )
    wait_function_active(s.function_name)
    return s


def packaged_template_url(log: Path | None) -> str:
    """The built template packaged by `sam package` (its code in S3) and
    uploaded beside it: once per LocalStack (its pid: a new one has an
    empty S3) and per template and bootstrap, whichever worker asks first
    (a lock file); the others wait for it."""
    state = ROOT / os.environ.get("LOCALSTACK_STATE", ".localstack")
    pid = (state / "localstack.pid").read_text().strip() if (state / "localstack.pid").exists() else "0"
    built = BUILD_DIR / "template.yaml"
    digest = hashlib.sha256(built.read_bytes())
    for code in sorted(BUILD_DIR.glob("*/bootstrap")):
        digest.update(code.read_bytes())
    stamp = f"{pid}-{digest.hexdigest()[:16]}"
    packaged = BUILD_DIR / f"packaged-{stamp}.yaml"
    key = f"packaged/{packaged.name}"
    with open(BUILD_DIR / ".package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not packaged.exists():
            # deploy() made the bucket; an earlier run's packaged templates go.
            for old in BUILD_DIR.glob("packaged-*.yaml"):
                old.unlink()
            partial = packaged.with_suffix(".partial")
            sam("package", "--template-file", str(built), "--s3-bucket", ARTIFACT_BUCKET, "--s3-prefix", "packaged",
                "--output-template-file", str(partial), "--region", REGION, log=log)  # fmt: skip
            client("s3").upload_file(str(partial), ARTIFACT_BUCKET, key)
            partial.rename(packaged)
    return f"{ENDPOINT}/{ARTIFACT_BUCKET}/{key}"


def create_stack(stack: str, template_url: str, params: dict[str, str], log: Path | None, quiet: bool = False) -> None:
    """Creates `stack` from the packaged template and waits for it; its
    events go to `log` (and their failures to the terminal, unless `quiet`:
    a failure the test expects) if it fails."""
    cf = client("cloudformation")
    cf.create_stack(
        StackName=stack,
        TemplateURL=template_url,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    try:
        cf.get_waiter("stack_create_complete").wait(StackName=stack, WaiterConfig={"Delay": 2, "MaxAttempts": 300})
    except Exception:
        events = cf.describe_stack_events(StackName=stack)["StackEvents"]
        lines = [f"{e['LogicalResourceId']} {e['ResourceStatus']} {e.get('ResourceStatusReason', '')}" for e in events]
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("\n".join(lines) + "\n")
        if not quiet:
            say("\n".join(["the stack failed; its failed events:", *[ln for ln in lines if "FAILED" in ln][:20]]))
        raise


def wait_function_active(name: str, timeout: float = 60) -> None:
    lam = client("lambda")
    deadline = time.monotonic() + timeout
    while True:
        cfg = lam.get_function(FunctionName=name)["Configuration"]
        if cfg["State"] == "Active":
            return
        if cfg["State"] == "Failed":
            raise RuntimeError(f"function {name} failed to deploy: {cfg.get('StateReason')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"function {name} not Active after {timeout}s (state {cfg['State']})")
        time.sleep(0.5)


def outputs(stack: str) -> dict[str, str]:
    """The deployed stack's outputs, by key."""
    (described,) = client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}


def stack_exists(stack: str) -> bool:
    cf = client("cloudformation")
    try:
        status = cf.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except cf.exceptions.ClientError:
        return False
    return status != "DELETE_COMPLETE"


def delete_stack(stack: str, timeout: float = 120) -> None:
    cf = client("cloudformation")
    cf.delete_stack(StackName=stack)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = cf.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
        except cf.exceptions.ClientError:
            break
        if status in ("DELETE_COMPLETE", "DELETE_FAILED"):
            break
        time.sleep(1)


def delete_stack_or_its_mappings(stack: str) -> dict[str, str]:
    """delete_stack(), if the stack exists (also one whose deploy failed
    half-way); where LocalStack 4.13 cannot (a stack whose conditions left
    a referenced resource out, such as an existing queue's: "Unresolved
    resource dependencies"; or one given DeployPrincipalArns, whose list it
    cannot Fn::Join at a delete; AWS can), the function's event-source
    mappings are removed instead, so nothing polls. Returns the stack's
    outputs."""
    if not stack_exists(stack):
        return {}
    made = outputs(stack)
    try:
        delete_stack(stack)
    except Exception as e:  # noqa: BLE001
        cannot = ("Unresolved resource dependencies", "Invalid arguments list definition for Fn::Join")
        if not any(c in str(e) for c in cannot):
            raise
        # A create that failed made no outputs, and no mapping.
        if "FunctionName" in made:
            lam = client("lambda")
            for m in lam.list_event_source_mappings(FunctionName=made["FunctionName"])["EventSourceMappings"]:
                lam.delete_event_source_mapping(UUID=m["UUID"])
    return made


# -- messages -----------------------------------------------------------------


@dataclass
class Message:
    """One message to send: its body and what the function must do with it."""

    body: str
    expect: str  # "insert", "insert:<defect>,..." or "reject:<code>"
    group: str | None = None
    message_id: str | None = None  # set once sent
    sent_timestamp_ms: int | None = None  # SQS's SentTimestamp, for a replay as a redelivery

    @property
    def valid(self) -> bool:
        """A login the function stores (clean, or with defects)."""
        return self.expect.startswith("insert")

    @property
    def defects(self) -> list[str]:
        return self.expect.split(":", 1)[1].split(",") if self.expect.startswith("insert:") else []


def generate(count: int, invalid_every: int, seed: int, defective_every: int = 0, binary: Path | None = None) -> list[Message]:
    """Login messages from the project's own generator (`login-etl gen-events`,
    the `synth` module): the quirks of real traffic (null locales, three
    version shapes, IPv6, multicast and loopback addresses) plus every kind of
    message that is not a login, and with `defective_every` logins with the
    defects real apps send (a suffixed version, a port on the ip, a null
    device id). Runs `binary`, by default the bootstrap build() packaged: no second compile."""
    bootstrap = binary or BUILD_DIR / "LoginEtlFunction" / "bootstrap"
    if not bootstrap.exists():
        raise RuntimeError(f"{bootstrap} is missing: run the build step (stack.build()) first")
    args = ["gen-events", "--count", str(count), "--invalid-every", str(invalid_every),
            "--defective-every", str(defective_every), "--seed", str(seed)]  # fmt: skip
    out = subprocess.run([str(bootstrap), *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    messages = []
    for record in json.loads(out)["Records"]:
        body = record["body"]
        # SQS refuses an empty body; a blank one is the nearest thing it carries.
        messages.append(Message(body=body or " ", expect=record["messageAttributes"]["expect"]["stringValue"]))
    return messages


def send(stack: Stack, messages: list[Message]) -> None:
    """SendMessageBatch in tens; records each message's SQS MessageId."""
    sqs = client("sqs")
    for start in range(0, len(messages), 10):
        chunk = messages[start : start + 10]
        entries = []
        for i, m in enumerate(chunk):
            entry = {"Id": str(i), "MessageBody": m.body}
            if stack.fifo:
                entry["MessageGroupId"] = m.group or "default"
            entries.append(entry)
        resp = sqs.send_message_batch(QueueUrl=stack.queue_url, Entries=entries)
        if resp.get("Failed"):
            raise RuntimeError(f"SQS refused messages: {resp['Failed']}")
        for ok in resp["Successful"]:
            chunk[int(ok["Id"])].message_id = ok["MessageId"]


def queue_depth(queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


@dataclass
class Drain:
    """Seconds from the start of the wait until every row was in, and until the
    queue was empty with every dead letter in the DLQ."""

    rows_s: float
    total_s: float


def wait_drained(stack: Stack, expected_rows: int, expected_dead: int, timeout: float = 240) -> Drain:
    """Wait, with a progress line, until the source queue is empty and the rows
    and dead letters have arrived."""
    started = time.monotonic()
    rows_s = None
    total = expected_rows + expected_dead
    tty = sys.stdout.isatty()
    last = ""
    while True:
        visible, in_flight = queue_depth(stack.queue_url)
        rows = row_count(stack.dbname)
        dead = sum(queue_depth(stack.dlq_url))
        elapsed = time.monotonic() - started
        done = rows + dead
        if rows_s is None and rows >= expected_rows:
            rows_s = elapsed
        width = 30
        filled = min(width, width * done // max(total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} settled: "
            f"{rows} rows, {dead} in DLQ | queue: {visible} waiting, {in_flight} in flight | {elapsed:4.0f}s"
        )
        if tty:
            print("\r" + line, end="", flush=True)
        elif line.split("|")[0] != last:  # CI logs: one line per change
            print(line, flush=True)
            last = line.split("|")[0]
        if visible == 0 and in_flight == 0 and rows >= expected_rows and dead >= expected_dead:
            if tty:
                print()
            return Drain(rows_s=rows_s if rows_s is not None else elapsed, total_s=elapsed)
        if elapsed > timeout:
            if tty:
                print()
            raise TimeoutError(
                f"queue not drained after {timeout:.0f}s: {rows}/{expected_rows} rows, "
                f"{dead}/{expected_dead} dead letters, {visible} waiting, {in_flight} in flight. "
                f"LocalStack's log: .localstack/localstack.log"
            )
        time.sleep(1)


def dead_letters(stack: Stack) -> list[dict]:
    """Every message in the DLQ (received with a short visibility, so they stay there)."""
    sqs = client("sqs")
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resp = sqs.receive_message(
            QueueUrl=stack.dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=30,
            WaitTimeSeconds=1,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        batch = resp.get("Messages", [])
        if not batch:
            break
        for m in batch:
            seen[m["MessageId"]] = m
    # Let them show again at once for whoever looks next (awslocal, the demo).
    for m in seen.values():
        sqs.change_message_visibility(QueueUrl=stack.dlq_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
    return list(seen.values())


LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]


def lambda_keeps(line: str, level: str) -> bool:
    """Lambda's log-level filter (JSON format): a line is kept only if it is a
    JSON object whose "level" is at or above `level`; a line without a valid
    level counts as INFO. LocalStack does not filter: this applies it."""
    try:
        doc = json.loads(line)
    except ValueError:
        doc = None
    own = doc.get("level") if isinstance(doc, dict) else None
    own = own.upper() if isinstance(own, str) and own.upper() in LEVELS else "INFO"
    return LEVELS.index(own) >= LEVELS.index(level.upper())


def log_lines(stack: Stack) -> list[str]:
    """The function's log lines, from LocalStack's CloudWatch Logs, as Lambda
    would keep them at the stack's log level."""
    return [line for line in raw_log_lines(stack) if lambda_keeps(line, stack.log_level)]


def raw_log_lines(stack: Stack) -> list[str]:
    """The function's log lines, from LocalStack's CloudWatch Logs."""
    logs = client("logs")
    kwargs = {"logGroupName": f"/aws/lambda/{stack.function_name}"}
    lines = []
    try:
        while True:
            page = logs.filter_log_events(**kwargs)
            lines.extend(e["message"] for e in page.get("events", []))
            if not page.get("nextToken"):
                return lines
            kwargs["nextToken"] = page["nextToken"]
    except logs.exceptions.ResourceNotFoundException:
        return lines


def pii_in(body: str) -> list[str]:
    """The ip and device id a body carries (strings of a JSON object), stripped."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    return [v.strip() for v in (doc.get("ip"), doc.get("device_id")) if isinstance(v, str) and len(v.strip()) > 3]


def dead_letter_attribute(message: dict, name: str) -> str:
    """A message attribute the function put on its DLQ copy."""
    return message.get("MessageAttributes", {}).get(name, {}).get("StringValue", "")


def emf_in(lines: list[str]) -> list[dict]:
    """The CloudWatch EMF documents among log lines."""
    docs = []
    for text in lines:
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and "_aws" in line:
            docs.append(line)
    return docs


def totals_of(docs: list[dict], kinds: tuple[str, ...] = ("batch processed",)) -> dict[str, float]:
    """Each metric of the summary documents of `kinds`, summed."""
    totals: dict[str, float] = {}
    for doc in docs:
        if doc.get("message") not in kinds:
            continue
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                name = metric["Name"]
                totals[name] = totals.get(name, 0) + doc[name]
    return totals


def emf_documents(stack: Stack) -> list[dict]:
    """The function's CloudWatch EMF documents (its summary lines), from its logs."""
    return emf_in(log_lines(stack))


def metric_totals(stack: Stack) -> dict[str, float]:
    """Each metric of the summary documents, summed over the invocations."""
    return totals_of(emf_documents(stack))


def rejections(stack: Stack) -> list[tuple[str, str]]:
    """(message id, rejection code) of each `record rejected` log line of the function."""
    out = []
    for text in log_lines(stack):
        try:
            line = json.loads(text)
        except ValueError:
            continue
        fields = line.get("fields", line) if isinstance(line, dict) else {}
        if fields.get("message") == "record rejected":
            out.append((fields["message_id"], fields["code"]))
    return out


def rejection_codes(stack: Stack) -> dict[str, str]:
    """message id -> rejection code, from the function's `record rejected` log lines."""
    return dict(rejections(stack))


def aws_cli(*args: str) -> subprocess.CompletedProcess:
    """The AWS CLI (LocalStack's venv's) against LocalStack: a command an
    error names, run as written (`aws sqs set-queue-attributes ...`)."""
    if args and args[0] == "aws":
        args = args[1:]
    cli = Path(os.environ.get("LS_VENV", ROOT / ".venv-localstack")).resolve() / "bin" / "aws"
    env = {**os.environ, **LOCAL_ENV}
    # --endpoint-url, not AWS_ENDPOINT_URL alone: the CLI v1 sends sqs and
    # rds in us-east-1 to their legacy hosts whatever that says.
    return subprocess.run([str(cli), "--endpoint-url", ENDPOINT, *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def operator(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    """Run an operator command of the built binary (`reveal`, `forget`,
    `dlq-redrive`) against the stack's database as its own role (reveal, erase), with
    LocalStack as AWS (as an operator whose credentials may call kms:Decrypt)."""
    bootstrap = BUILD_DIR / "LoginEtlFunction" / "bootstrap"
    env = {**os.environ, **LOCAL_ENV, "AWS_REGION": REGION}
    role = {"reveal": "reveal", "forget": "erase", "audit": "audit", "rotate-key": "rotate"}.get(args[0])
    if args[:2] == ("rotate-key", "--arm"):  # the tables' owner arms a rotation
        role = "migrate"
    if role:  # dlq-redrive needs no database
        env["DATABASE_URL"] = role_url(stack.dbname, role)
    if args[0] in ("forget", "rotate-key"):  # the user key is keyed with the erasure key, never the masking key
        env["ERASURE_KEY_SECRET_ID"] = erasure_key_secret_arn(stack)
    if args[0] == "rotate-key":
        env["MASKING_KEY_SECRET_ID"] = stack.masking_key_secret_arn
    if args[0] == "reveal":  # every Decrypt names the vault's key
        env["VAULT_KMS_KEY_ID"] = stack.vault_key_arn
    if args[0] == "dlq-redrive":  # the dead-letter copies' key
        env["DLQ_KMS_KEY_ID"] = stack.dlq_key_arn
    return subprocess.run([str(bootstrap), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def invoke_with(stack: Stack, messages: list[Message]) -> dict:
    """Invoke the deployed function through LocalStack with an SQS event of
    `messages` under their own MessageIds and SentTimestamps, as SQS
    redelivers them (now, for a message that has none)."""
    arn = client("sqs").get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["QueueArn"])
    arn = arn["Attributes"]["QueueArn"]
    now = str(int(time.time() * 1000))
    records = [
        {
            "messageId": m.message_id,
            "receiptHandle": f"replay-{m.message_id}",
            "body": m.body,
            "attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": str(m.sent_timestamp_ms or now),
                           "SenderId": "replay",
                           "ApproximateFirstReceiveTimestamp": now},
            "messageAttributes": {},
            "md5OfBody": hashlib.md5(m.body.encode()).hexdigest(),
            "eventSource": "aws:sqs",
            "eventSourceARN": arn,
            "awsRegion": REGION,
        }
        for m in messages
    ]  # fmt: skip
    resp = client("lambda").invoke(FunctionName=stack.function_name, Payload=json.dumps({"Records": records}))
    payload = json.loads(resp["Payload"].read())
    if resp.get("FunctionError"):
        raise RuntimeError(f"the function failed: {payload}")
    return payload


def erasure_key_secret_arn(stack: Stack) -> str:
    """The erasure key's secret the template made beside the masking key."""
    return outputs(stack.name)["ErasureKeySecretArn"]


def masking_keys(stack: Stack) -> list[bytes]:
    """Every version of the masking key, oldest first, read back from
    LocalStack's Secrets Manager (one hex key, or {"versions": [...]})."""
    text = client("secretsmanager").get_secret_value(SecretId=stack.masking_key_secret_arn)["SecretString"]
    versions = json.loads(text)["versions"] if text.lstrip().startswith("{") else [text]
    return [bytes.fromhex(v) for v in versions]


def masking_key(stack: Stack) -> bytes:
    """The key the template generated (version 1)."""
    return masking_keys(stack)[0]


def canonical_ip(text: str) -> str:
    """The address as Rust's IpAddr Display prints it (the contract of masked_ip)."""
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return addr.compressed


def token(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


# -- login-etl poll: the consumer against LocalStack's SQS --------------------


def make_queues(name: str, dbname: str, *, fifo: bool = False, visibility: int = 5, max_receive: int = 5) -> Stack:
    """A source queue and its DLQ, made directly (no function, no template),
    with a RedrivePolicy, as a team that runs `login-etl poll` keeps them."""
    sqs = client("sqs")
    suffix = ".fifo" if fifo else ""
    fifo_attrs = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq{suffix}", Attributes=fifo_attrs)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)})
    attrs = {**fifo_attrs, "VisibilityTimeout": str(visibility), "RedrivePolicy": redrive}
    queue_url = sqs.create_queue(QueueName=f"{name}{suffix}", Attributes=attrs)["QueueUrl"]
    return Stack(name=name, dbname=dbname, queue_url=queue_url, dlq_url=dlq_url, function_name="",
                 masking_key_secret_arn="", max_receive_count=max_receive, fifo=fifo, log_level="WARN")  # fmt: skip


def delete_queues(queues: Stack) -> None:
    sqs = client("sqs")
    for url in (queues.queue_url, queues.dlq_url):
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception:  # noqa: BLE001 - already gone
            pass


class SlowLink:
    """A TCP relay on 127.0.0.1 that holds every byte `delay` seconds each
    way, in order: an AWS endpoint that answers slowly (a busy emulator, a
    far region), for a process pointed at `endpoint`. Runs in a thread of
    its own until `close()`."""

    def __init__(self, target: str, delay: float):
        import asyncio
        import threading

        parsed = urllib.parse.urlsplit(target)
        self.delay, self.target = delay, (parsed.hostname, parsed.port)
        self.relays: set = set()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()), self.loop.run_forever()),
                                       daemon=True)  # fmt: skip
        self.thread.start()
        assert ready.wait(10), "the slow link did not start"
        self.endpoint = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, client_r, client_w) -> None:
        import asyncio

        self.relays.add(asyncio.current_task())
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return

        async def pipe(reader, writer) -> None:
            queue: asyncio.Queue = asyncio.Queue()

            async def later() -> None:
                try:
                    while (item := await queue.get()) is not None:
                        due, chunk = item
                        await asyncio.sleep(max(0.0, due - self.loop.time()))
                        writer.write(chunk)
                        await writer.drain()
                finally:
                    writer.close()

            sender = asyncio.ensure_future(later())
            try:
                while chunk := await reader.read(65536):
                    queue.put_nowait((self.loop.time() + self.delay, chunk))
            except ConnectionError:
                pass
            finally:
                queue.put_nowait(None)
                await asyncio.gather(sender, return_exceptions=True)

        try:
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w), return_exceptions=True)
        finally:
            client_w.close()
            server_w.close()
            self.relays.discard(asyncio.current_task())

    def close(self) -> None:
        """Stops listening, cuts the connections and ends the thread."""
        import asyncio

        async def stop() -> None:
            self.server.close()
            for task in list(self.relays):
                task.cancel()
            await asyncio.gather(*self.relays, return_exceptions=True)
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def vault_key() -> str:
    """A KMS key in LocalStack for the PII vault (VAULT_KMS_KEY_ID)."""
    return client("kms").create_key(Description="login-etl poll vault")["KeyMetadata"]["KeyId"]


class Consumer:
    """`login-etl poll` as a process (the bootstrap build() packaged), as the
    database's ingest role, with JSON logs at WARN (the production profile);
    its stdout and stderr go to `log`."""

    def __init__(self, queues: Stack, key_hex: str, log: Path, *args: str, env: dict[str, str] | None = None,
                 binary: Path | None = None):  # fmt: skip
        self.queues, self.log_path = queues, log
        self.binary = binary or BUILD_DIR / "LoginEtlFunction" / "bootstrap"
        self.args = ["poll", "--queue-url", queues.queue_url, *args]
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AWS_LAMBDA")},
            **LOCAL_ENV,
            "AWS_REGION": REGION,
            "DATABASE_URL": role_url(queues.dbname, "ingest"),
            "MASKING_KEY": key_hex,
            "AWS_LAMBDA_LOG_FORMAT": "JSON",
            "AWS_LAMBDA_LOG_LEVEL": "WARN",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as log:
            log.write(f"--- run {self.runs + 1}: login-etl {' '.join(self.args)}\n")
            log.flush()
            self.proc = subprocess.Popen([str(self.binary), *self.args], cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.runs += 1

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def catches(self, sig: int = 15) -> bool:
        """Whether the process has installed its handler for `sig` (the
        kernel's SigCgt mask): before it, a SIGTERM kills it uncleanly."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except FileNotFoundError:
            return False
        caught = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(caught >> (sig - 1) & 1)

    def stop(self, sig: int = 15, timeout: float = 60) -> tuple[int, float]:
        """Send `sig` (SIGTERM by default) and wait: (exit code, seconds to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        return rc, time.monotonic() - started

    def kill(self) -> None:
        """Stop it by PID whatever its state (also on a test's failure)."""
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines() if self.log_path.exists() else []

    def emf_documents(self) -> list[dict]:
        """Its EMF documents (on stdout, as in Lambda)."""
        return emf_in(self.lines())

    def metric_totals(self) -> dict[str, float]:
        """Each metric of its batches (written or failed), summed."""
        return totals_of(self.emf_documents(), ("batch processed", "batch failed"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`."""
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def moto_server(log: Path):
    """moto (every service) on a free port of 127.0.0.1, its output in
    `log`, stopped by PID on leaving: yields its endpoint URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_for("moto", lambda: answers(port), timeout=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def health(port: int, path: str = "/readyz") -> tuple[int, dict]:
    """GET the consumer's health endpoint: (status, body); (0, {}) if it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def wait_for(what: str, check, timeout: float) -> float:
    """Poll `check()` until true; seconds it took (to half a second: each
    check is a psql or an AWS call, and make test runs many side by side)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


# -- the demo -----------------------------------------------------------------


def demo(args: argparse.Namespace) -> None:
    started = time.monotonic()
    step = lambda n, text: say(f"\n\033[1m[{n}/6] {text}\033[0m")  # noqa: E731
    step(1, "building the function (the first build compiles every dependency: a few minutes)")
    build()
    step(2, "deploying template.yaml into LocalStack")
    stack = deploy(args.stack, args.database, batch_size=args.batch_size)
    say(f"    queue {stack.queue_url}\n    DLQ   {stack.dlq_url}\n    function {stack.function_name}")
    before = row_count(stack.dbname)
    dead_before = sum(queue_depth(stack.dlq_url))
    kinds = f"every {args.invalid_every}th is not a login" if args.invalid_every else "all logins"
    if args.defective_every:
        kinds += f", every {args.defective_every}th other one with a defect real apps send"
    step(3, f"sending {args.count} messages ({kinds})")
    messages = generate(args.count, args.invalid_every, seed=args.seed or random.randrange(1 << 30),
                        defective_every=args.defective_every)  # fmt: skip
    send(stack, messages)
    valid = sum(m.valid for m in messages)
    defective = sum(bool(m.defects) for m in messages)
    say(f"    sent {len(messages)}: {valid} logins ({defective} with defects), {len(messages) - valid} not logins")
    step(4, "waiting for the event-source mapping to drain the queue (the function sends what is not "
            "a login to the DLQ itself, on its first receive)")  # fmt: skip
    took = wait_drained(stack, before + valid, dead_before + len(messages) - valid)
    say(f"    all {valid} logins in PostgreSQL after {took.rows_s:.1f} s; "
        f"queue drained, {len(messages) - valid} others in the DLQ, after {took.total_s:.1f} s")
    step(5, "rows in user_logins (masked; a sample, and every kind of defect stored)")
    subprocess.run(
        ["psql", db_url(stack.dbname), "-P", "pager=off", "-c",
         "(SELECT left(message_id, 8) AS msg, left(user_id, 8) AS user_id, device_type, "
         "left(masked_ip, 12) || '…' AS masked_ip, left(masked_device_id, 12) || '…' AS masked_device_id, "
         "locale, app_version, app_version_text, create_date, defects FROM user_logins "
         "WHERE defects IS NULL ORDER BY sent_at DESC LIMIT 4) UNION ALL "
         "(SELECT DISTINCT ON (defects) left(message_id, 8), left(user_id, 8), device_type, "
         "left(masked_ip, 12) || '…', left(masked_device_id, 12) || '…', "
         "locale, app_version, app_version_text, create_date, defects FROM user_logins "
         "WHERE defects IS NOT NULL ORDER BY defects LIMIT 10)"],
        check=True,
    )  # fmt: skip
    subprocess.run(
        ["psql", db_url(stack.dbname), "-P", "pager=off", "-c",
         "SELECT count(*) AS rows, count(DISTINCT message_id) AS messages, count(DISTINCT masked_ip) AS distinct_ips, "
         "count(*) FILTER (WHERE locale IS NULL) AS null_locales, "
         "count(*) FILTER (WHERE defects IS NOT NULL) AS with_defects FROM user_logins"],
        check=True,
    )  # fmt: skip
    step(6, "dead-letter queue: each copy carries its reason (message attributes, no log search)")
    dlq = dead_letters(stack)
    # Bodies are not printed: a rejected message may still carry an IP or a device id.
    say(f"    {'source message id':<38} {'receives':>8}  {'bytes':>5}  rejection_code")
    for m in sorted(dlq, key=lambda m: dead_letter_attribute(m, "rejection_code")):
        say(f"    {dead_letter_attribute(m, 'source_message_id'):<38} "
            f"{dead_letter_attribute(m, 'receive_count'):>8}  {len(m['Body'].encode()):>5}  "
            f"{dead_letter_attribute(m, 'rejection_code')}")  # fmt: skip
    say(f"    {len(dlq)} messages in the DLQ")
    say("\n    metrics of the run, summed from the function's EMF lines in CloudWatch Logs:")
    totals = metric_totals(stack)
    for name in ["RecordsReceived", "RowsInserted", "RowsWithDefects", "Duplicates", "Rejected", "SentToDlq",
                 "Refused", "BatchItemFailures", "ColdStart"]:  # fmt: skip
        say(f"    {name:<18} {totals.get(name, 0):>8.0f}")
    docs = [d for d in emf_documents(stack) if d.get("message") == "batch processed"]
    if docs:
        say(f"    {'invocations':<18} {len(docs):>8}")
        say(f"    {'IngestLagMs max':<18} {max(d.get('IngestLagMs', 0) for d in docs):>8.0f}")
        say(f"    {'BatchDurationMs max':<18} {max(d['BatchDurationMs'] for d in docs):>8.0f}")
    token = psql(db_url(stack.dbname), "SELECT masked_ip FROM user_logins ORDER BY sent_at LIMIT 1")
    if token:
        say("\n    the PII vault: one authorised reveal (operator credentials with kms:Decrypt; the")
        say("    function itself can only encrypt). Its audit line names the token, never the value:")
        say(f"    $ login-etl reveal --ip-token {token[0][0][:16]}…")
        out = operator(stack, "reveal", "--ip-token", token[0][0])
        for line in (out.stdout + out.stderr).strip().splitlines():
            say(f"    {line}")
        say("    and its durable record, read by the audit role ($ login-etl audit):")
        out = operator(stack, "audit")
        for line in (out.stdout + out.stderr).strip().splitlines()[-1:]:
            say(f"    {line}")
    say(f"\ndemo done in {time.monotonic() - started:.0f} s. LocalStack keeps running for exploration:")
    say("    export PATH=$PWD/.venv-localstack/bin:$PATH AWS_DEFAULT_REGION=us-east-1 DISABLE_DEPRECATION_NOTICE=1")
    say(f"    awslocal sqs receive-message --queue-url {stack.dlq_url} --attribute-names All")
    say(f'    psql "$(python3 localstack/pg_cluster.py url --db {stack.dbname})"   # the throwaway server\'s admin')
    say("    (docs/development.md, section LocalStack, lists more). Stop it with: make down")


def demo_poll(args: argparse.Namespace) -> None:
    """`make demo-poll`: the same job as `make demo`, run by `login-etl poll`
    (a long-running consumer) instead of Lambda."""
    started = time.monotonic()
    step = lambda n, text: say(f"\n\033[1m[{n}/6] {text}\033[0m")  # noqa: E731
    step(1, "building the binary (the first build compiles every dependency: a few minutes)")
    build()
    step(2, f"queue, dead-letter queue (RedrivePolicy) and database {args.database} with the README's roles")
    drop_database(args.database)
    create_database(args.database)
    prepare_database(args.database)
    name = "login-etl-poll-demo"
    for url in [u for u in client("sqs").list_queues(QueueNamePrefix=name).get("QueueUrls", [])]:
        client("sqs").delete_queue(QueueUrl=url)
    queues = make_queues(name, args.database, visibility=10, max_receive=5)
    say(f"    queue {queues.queue_url}\n    DLQ   {queues.dlq_url} (found by the consumer from the RedrivePolicy)")
    kinds = f"every {args.invalid_every}th is not a valid login" if args.invalid_every else "all valid"
    step(3, f"sending {args.count} login messages ({kinds})")
    messages = generate(args.count, args.invalid_every, seed=args.seed or random.randrange(1 << 30))
    send(queues, messages)
    valid = sum(m.valid for m in messages)
    key = os.urandom(32).hex()
    port = free_port()
    log = ROOT / "target" / "demo-poll.log"
    log.unlink(missing_ok=True)
    consumer = Consumer(queues, key, log, "--concurrency", str(args.concurrency), "--health-addr", f"127.0.0.1:{port}",
                        env={"AWS_LAMBDA_LOG_LEVEL": "INFO"})  # fmt: skip
    step(4, f"login-etl poll --concurrency {args.concurrency} --health-addr 127.0.0.1:{port} "
            f"(as the ingest role; log: {log.relative_to(ROOT)})")  # fmt: skip
    consumer.start()
    try:
        took = wait_for("ready", lambda: health(port)[0] == 200 or not consumer.running(), timeout=60)
        if not consumer.running():
            raise RuntimeError("the consumer stopped; its log:\n" + "\n".join(consumer.lines()[-20:]))
        say(f"    GET /readyz: {json.dumps(health(port)[1])} after {took:.1f} s")
        drain = wait_drained(queues, valid, len(messages) - valid, timeout=180)
        say(f"    all {valid} valid messages in PostgreSQL after {drain.rows_s:.1f} s; "
            f"{len(messages) - valid} invalid ones in the DLQ; queue empty after {drain.total_s:.1f} s")
        step(5, "rows, dead letters and the metrics from the consumer's EMF lines (stdout)")
        subprocess.run(
            ["psql", db_url(args.database), "-P", "pager=off", "-c",
             "SELECT left(message_id, 8) AS msg, left(user_id, 8) AS user_id, device_type, "
             "left(masked_ip, 12) || '…' AS masked_ip, app_version_text FROM user_logins ORDER BY sent_at DESC LIMIT 5"],
            check=True,
        )  # fmt: skip
        for m in sorted(dead_letters(queues), key=lambda m: dead_letter_attribute(m, "rejection_code")):
            say(f"    DLQ {dead_letter_attribute(m, 'source_message_id'):<38} {dead_letter_attribute(m, 'rejection_code')}")
        totals = consumer.metric_totals()
        for name in ["RecordsReceived", "RowsInserted", "Duplicates", "Rejected", "SentToDlq", "BatchItemFailures"]:
            say(f"    {name:<18} {totals.get(name, 0):>8.0f}")
        say(f"    {'batches':<18} {len([d for d in consumer.emf_documents() if d.get('message') == 'batch processed']):>8}")
        step(6, "SIGTERM: stop receiving, finish the batches in flight, exit 0")
        rc, secs = consumer.stop()
        say(f"    exit code {rc} after {secs:.1f} s; its last line: {consumer.lines()[-1] if consumer.lines() else ''}")
        if rc != 0:
            raise RuntimeError(f"the consumer exited {rc}")
    finally:
        consumer.kill()
    say(f"\ndemo-poll done in {time.monotonic() - started:.0f} s. LocalStack keeps running (make down stops it).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="build, deploy, send, drain, report")
    d.add_argument("--stack", default="login-etl-local")
    d.add_argument("--database", default="login_etl_localstack")
    d.add_argument("--count", type=int, default=120)
    d.add_argument("--invalid-every", type=int, default=10)
    d.add_argument("--defective-every", type=int, default=6)
    d.add_argument("--batch-size", type=int, default=25)
    d.add_argument("--seed", type=int, default=0, help="0: a random seed")
    p = sub.add_parser("demo-poll", help="the same with login-etl poll instead of Lambda")
    p.add_argument("--database", default="login_etl_poll_demo")
    p.add_argument("--count", type=int, default=120)
    p.add_argument("--invalid-every", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="0: a random seed")
    args = parser.parse_args()
    try:
        demo_poll(args) if args.command == "demo-poll" else demo(args)
    except (subprocess.CalledProcessError, RuntimeError, TimeoutError) as e:
        sys.exit(f"\nerror: {e}\nLocalStack is still running (make down stops it); its log: .localstack/localstack.log")


if __name__ == "__main__":
    main()
