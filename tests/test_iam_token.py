"""login-etl's RDS IAM token (`DB_AUTH=iam`) is botocore's: the token of
`generate_db_auth_token` for the same credentials (with and without a
session token), region, host, port, user and clock, compared as parsed
query maps. The binary's signer is the library's `database::iam::token`,
run through examples/iam_token.rs at that clock; tests/it/iam_auth.rs logs
in with it. Skips without botocore.

Run by `make test` (after cargo has built the examples).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import urllib.parse
from pathlib import Path
from unittest import mock

import pytest

botocore_session = pytest.importorskip("botocore.session")
import botocore.auth  # noqa: E402

try:
    import botocore.crt.auth as CRT_AUTH  # noqa: N812 - the CRT's signer, when awscrt is installed
except ImportError:
    CRT_AUTH = None

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "examples" / "iam_token"
CLOCK = dt.datetime(2026, 11, 26, 9, 30, 7, tzinfo=dt.timezone.utc)
KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def botocore_token(host: str, port: int, user: str, region: str, session_token: str | None) -> str:
    session = botocore_session.get_session()
    session.set_credentials(KEY, SECRET, session_token)
    rds = session.create_client("rds", region_name=region, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                                aws_session_token=session_token)  # fmt: skip
    # botocore signs at get_current_datetime(), in its own signer or, with
    # awscrt installed, in the CRT's.
    def clock(remove_tzinfo: bool = True) -> dt.datetime:
        return CLOCK.replace(tzinfo=None) if remove_tzinfo else CLOCK

    with contextlib.ExitStack() as fixed:
        fixed.enter_context(mock.patch.object(botocore.auth, "get_current_datetime", clock))
        if CRT_AUTH is not None:
            fixed.enter_context(mock.patch.object(CRT_AUTH, "get_current_datetime", clock))
        return rds.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user, Region=region)


def login_etl_token(host: str, port: int, user: str, region: str, session_token: str | None) -> str:
    if not EXAMPLE.exists():
        pytest.fail(f"{EXAMPLE} is missing: run `make test` (it builds the examples first)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    if session_token:
        env["AWS_SESSION_TOKEN"] = session_token
    done = subprocess.run([str(EXAMPLE), host, str(port), user, region, str(int(CLOCK.timestamp()))],
                          env=env, capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return done.stdout.strip()


def parsed(token: str) -> tuple[str, dict[str, list[str]]]:
    """The token's host:port/path and its query as a map (order aside)."""
    where, query = token.split("?", 1)
    return where, urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=True)


@pytest.mark.parametrize("session_token", [None, "FQoGZXIvYXdzE/abc+def=="])
@pytest.mark.parametrize(
    "host,port,user,region",
    [
        ("mydb.abc123.eu-west-1.rds.amazonaws.com", 5432, "login_etl_ingest", "eu-west-1"),
        # An RDS Proxy endpoint, another port, a user that needs encoding.
        ("login-etl.proxy-abc123.us-east-1.rds.amazonaws.com", 6432, "iam@user+x", "us-east-1"),
    ],
)
def test_the_token_is_botocores(host, port, user, region, session_token):
    ours = login_etl_token(host, port, user, region, session_token)
    theirs = botocore_token(host, port, user, region, session_token)
    assert parsed(ours) == parsed(theirs)
    where, query = parsed(ours)
    assert where == f"{host}:{port}/"
    assert query["DBUser"] == [user] and query["Action"] == ["connect"] and query["X-Amz-Expires"] == ["900"]
    assert query["X-Amz-Date"] == [CLOCK.strftime("%Y%m%dT%H%M%SZ")]
    assert ("X-Amz-Security-Token" in query) == bool(session_token)


def test_another_second_another_host_or_user_is_another_signature():
    base = parsed(login_etl_token("a.example.com", 5432, "u", "eu-west-1", None))[1]["X-Amz-Signature"]
    for host, user in (("b.example.com", "u"), ("a.example.com", "v")):
        other = parsed(login_etl_token(host, 5432, user, "eu-west-1", None))[1]["X-Amz-Signature"]
        assert other != base, (host, user)
