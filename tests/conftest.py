"""Fixtures shared by the LocalStack tests (test_localstack_e2e.py and
test_poll_localstack.py): one LocalStack and one build for the session."""

from __future__ import annotations

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
    if ours:
        subprocess.run([str(ROOT / "localstack" / "up.sh")], check=True, timeout=180)
    try:
        stack.build()
        yield
    finally:
        if ours:
            subprocess.run([str(ROOT / "localstack" / "down.sh")], check=False, timeout=60)
