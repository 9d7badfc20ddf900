"""The container image (`make image`), run as a team runs it: `login-etl
poll` as examples/container/kubernetes.yaml configures it (its args, its
environment: the database secret, the masking and erasure key secrets, the
vault on; its security context: a read-only root file system, user 65532,
no capabilities), against the local PostgreSQL and an emulated SQS,
Secrets Manager and KMS (moto, on 127.0.0.1).

What it checks: the image holds the binary and the CA bundle and nothing
else, and starts `poll` by itself; a backlog becomes exactly one row per
valid message and every reject in the DLQ with its reason (a copy at
least once, bounded); `/livez` and
`/readyz` answer, `/readyz` is 503 while the database refuses connections
and 200 again after; SIGTERM (`podman stop`, the pod's grace period)
finishes the batches in flight and exits 0 in time; a second container
beside the first shares the queue without a double row; no log line
carries an ip or a device id.

Run by `make test-container` (after `make image`) and `make
container-check` (CI). The figures of docs/poll.md come from here: they
are written to target/container-figures.txt. Every container and the moto
server are stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "localstack"))
import stack  # noqa: E402

IMAGE = os.environ.get("LOGIN_ETL_IMAGE", "localhost/login-etl:dev")
ENGINE = os.environ.get("CONTAINER_ENGINE", "podman")
RUN = f"ctr{os.getpid()}"
FIGURES = ROOT / "target" / "container-figures.txt"
MANIFEST = ROOT / "examples" / "container" / "kubernetes.yaml"
BINARY = "/usr/local/bin/login-etl"
BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """podman (with this VM's runtime and cgroup settings) or docker."""
    cmd = [ENGINE, *args]
    env = {**os.environ}
    if ENGINE == "podman":
        # What this project's build machines need (the Makefile's
        # PODMAN_FLAGS and PODMAN_CONF; empty elsewhere).
        flags = os.environ.get("PODMAN_FLAGS", "--runtime runc --cgroup-manager cgroupfs").split()
        cmd = [ENGINE, *flags, *args]
        conf = os.environ.get("PODMAN_CONF", str(ROOT / "examples" / "container" / "containers.conf"))
        if conf:
            env["CONTAINERS_CONF"] = conf
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def manifest_container() -> dict:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    return deployment


@pytest.fixture(scope="module")
def aws():
    """moto on a free port of 127.0.0.1, stopped by PID at the end."""
    with stack.moto_server(ROOT / "target" / f"{RUN}-moto.log") as endpoint:
        stack.ENDPOINT = endpoint
        stack.LOCAL_ENV["AWS_ENDPOINT_URL"] = endpoint
        yield endpoint


@pytest.fixture(scope="module")
def image_files():
    """The image's files, exported from a container that never starts."""
    name = f"{RUN}-files"
    engine("create", "--name", name, IMAGE)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "fs.tar"
            engine("export", "-o", str(tar), name)
            with tarfile.open(tar) as t:
                members = {m.name.lstrip("./"): m for m in t.getmembers()}
                files = {n: t.extractfile(m).read() for n, m in members.items() if m.isfile()}
            yield files
    finally:
        engine("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def deployment(aws, image_files, tmp_path_factory):
    """A database prepared by the README's deploy sequence (with the image's
    own binary), the queues with a RedrivePolicy, and the secrets and vault
    key kubernetes.yaml names."""
    build = tmp_path_factory.mktemp("image-binary")
    binary = build / "LoginEtlFunction" / "bootstrap"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(image_files[BINARY.lstrip("/")])
    binary.chmod(0o755)
    stack.BUILD_DIR = build  # the deploy sequence and the generator run the image's binary
    dbname = f"login_etl_{RUN}"
    stack.drop_database(dbname)
    stack.create_database(dbname)
    stack.prepare_database(dbname)
    # The queue's visibility as template.yaml derives it for a 30 s batch
    # limit would be minutes; 30 s is enough for batches of 10.
    queues = stack.make_queues(f"login-etl-{RUN}", dbname, visibility=30, max_receive=5)
    sm = stack.client("secretsmanager")
    masking, erasure = secrets.token_bytes(32), secrets.token_bytes(32)
    env = {
        "AWS_REGION": stack.REGION,
        "AWS_ENDPOINT_URL": aws,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "DB_SECRET_ID": stack.db_secret_arn(dbname),
        "MASKING_KEY_SECRET_ID": sm.create_secret(Name=f"{queues.name}/masking-key", SecretString=masking.hex())["ARN"],
        "ERASURE_KEY_SECRET_ID": sm.create_secret(Name=f"{queues.name}/erasure-key", SecretString=erasure.hex())["ARN"],
        "VAULT_KMS_KEY_ID": stack.vault_key(),
        # The local server has no TLS; the manifest says verify-full.
        "DB_SSLMODE": "disable",
    }
    yield queues, env, masking
    stack.delete_queues(queues)
    stack.drop_database(dbname)


class Container:
    """One `podman run -d` of the image with the manifest's settings."""

    def __init__(self, name: str, queues: stack.Stack, env: dict[str, str]):
        self.name, self.queues, self.env = name, queues, env
        self.port = stack.free_port()
        self.started_at = 0.0

    def run(self) -> None:
        spec = manifest_container()["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        # The manifest's args, with this queue, and the health endpoint on
        # 127.0.0.1 (the host's network: every test server binds there).
        args = []
        for a in c["args"]:
            if a.startswith("--queue-url="):
                a = f"--queue-url={self.queues.queue_url}"
            elif a.startswith("--health-addr="):
                a = f"--health-addr=127.0.0.1:{self.port}"
            args.append(a)
        env = {e["name"]: e["value"] for e in c["env"]}
        env.update(self.env)
        security = c["securityContext"]
        flags = ["--network", "host", "--user", str(security["runAsUser"]), "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges"]  # fmt: skip
        if security.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        env_flags = [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
        self.started_at = time.monotonic()
        engine("run", "-d", "--name", self.name, *flags, *env_flags, IMAGE, *args)

    def pid(self) -> int:
        return int(engine("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip())

    def memory_kib(self) -> tuple[int, int]:
        """(resident now, peak) of the container's one process, in KiB."""
        status = Path(f"/proc/{self.pid()}/status").read_text()
        fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
        return int(fields["VmRSS"]), int(fields["VmHWM"])

    def health(self, path: str = "/readyz") -> tuple[int, dict]:
        return stack.health(self.port, path)

    def stop(self, grace: int) -> tuple[int, float]:
        """`podman stop -t grace` (SIGTERM, then SIGKILL after grace): (exit code, seconds)."""
        started = time.monotonic()
        engine("stop", "-t", str(grace), self.name, timeout=grace + 30)
        took = time.monotonic() - started
        code = int(engine("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())
        return code, took

    def lines(self) -> list[str]:
        done = engine("logs", self.name, check=False)
        return (done.stdout + done.stderr).splitlines()

    def remove(self) -> None:
        engine("rm", "-f", "-t", "0", self.name, check=False)


@pytest.fixture
def containers():
    made: list[Container] = []
    yield made
    for c in made:
        log = ROOT / "target" / f"{c.name}.log"
        log.write_text("\n".join(c.lines()))
        c.remove()


def rows(dbname: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in stack.psql(stack.db_url(dbname), "SELECT message_id, user_id, masked_ip, masked_device_id FROM user_logins"):
        assert r[0] not in out, f"message {r[0]} has two rows"
        out[r[0]] = r[1:]
    return out


def check_exact(queues: stack.Stack, key: bytes, messages: list[stack.Message], table: dict) -> int:
    """Each valid message of `messages` is one row of `table` with the right
    tokens, and no other; each reject is in the DLQ with its reason and
    without its ip or device id, nothing else is; returns the copies made
    twice (at least once, bounded)."""
    valid = [m for m in messages if m.valid]
    invalid = [m for m in messages if not m.valid]
    assert set(table) == {m.message_id for m in valid}, "every valid message is exactly one row, no other"
    for m in valid:
        body = json.loads(m.body)
        user_id, masked_ip, masked_device = table[m.message_id]
        assert user_id == body["user_id"]
        assert masked_ip == stack.token(key, stack.canonical_ip(body["ip"])), m.message_id
        assert masked_device == stack.token(key, body["device_id"].strip()), m.message_id
    copies = stack.dead_letters(queues)
    by_source: dict[str, list[dict]] = {}
    for d in copies:
        by_source.setdefault(stack.dead_letter_attribute(d, "source_message_id"), []).append(d)
    assert set(by_source) == {m.message_id for m in invalid}, "every reject in the DLQ, nothing else"
    for m in invalid:
        for d in by_source[m.message_id]:
            assert stack.dead_letter_attribute(d, "rejection_code") == m.expect.removeprefix("reject:")
            assert not any(v in d["Body"] for v in stack.pii_in(m.body)), "the copy is masked"
    # A DLQ copy is at least once (docs/poll.md): a reject redelivered
    # before its delete (a busy machine past the visibility timeout, a
    # batch cut by SIGTERM) is copied again, with the same
    # source_message_id to deduplicate by. At most the batches in flight:
    # 4 per replica, 10 messages each, two replicas.
    extra = len(copies) - len(invalid)
    assert extra <= 80, f"{extra} extra DLQ copies"
    return extra


def no_pii_in_logs(lines: list[str], messages: list[stack.Message], env: dict[str, str]) -> None:
    """No ip or device id of `messages` in any line. The generator's
    loopback addresses are also the test's own hosts (the database's at
    127.0.0.1, named in its errors): a value found in the configuration is
    no leak."""
    config = " ".join(env.values()) + " " + stack.PG_ADMIN_URL
    values = {v for m in messages for v in stack.pii_in(m.body) if v not in config}
    for line in lines:
        assert line.startswith("{"), f"not a JSON log line: {line[:200]}"
        assert not any(v in line for v in values), "a log line carries an ip or a device id"


def clear(queues: stack.Stack) -> None:
    """The DLQ emptied between tests (the table keeps its rows)."""
    stack.client("sqs").purge_queue(QueueUrl=queues.dlq_url)


def figure(line: str) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES, "a") as f:
        f.write(line + "\n")
    print(line)


def test_the_image_holds_the_binary_and_the_ca_bundle_and_starts_poll(image_files):
    """Nothing but the static binary and the host's CA bundle; `poll` is
    the entry point, the user numeric and not root, the health port
    exposed, SSL_CERT_FILE pointing at the bundle."""
    assert sorted(image_files) == sorted([BINARY.lstrip("/"), BUNDLE.lstrip("/")]), sorted(image_files)
    bundle = image_files[BUNDLE.lstrip("/")]
    assert bundle == Path(BUNDLE).read_bytes(), "the image's CA bundle is the build machine's"
    assert bundle.count(b"-----BEGIN CERTIFICATE-----") > 100
    binary = image_files[BINARY.lstrip("/")]
    assert binary[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in binary[:4096], "a static binary (no interpreter)"
    config = json.loads(engine("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["Entrypoint"] == [BINARY, "poll"]
    assert config["User"] == "65532:65532"
    assert "8080/tcp" in config["ExposedPorts"]
    assert f"SSL_CERT_FILE={BUNDLE}" in config["Env"]
    size = int(engine("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
    FIGURES.unlink(missing_ok=True)
    figure(f"image {IMAGE}: {size / 1024 / 1024:.1f} MiB ({len(binary) / 1024 / 1024:.1f} MiB binary, "
           f"{len(bundle) / 1024:.0f} KiB CA bundle)")  # fmt: skip


def test_a_backlog_drained_exactly_with_probes_and_a_database_outage(deployment, containers):
    """400 messages (every 10th invalid) queued before the container starts:
    the time to the first row, every row and DLQ copy exact, memory at rest;
    then the database refuses connections: /readyz 503 naming the database,
    /livez still 200; allowed again: /readyz 200."""
    queues, env, key = deployment
    messages = stack.generate(400, 10, seed=5301)
    stack.send(queues, messages)
    a = Container(f"login-etl-{RUN}-a", queues, env)
    containers.append(a)
    a.run()
    first_row = stack.wait_for("the first row", lambda: stack.row_count(queues.dbname) > 0, timeout=60)
    valid = sum(m.valid for m in messages)
    stack.wait_for("the backlog drained",
                   lambda: stack.row_count(queues.dbname) >= valid and sum(stack.queue_depth(queues.queue_url)) == 0,
                   timeout=120)  # fmt: skip
    drained = time.monotonic() - a.started_at
    assert a.health("/readyz")[0] == 200 and a.health("/livez")[0] == 200
    twice = check_exact(queues, key, messages, rows(queues.dbname))
    rss, peak = a.memory_kib()
    figure(f"start to first row: {first_row:.2f} s (400 messages queued before the start; drained in {drained:.1f} s; "
           f"{twice} DLQ copies made twice)")  # fmt: skip
    figure(f"memory after the 400: {rss / 1024:.1f} MiB resident, {peak / 1024:.1f} MiB peak (VmRSS, VmHWM)")

    # The database, not the wire: it refuses the role's connections and
    # ends those it has (a failover, a maintenance window).
    admin = stack.PG_ADMIN_URL
    stack.psql(admin, f"ALTER DATABASE {queues.dbname} ALLOW_CONNECTIONS false")
    try:
        stack.psql(admin, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{queues.dbname}'")
        stack.wait_for("/readyz 503", lambda: a.health("/readyz")[0] == 503, timeout=30)
        status, body = a.health("/readyz")
        assert "database" in json.dumps(body), body
        assert a.health("/livez")[0] == 200, "a database outage is not a reason to restart the pod"
    finally:
        stack.psql(admin, f"ALTER DATABASE {queues.dbname} ALLOW_CONNECTIONS true")
    back = stack.wait_for("/readyz 200 again", lambda: a.health("/readyz")[0] == 200, timeout=30)
    figure(f"ready again {back:.1f} s after the database accepted connections (probe every 5 s)")
    no_pii_in_logs(a.lines(), messages, env)


def test_two_replicas_share_a_backlog_and_sigterm_drains_within_the_grace_period(deployment, containers):
    """600 messages to two containers at once (about 65 messages a second
    against moto here: a backlog of several seconds); the first is stopped with
    SIGTERM mid-backlog (`podman stop -t <terminationGracePeriodSeconds>`)
    and exits 0 within it; the second drains the rest. Exactly one row per
    valid message, every reject in the DLQ (at least once, bounded), both
    containers wrote rows."""
    queues, env, key = deployment
    clear(queues)
    before = set(rows(queues.dbname))
    messages = stack.generate(600, 10, seed=5302)
    stack.send(queues, messages)
    a, b = Container(f"login-etl-{RUN}-r1", queues, env), Container(f"login-etl-{RUN}-r2", queues, env)
    containers.extend([a, b])
    a.run()
    b.run()
    stack.wait_for("rows from the backlog", lambda: stack.row_count(queues.dbname) >= len(before) + 100, timeout=60)
    grace = manifest_container()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    rss_a, peak_a = a.memory_kib()
    code, took = a.stop(grace)
    assert code == 0 and took < grace, f"SIGTERM mid-backlog: exit {code} after {took:.1f} s (grace {grace} s)"
    valid = [m for m in messages if m.valid]
    stack.wait_for("the rest drained by the second",
                   lambda: stack.row_count(queues.dbname) >= len(before) + len(valid)
                   and sum(stack.queue_depth(queues.queue_url)) == 0, timeout=180)  # fmt: skip
    rss_b, peak_b = b.memory_kib()
    code_b, took_b = b.stop(grace)
    assert code_b == 0, f"SIGTERM when idle: exit {code_b}"

    new = {k: v for k, v in rows(queues.dbname).items() if k not in before}
    twice = check_exact(queues, key, messages, new)
    written = {}
    for c in (a, b):
        docs = [d for d in stack.emf_in(c.lines()) if d.get("message") == "batch processed"]
        written[c.name] = sum(d.get("RowsInserted", 0) for d in docs)
        no_pii_in_logs(c.lines(), messages, env)
    assert all(written.values()), f"both replicas wrote rows: {written}"
    assert sum(written.values()) == len(valid), written
    figure(f"two replicas, 600 messages: SIGTERM mid-backlog exit 0 after {took:.1f} s (grace {grace} s); "
           f"rows by replica {sorted(written.values())}; {twice} DLQ copies made twice")  # fmt: skip
    # The manifest's memory request holds what the container used.
    (c,) = manifest_container()["spec"]["template"]["spec"]["containers"]
    request_mib = int(c["resources"]["requests"]["memory"].removesuffix("Mi"))
    assert max(peak_a, peak_b) / 1024 < request_mib, (peak_a, peak_b, request_mib)
    figure(f"memory under the backlog: {rss_a / 1024:.1f} MiB resident at the SIGTERM, peaks {peak_a / 1024:.1f} "
           f"and {peak_b / 1024:.1f} MiB (VmHWM)")  # fmt: skip
