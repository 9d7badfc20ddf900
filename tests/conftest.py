"""Fixtures shared by the LocalStack tests (test_localstack_e2e.py and
test_poll_localstack.py): one LocalStack and one build for the session.

`make e2e` runs them side by side in pytest-xdist workers (`-n`): it starts
LocalStack first, since workers must share one, and stops it at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "localstack"))


@pytest.fixture(scope="session")
def localstack():
    """LocalStack on 127.0.0.1:4566 (started unless one of ours runs, and
    then stopped by PID, also on failure), and the host build packaged."""
    import stack

    ours = not stack.localstack_running()
    if ours and os.environ.get("PYTEST_XDIST_WORKER"):
        # Each worker would start (and stop) one of its own on the same port.
        pytest.fail("LocalStack is not running: with pytest -n, start it first (make up), or run make e2e, which does")
    if ours:
        subprocess.run([str(ROOT / "localstack" / "up.sh")], check=True, timeout=180)
    try:
        stack.build()
        yield
    finally:
        if ours:
            subprocess.run([str(ROOT / "localstack" / "down.sh")], check=False, timeout=60)

