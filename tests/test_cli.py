"""The binary's command line as an operator meets it: help, usage errors,
the bare binary outside Lambda, errors once on stderr, results alone on
stdout. Run by `make test` with the binary cargo built."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
CLEAN_ENV = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make test` (it builds the binary first)")
    return subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=30,
                          env={**CLEAN_ENV, **(env or {})}, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["grants", "--help"], ["reveal", "--help"], ["audit", "--help"],
                                  ["forget", "--help"], ["poll", "--help"], ["--version"]])  # fmt: skip
def test_help_and_version_exit_0_on_stdout(args):
    out = run(*args)
    assert out.returncode == 0 and out.stderr == ""
    assert "login-etl" in out.stdout
    if args[-1] == "--help":
        assert "Usage:" in out.stdout


@pytest.mark.parametrize(
    "args",
    [["nonsense"], ["grants", "--role", "admin", "--to", "x"], ["reveal"],
     ["reveal", "--ip-token", "a", "--user-id", "b"], ["audit", "--since", "yesterday"], ["forget"]],
)  # fmt: skip
def test_usage_errors_exit_2_with_a_short_usage_on_stderr(args):
    out = run(*args)
    assert out.returncode == 2 and out.stdout == ""
    assert "error:" in out.stderr and "--help" in out.stderr
    assert len(out.stderr.splitlines()) <= 8, "short"


def test_the_bare_binary_outside_lambda_says_so_and_exits_2_without_a_panic():
    out = run()
    assert out.returncode == 2 and out.stdout == ""
    assert "AWS_LAMBDA_RUNTIME_API is not set" in out.stderr and "login-etl --help" in out.stderr
    assert "panicked" not in out.stderr


def test_an_error_is_printed_once_on_stderr_and_nothing_on_stdout():
    out = run("migrate")  # no database settings at all
    assert out.returncode == 1 and out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "DB_SECRET_ID is not set" in lines[0], out.stderr


def test_results_alone_on_stdout():
    out = run("gen-events", "--count", "3", "--seed", "9", env={"RUST_LOG": "trace"})
    assert out.returncode == 0
    assert len(json.loads(out.stdout)["Records"]) == 3, "stdout is the event and nothing else"
    out = run("grants", "--role", "audit", "--to", "x", "--profile", "full", env={"RUST_LOG": "trace"})
    # SQL alone: the grants (the schema's USAGE in a DO block), the role's
    # registry row, comments; no log line.
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and all(line.startswith(("GRANT", "INSERT INTO", "DO $usage$", "--")) for line in lines), lines
    assert any(line.startswith("INSERT INTO") and "'audit'" in line for line in lines)


@pytest.mark.parametrize("args,says", [
    (["poll", "--queue-url", "logins"], "--queue-url"),
    (["poll", "--queue-url", "http://127.0.0.1:9/q", "--batch-size", "100"], "--batch-window"),
    (["poll", "--queue-url", "http://127.0.0.1:9/q", "--grace-period", "5"], "--grace-period"),
    (["poll", "--queue-url", "http://127.0.0.1:9/q", "--threads", "0"], "--threads"),
])  # fmt: skip
def test_poll_settings_that_cannot_work_are_usage_errors_before_any_call(args, says):
    out = run(*args)
    assert out.returncode == 2 and says in out.stderr and "panicked" not in out.stderr, out.stderr


def test_poll_without_a_reachable_queue_says_what_to_check_and_exits_1():
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_EC2_METADATA_DISABLED": "true",
           "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none", "MASKING_KEY": "00" * 32}  # fmt: skip
    out = run("poll", "--queue-url", "http://127.0.0.1:9/000000000000/q", env=env)
    assert out.returncode == 1, out
    assert "GetQueueAttributes" in out.stderr and "check --queue-url" in out.stderr, out.stderr


def test_a_sigterm_during_the_cold_start_stops_poll_cleanly():
    """A pod stopped while it starts: the consumer is still waiting on SQS
    (an endpoint that accepts and never answers) when SIGTERM comes; it
    stops at once and exits 0, as it would when idle."""
    import signal
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "DATABASE_URL": "postgres://nobody@127.0.0.1:9/none", "MASKING_KEY": "00" * 32}  # fmt: skip
    proc = subprocess.Popen([str(BINARY), "poll", "--queue-url", f"http://127.0.0.1:{port}/000000000000/q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # Until it waits on the queue (its first request, never answered).
        silent.settimeout(60)
        waiting, _ = silent.accept()
        assert proc.poll() is None, "still starting (the queue never answers)"
        proc.send_signal(signal.SIGTERM)
        # Stopped by the signal, not by a start-up timeout of its own: the
        # queue never answered, and the log says which it was.
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (proc.returncode, err)
        assert "stopping before the first receive" in out + err and "SIGTERM" in out + err, (out, err)
        waiting.close()
    finally:
        proc.kill()
        silent.close()


def test_the_container_example_fits_the_binary_and_the_image():
    """examples/container: kubernetes.yaml validates against the Kubernetes
    API schemas (kubernetes-validate, strict); the pod's grace period covers
    the consumer's, the probes ask the paths it serves on the port the image
    exposes, the user is the image's by number, the root file system
    read-only, seccomp on; the image runs `poll`; each pod's service account
    exists; the consumer has the erasure key's secret beside the masking key's."""
    import re

    import yaml

    manifest = ROOT / "examples" / "container" / "kubernetes.yaml"
    checked = subprocess.run([str(ROOT / ".venv" / "bin" / "kubernetes-validate"), "--strict", "--quiet", str(manifest)],
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    help_text = run("poll", "--help").stdout
    grace = int(re.search(r"--grace-period.*?\[default: (\d+)\]", help_text, re.S).group(1))
    docs = list(yaml.safe_load_all(manifest.read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > grace
    (container,) = pod["containers"]
    containerfile = (ROOT / "examples" / "container" / "Containerfile").read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/login-etl", "poll"]' in containerfile
    (user,) = re.findall(r"^USER (\d+):(\d+)$", containerfile, re.M)
    (port,) = re.findall(r"^EXPOSE (\d+)$", containerfile, re.M)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert [p["containerPort"] for p in container["ports"]] == [int(port)]
    assert any(a == f"--health-addr=0.0.0.0:{port}" for a in container["args"])
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    cron_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for p in (pod, cron_pod):
        assert p["serviceAccountName"] in accounts
        assert p["securityContext"]["runAsNonRoot"] and p["securityContext"]["runAsUser"] == int(user[0])
        assert p["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in p["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert not c["securityContext"]["allowPrivilegeEscalation"]
    env = {e["name"] for e in container["env"]}
    assert {"DB_SECRET_ID", "MASKING_KEY_SECRET_ID", "ERASURE_KEY_SECRET_ID"} <= env
    # The maintenance CronJob runs `maintain` with options the binary has,
    # and without the masking key.
    (job,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job["command"] == ["/usr/local/bin/login-etl", "maintain"]
    maintain_help = run("maintain", "--help").stdout
    for arg in job["args"]:
        assert arg.split("=")[0] in maintain_help, arg
    names = {e["name"] for e in job["env"]}
    assert "DB_SECRET_ID" in names and not any(n.startswith("MASKING_KEY") for n in names)
