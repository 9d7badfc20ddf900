"""Runbooks followed literally: each page's shell blocks run as written,
under bash -euo pipefail, with only their `<placeholders>` filled in (the
secrets an operator would name) and an operator's environment around them
(AWS credentials and endpoint, here moto on 127.0.0.1; the RDS CA bundle
as psql takes it, `PGSSLROOTCERT`). README's setup block gives each test
its database, its roles and their passwords, against a server that, as RDS,
takes only passwords over TLS (tests/test_database_roles.py runs that block
on its own).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
USER = "424cdd21-063a-43a7-b91b-7ca1a833afae"  # the runbook's example id

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "localstack"))
import stack  # noqa: E402
from test_database_roles import DeployServer, psql, srv  # noqa: E402, F401 - srv: the fixture


def blocks(page: str) -> list[str]:
    """The ```sh blocks of a docs page, dedented, in order."""
    text = (ROOT / "docs" / page).read_text()
    out = []
    for m in re.finditer(r"^( *)```sh\n(.*?)^\1```", text, re.S | re.M):
        indent = len(m.group(1))
        out.append("\n".join(line[indent:] for line in m.group(2).splitlines()))
    return out


def fill(block: str, values: dict[str, str]) -> str:
    """The block with each `<placeholder>` replaced; one left is a test bug."""
    for k, v in values.items():
        assert k in block, f"{k} is not in the block any more:\n{block}"
        block = block.replace(k, v)
    assert not re.search(r"<[a-z][^>]*>", block), f"a placeholder left:\n{block}"
    return block


@pytest.fixture(scope="module")
def aws(srv: DeployServer):
    """moto (Secrets Manager, STS, KMS, SQS, CloudFormation) on a free port
    of 127.0.0.1, the one README's block keeps the passwords in."""
    return {**srv.aws, "PGSSLROOTCERT": srv.cluster.ca_file}


def client(aws: dict[str, str], service: str):
    """A boto3 client of `service` in moto."""
    import boto3

    return boto3.client(service, endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_REGION"],
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip


def secret(aws: dict[str, str], name: str, value: str) -> str:
    """A Secrets Manager secret in moto; its ARN."""
    return client(aws, "secretsmanager").create_secret(Name=name, SecretString=value)["ARN"]


def db_secret(srv: DeployServer, name: str, role: str, secret_name: str | None = None) -> str:
    """The ARN of the secret README's block made for `role` on database
    `name`; with `secret_name`, of a copy under that name (a page's)."""
    if secret_name is None:
        return srv.sm.describe_secret(SecretId=f"{name}/{role}")["ARN"]
    return srv.sm.create_secret(Name=secret_name, SecretString=json.dumps(srv.secret(name, role)))["ARN"]


def operator_env(aws: dict[str, str]) -> dict[str, str]:
    """An operator's shell: AWS credentials and endpoint, the binary on the
    PATH, the server's CA bundle as psql takes it, no setting of the test
    run's own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "DB_", "AWS_", "MASKING_", "ERASURE_", "VAULT_", "PG"))}  # fmt: skip
    prefix = aws.get("PATH_PREFIX")
    env.update({k: v for k, v in aws.items() if k not in ("PATH_PREFIX", "PGSSLROOTCERT")})
    path = f"{BINARY.parent}:{prefix + ':' if prefix else ''}{os.environ['PATH']}"
    env.update({"PATH": path, "PGSSLROOTCERT": aws["PGSSLROOTCERT"]})
    return env


def run(block: str, aws: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], env=operator_env(aws), capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.fixture
def full_database(srv: DeployServer):
    """A database set up by README's block with LOGIN_ETL_PROFILE=full."""
    name = f"login_etl_rb_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    srv.drop(name)
    psql(srv.admin(), f'CREATE DATABASE "{name}"')
    try:
        done = srv.block(name, "full")
        assert done.returncode == 0, done.stdout + done.stderr
        yield name
    finally:
        srv.drop(name)


def test_the_erasure_runbook_as_written_erases_the_user_and_its_audit_step_reads_the_records(aws, srv, full_database):
    """docs/runbooks/erasure.md: step 1 as the erase role with the erasure
    key's secret erases the user (and only them), exit 0, the counts on
    stdout; step 3, in the same shell, as the audit role, reads the
    erasure's `forget_begun` and `forget` records (never the id)."""
    name = full_database
    insert = ("INSERT INTO user_logins (message_id, user_id, device_type, masked_ip, masked_device_id, "
              "app_version, app_version_text, create_date, sent_at) VALUES "
              "('m-{n}', '{u}', 'ios', repeat('a', 64), repeat('b', 64), 2003000, '2.3.0', current_date, now())")  # fmt: skip
    for n, u in enumerate([USER, USER, USER, "someone-else"]):
        psql(srv.admin(name), insert.format(n=n, u=u))
    erase = db_secret(srv, name, "erase")
    audit = db_secret(srv, name, "audit")
    erasure_key = secret(aws, f"{name}/erasure-key", "cd" * 32)
    step1, step3 = blocks("runbooks/erasure.md")
    script = fill(step1, {"<the erase role's secret>": erase, "<the stack's ErasureKeySecretArn>": erasure_key}) \
        + "\n" + fill(step3, {"<the audit role's secret>": audit})  # fmt: skip
    done = run(script, aws)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "forgot the user: 3 rows deleted from user_logins" in done.stdout, out
    assert psql(srv.admin(name), f"SELECT count(*) FROM user_logins WHERE user_id = '{USER}'") == "0"
    assert psql(srv.admin(name), "SELECT count(*) FROM user_logins") == "1", "only the user's rows"
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    actions = [r["action"] for r in records]
    assert actions[-2:] == ["forget_begun", "forget"], records
    assert USER not in done.stdout.split("forgot the user")[1], "the audit never shows the id"


def test_the_leaked_key_runbook_as_written_appends_a_version_to_both_secrets_rekeys_every_row_and_vacuums(aws, srv, full_database):
    """docs/runbooks/leaked-key.md: step 2's loop appends a version to both
    key secrets (the AWS CLI the project installs, jq, openssl), step 3
    makes the rotate role's secret (its example values pointed at this
    server and database) and runs rotate-key with it: exit 0, the database
    at version 2, every row re-keyed, both secrets holding two versions;
    step 4 vacuums as the tables' owner (no "skipping" warning)."""
    name = full_database
    insert = ("INSERT INTO user_logins (message_id, user_id, device_type, masked_ip, masked_device_id, "
              "app_version, app_version_text, create_date, sent_at) VALUES "
              "('m-{n}', 'u-{n}', 'ios', md5('ip-{n}') || md5('ip'), md5('dev-{n}') || md5('dev'), 2003000, '2.3.0', "
              "current_date, now())")  # fmt: skip
    for n in range(5):
        psql(srv.admin(name), insert.format(n=n))
    masking = secret(aws, f"{name}/masking-key", "ab" * 32)
    erasure = secret(aws, f"{name}/erasure-key", "cd" * 32)
    step2, step3, step4 = blocks("runbooks/leaked-key.md")
    step3 = fill(step3, {"login-etl/rotate": f"{name}/rotate", "login-etl/migrate": f"{name}/migrate"})
    # The stack whose outputs step 2 reads, as CloudFormation in moto keeps it.
    cfn = client(aws, "cloudformation")
    cfn.create_stack(StackName="login-etl", TemplateBody=json.dumps({
        "Resources": {"Marker": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{name}-marker"}}},
        "Outputs": {"MaskingKeySecretArn": {"Value": masking}, "ErasureKeySecretArn": {"Value": erasure}}}))  # fmt: skip
    script = f"export MIGRATE_URL='{srv.role(name, 'migrate')}'\n{step2}\n{step3}\n{step4}"
    # The AWS CLI of the project's LocalStack venv (make localstack-tools).
    done = run(script, {**aws, "PATH_PREFIX": str(ROOT / ".venv-localstack" / "bin")})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert psql(srv.admin(name), "SELECT version FROM login_etl_key_state()") == "2", out
    assert psql(srv.admin(name), "SELECT count(*) FROM user_logins WHERE key_version <> 2") == "0", out
    # Step 4, as the owner: vacuumed, not skipped with a warning.
    assert "WARNING" not in out and "skipping" not in out, out
    vacuumed = ("SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE 'user\\_logins\\_%' "
                "AND last_vacuum IS NOT NULL")  # fmt: skip
    assert int(psql(srv.admin(name), vacuumed)) > 0, out
    secrets = client(aws, "secretsmanager")
    for arn, first in ((masking, "ab" * 32), (erasure, "cd" * 32)):
        versions = json.loads(secrets.get_secret_value(SecretId=arn)["SecretString"])["versions"]
        assert len(versions) == 2 and versions[0] == first, versions
        for key in versions:
            assert key not in out, "no key, old or new, in the commands' output"


def test_poll_started_as_poll_md_says_keeps_the_erasure_key_that_forget_then_uses(aws, srv, full_database):
    """docs/poll.md's command, as written (its secrets, vault alias and queue
    URL made in moto under the names it gives; only the health address
    moved from 0.0.0.0:8080 to a free port of 127.0.0.1): the consumer is
    ready, writes the user's logins, stops on SIGTERM with exit 0, and the
    erasure list is keyed with the erasure key, so erasure.md's forget
    with that key's secret erases them."""
    import signal

    name = full_database
    clients = {svc: client(aws, svc) for svc in ("kms", "sqs")}
    db_secret(srv, name, "ingest", secret_name="login-etl/ingest")
    secret(aws, "login-etl/masking-key", "ab" * 32)
    erasure_key = secret(aws, "login-etl/erasure-key", "cd" * 32)
    key = clients["kms"].create_key()["KeyMetadata"]["KeyId"]
    clients["kms"].create_alias(AliasName="alias/login-etl-vault", TargetKeyId=key)
    queue = clients["sqs"].create_queue(QueueName="logins")["QueueUrl"]
    (block,) = blocks("poll.md")
    # The page's URL names the queue by account and name, as SQS's do (moto
    # answers requests for it at its own endpoint).
    assert queue.endswith("/123456789012/logins") and "sqs.us-east-1.amazonaws.com/123456789012/logins" in block
    port = stack.free_port()
    block = fill(block, {"0.0.0.0:8080": f"127.0.0.1:{port}"})
    for n in range(5):
        body = {"user_id": USER, "app_version": "2.3.0", "device_type": "android", "ip": f"199.172.111.{n + 1}",
                "locale": "RU", "device_id": f"593-47-592{n}"}  # fmt: skip
        clients["sqs"].send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    log_path = ROOT / "target" / f"runbooks-poll-{os.getpid()}.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], env=operator_env(aws), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def running() -> bool:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(f"poll exited ({proc.returncode}): {log.read()}")
        return True

    try:
        stack.wait_for("poll ready", lambda: running() and stack.answers(port) and stack.health(port)[0] == 200, timeout=60)
        stack.wait_for("the user's 5 logins",
                       lambda: running() and psql(srv.admin(name), "SELECT count(*) FROM user_logins") == "5", timeout=60)  # fmt: skip
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        log.seek(0)
        out = log.read()
        log.close()
        log_path.unlink(missing_ok=True)
    assert code == 0, out
    assert "ab" * 32 not in out and "cd" * 32 not in out
    # The erasure runbook's step 1, with the erasure key's secret the consumer used.
    erase = db_secret(srv, name, "erase")
    step1 = blocks("runbooks/erasure.md")[0]
    done = run(fill(step1, {"<the erase role's secret>": erase, "<the stack's ErasureKeySecretArn>": erasure_key}), aws)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "forgot the user: 5 rows deleted from user_logins" in done.stdout, done.stdout + done.stderr
