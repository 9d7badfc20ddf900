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
                                  ["forget", "--help"], ["--version"]])  # fmt: skip
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
    out = run("grants", "--role", "audit", "--to", "x", env={"RUST_LOG": "trace"})
    assert out.returncode == 0 and all(line.startswith(("GRANT", "--")) for line in out.stdout.splitlines())
