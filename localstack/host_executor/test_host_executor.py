"""Tests of the host executor on its own, with a scripted bootstrap that speaks
the Lambda Runtime API (run by `make e2e` with LocalStack's venv; the real
bootstrap is exercised by tests/test_localstack_e2e.py)."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from localstack.services.lambda_.invocation.executor_endpoint import StatusErrorException
from localstack.services.lambda_.invocation.runtime_executor import LambdaRuntimeException

import login_etl_host_executor as plugin

Executor = plugin.HostRuntimeExecutorPlugin().load()

# A bootstrap that does what its event says: echo, error, sleep, exit.
BOOTSTRAP = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, sys, time, urllib.request
    api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
    if os.environ.get("FAIL_INIT"):
        print("init failed: no key", flush=True)
        sys.exit(3)
    print("init pid", os.getpid(), flush=True)
    while True:
        with urllib.request.urlopen(api + "/invocation/next") as r:
            rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
            deadline = int(r.headers["Lambda-Runtime-Deadline-Ms"])
            event = json.loads(r.read())
        print("handling", event["do"], flush=True)
        if event["do"] == "sleep":
            time.sleep(30)
        if event["do"] == "exit":
            sys.exit(7)
        kind = "error" if event["do"] == "error" else "response"
        body = json.dumps({"echo": event, "pid": os.getpid(), "deadline_ms": deadline, "env": dict(os.environ)}).encode()
        urllib.request.urlopen(urllib.request.Request(api + f"/invocation/{rid}/{kind}", data=body, method="POST")).read()
    """
)


def function_version(code: Path, timeout: int = 3, runtime: str = "provided.al2023", handler: str = "bootstrap"):
    return SimpleNamespace(
        config=SimpleNamespace(
            timeout=timeout,
            runtime=runtime,
            handler=handler,
            code=SimpleNamespace(get_unzipped_code_location=lambda: code, prepare_for_execution=lambda: None),
        )
    )


@pytest.fixture
def code(tmp_path: Path) -> Path:
    bootstrap = tmp_path / "bootstrap"
    bootstrap.write_text(BOOTSTRAP)
    bootstrap.chmod(0o755)
    return tmp_path


@pytest.fixture
def executor(code: Path):
    ex = Executor("test-env", function_version(code))
    yield ex
    ex.stop()


def invoke(ex, do: str, request_id: str = "req-1"):
    return ex.invoke(
        {
            "invoke-id": request_id,
            "invoked-function-arn": "arn:aws:lambda:us-east-1:000000000000:function:f",
            "payload": json.dumps({"do": do}),
            "trace-id": "Root=1-0-0",
        }
    )


def test_invocation_round_trip_with_its_own_logs(executor):
    executor.start({"AWS_REGION": "us-east-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": 128})
    before = time.time() * 1000
    first = invoke(executor, "echo", "req-1")
    assert not first.is_error
    body = json.loads(first.payload)
    assert body["echo"] == {"do": "echo"}
    assert before + 2000 < body["deadline_ms"] <= time.time() * 1000 + 3000
    assert first.logs == "handling echo\n"
    second = invoke(executor, "error", "req-2")
    assert second.is_error and second.logs == "handling error\n"
    assert json.loads(second.payload)["pid"] == body["pid"], "the same warm process"


def test_timeout_kills_the_process_and_the_next_invocation_starts_a_new_one(executor):
    executor.start({})
    pid = json.loads(invoke(executor, "echo").payload)["pid"]
    started = time.monotonic()
    result = invoke(executor, "sleep", "req-2")
    assert 2.5 < time.monotonic() - started < 6
    assert result.is_error and json.loads(result.payload)["errorType"] == "Sandbox.Timedout"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    after = invoke(executor, "echo", "req-3")
    assert not after.is_error and json.loads(after.payload)["pid"] != pid


def test_a_crash_fails_that_invocation_only(executor):
    executor.start({})
    result = invoke(executor, "exit")
    assert result.is_error
    assert json.loads(result.payload) == {
        "errorType": "Runtime.ExitError",
        "errorMessage": "bootstrap exited with status 7 during the invocation",
    }
    assert not invoke(executor, "echo", "req-2").is_error


def test_init_failure_reports_the_exit_and_the_output(executor):
    with pytest.raises(StatusErrorException) as e:
        executor.start({"FAIL_INIT": "1"})
    payload = json.loads(e.value.payload)
    assert payload["errorType"] == "Runtime.ExitError"
    assert "status 3" in payload["errorMessage"] and "init failed: no key" in payload["errorMessage"]


def test_only_the_function_environment_reaches_the_process(executor, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "localstack-own-secret")
    monkeypatch.setenv("LOGIN_ETL_DB_ADDRESS", "127.0.0.1")
    executor.start({"AWS_REGION": "eu-west-1"})
    # What the bootstrap process itself received, as it reports it.
    env = json.loads(invoke(executor, "echo").payload)["env"]
    assert env["AWS_REGION"] == "eu-west-1"
    assert "AWS_SECRET_ACCESS_KEY" not in env, "LocalStack's own credentials stay out"
    # The database's name at the address LOGIN_ETL_DB_ADDRESS gives (the VPC's DNS).
    assert env["PGHOSTADDR"] == "127.0.0.1" and "LOGIN_ETL_DB_ADDRESS" not in env
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")


def test_prepare_refuses_a_bootstrap_for_another_cpu(tmp_path: Path):
    other = 0xB7 if plugin.HOST_MACHINE == "x86_64" else 0x3E
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    header[18:20] = other.to_bytes(2, "little")
    (tmp_path / "bootstrap").write_bytes(bytes(header))
    with pytest.raises(LambdaRuntimeException, match="but this host is"):
        Executor.prepare_version(function_version(tmp_path))
    header[18:20] = {"x86_64": 0x3E, "aarch64": 0xB7}[plugin.HOST_MACHINE].to_bytes(2, "little")
    (tmp_path / "bootstrap").write_bytes(bytes(header))
    Executor.prepare_version(function_version(tmp_path))
    assert (tmp_path / "bootstrap").stat().st_mode & 0o111


def test_a_python_function_runs_its_handler_with_the_python_runtime(tmp_path: Path):
    """python3.x (the release template's inline copier): index.handler,
    its result posted back, an exception as the invocation's error, and a
    package without the handler's module refused."""
    with pytest.raises(LambdaRuntimeException, match="no index.py"):
        Executor.prepare_version(function_version(tmp_path, runtime="python3.12", handler="index.handler"))
    (tmp_path / "index.py").write_text(textwrap.dedent(
        """\
        import os
        def handler(event, context):
            print("handling", event["do"])
            if event["do"] == "error":
                raise ValueError("asked to fail")
            return {"echo": event, "request": context.aws_request_id, "left": context.get_remaining_time_in_millis() > 0,
                    "region": os.environ["AWS_REGION"]}
        """))  # fmt: skip
    version = function_version(tmp_path, runtime="python3.12", handler="index.handler")
    Executor.prepare_version(version)
    ex = Executor("test-python", version)
    try:
        ex.start({"AWS_REGION": "eu-west-1", "_HANDLER": "index.handler"})
        done = invoke(ex, "echo", "req-1")
        assert not done.is_error, done.payload
        assert json.loads(done.payload) == {"echo": {"do": "echo"}, "request": "req-1", "left": True, "region": "eu-west-1"}
        assert done.logs == "handling echo\n"
        failed = invoke(ex, "error", "req-2")
        assert failed.is_error and json.loads(failed.payload)["errorMessage"] == "asked to fail"
    finally:
        ex.stop()
