"""The producer contract: the published JSON Schema and `login-etl validate`
agree with the function's own validator on a large generated corpus.

The schema is made from the parser's own field list (`login-etl schema`);
docs/contract/login-event.schema.json must be that output. For every body of
the corpus that a JSON Schema can decide, the schema's verdict (Python's
jsonschema, Draft 2020-12) equals validate's, which is the function's. The
cases a schema cannot decide are named here, and each must occur:
- an `ip` that is not an address (its parse): the schema accepts, the
  function says invalid_ip;
- a key that appears twice: JSON parsers keep one, the function says
  duplicate_field.<name>;
- a body that is not JSON: nothing for a schema to judge (the function says
  invalid_json or empty_body).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
BINARY = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
SCHEMA_FILE = ROOT / "docs" / "contract" / "login-event.schema.json"

FIELDS = {"user_id": 128, "app_version": 32, "device_type": 32, "ip": 64, "locale": 32, "device_id": 256}
REQUIRED = ["user_id", "app_version", "device_type", "ip", "device_id"]
# What Rust's str::trim removes (Unicode White_Space), and what it keeps
# though some regex dialects call it a space (\s: ECMA-262's takes U+FEFF,
# Python's U+001C to U+001F).
BLANKS = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u202f", "\u3000"]
NOT_BLANKS = ["\ufeff", "\x1c\x1d", "\x1f"]


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("UNKNOWN_FIELDS", "EXTRA_FIELDS")}
    return subprocess.run([str(BINARY), *args], input=stdin, capture_output=True, text=True,
                          env={**clean, **(env or {})}, timeout=120)  # fmt: skip


def valid_login(rng: random.Random) -> dict:
    ips = ["10.0.0.1", "199.172.111.135", "::1", "2001:db8::8a2e:370:7334", " 192.0.2.1 ", "::ffff:10.1.2.3"]
    return {
        "user_id": f"u-{rng.randrange(10**9)}",
        "app_version": rng.choice(["2.3.0", "0.96", "1.1", "7", "999.999.999"]),
        "device_type": rng.choice(["android", "ios", "web"]),
        "ip": rng.choice(ips),
        "locale": rng.choice(["RU", "en-US", None, "", "ü" * 32]),
        "device_id": f"{rng.randrange(1000):03}-{rng.randrange(100):02}-{rng.randrange(10000):04}",
    }


def field_values(field: str, limit: int) -> list:
    """Edge cases of one field: types, blanks, lengths in characters, NUL."""
    values: list = [None, 7, 1.5, True, [], {}, ["x"], "", " ", "a\x00b", "x" * limit, "é" * limit,
                    "x" * (limit + 1), "é" * (limit + 1), "😀" * limit, *NOT_BLANKS]  # fmt: skip
    values += [b * 3 for b in BLANKS] + [f"{b}v{b}" for b in BLANKS]
    if field == "app_version":
        values += ["1.2.3", "1.2.3.4", "1..2", ".1", "1.", "1000", "01.002.003", "1.2\n", "1.2 ", "v1", "١.٢"]
    if field == "ip":
        values += ["999.1.1.1", "1.2.3", "::1%eth0", "10.0.0.1/24", "localhost", "1.2.3.4 ", "\t::1\n", "fe80::1"]
    return values


def corpus(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    bodies: list[str] = []
    for _ in range(n):
        bodies.append(json.dumps(valid_login(rng), ensure_ascii=rng.random() < 0.5))
    for field, limit in FIELDS.items():
        for value in field_values(field, limit):
            body = valid_login(rng)
            body[field] = value
            bodies.append(json.dumps(body, ensure_ascii=rng.random() < 0.5))
        body = valid_login(rng)
        del body[field]
        bodies.append(json.dumps(body))
    for extra in [{"app_build": 3}, {"email": "a@b.example", "os": {"v": 1}}, {"203.0.113.7": True}]:
        bodies.append(json.dumps({**valid_login(rng), **extra}))
    login = json.dumps(valid_login(rng))
    bodies += [login[:-1] + ', "ip": "10.9.9.9"}', login[:-1] + ', "user_id": "again"}']  # duplicate keys
    bodies += ["[]", '"a string"', "42", "null", "true", "{}", '{"other": 1}', "not json", "{", ""]
    return bodies


def verdicts(bodies: list[str], *flags: str) -> list[dict]:
    out = run("validate", "-", *flags, stdin="".join(b + "\n" for b in bodies))
    assert out.returncode in (0, 1), out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [v["line"] for v in lines] == list(range(1, len(bodies) + 1)), "one verdict per line, in order"
    return lines


def test_the_published_schema_is_the_commands_output_and_a_valid_2020_12_schema():
    out = run("schema")
    assert out.returncode == 0, out.stderr
    assert SCHEMA_FILE.read_text() == out.stdout, (
        "docs/contract/login-event.schema.json is not `login-etl schema`'s output: "
        "target/debug/login-etl schema > docs/contract/login-event.schema.json"
    )
    schema = json.loads(out.stdout)
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == REQUIRED
    assert {k: v["maxLength"] for k, v in schema["properties"].items()} == FIELDS


@pytest.mark.parametrize("flags", [(), ("--unknown-fields", "reject"), ("--extra-fields", "app_build,os")])
def test_schema_and_validate_agree_on_a_generated_corpus_but_where_a_schema_cannot_decide(flags):
    bodies = corpus(seed=54, n=400)
    schema = json.loads(run("schema", *flags).stdout)
    checker = Draft202012Validator(schema)
    undecidable: dict[str, int] = {"invalid_ip": 0, "duplicate_field": 0, "not_json": 0}
    agreed = 0
    for body, verdict in zip(bodies, verdicts(bodies, *flags)):
        reason = verdict.get("reason", "")
        try:
            doc = json.loads(body)
        except ValueError:
            assert reason in ("invalid_json", "empty_body"), (body, verdict)
            undecidable["not_json"] += 1
            continue
        by_schema = checker.is_valid(doc)
        if by_schema and reason == "invalid_ip":
            undecidable["invalid_ip"] += 1
            continue
        if by_schema and reason.startswith("duplicate_field."):
            undecidable["duplicate_field"] += 1
            continue
        assert by_schema == verdict["valid"], f"schema says {by_schema}, the function {verdict} for {body!r}"
        agreed += 1
    assert agreed > 500, agreed
    assert all(undecidable.values()), f"a named case never occurred: {undecidable}"


def test_a_verdict_never_quotes_a_value_and_the_exit_code_says_whether_all_were_valid():
    rng = random.Random(7)
    login = valid_login(rng)
    secret = "203.0.113.77"
    bad = {**login, "ip": secret + "x", "email": secret}
    out = run("validate", "-", "--unknown-fields", "reject", stdin=json.dumps(bad) + "\n")
    assert out.returncode == 1
    assert secret not in out.stdout and secret not in out.stderr
    assert json.loads(out.stdout) == {"line": 1, "valid": False, "reason": "invalid_ip"}
    assert "1 messages, 0 valid, 1 rejected (invalid_ip 1)" in out.stderr
    ok = run("validate", "-", stdin=json.dumps(login) + "\n")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"line": 1, "valid": True}
    for args in (["validate"], ["validate", "--event", "/nonexistent.json"], ["validate", "-", "--extra-fields", "ip"]):
        out = run(*args, stdin="")
        assert out.returncode == 2, (args, out.stderr)


def test_an_events_fixture_is_judged_as_the_function_judges_it():
    fixture = ROOT / "events" / "sqs-mixed.json"
    out = run("validate", "--event", str(fixture))
    assert out.returncode == 1
    expect = {
        m["messageId"]: m["messageAttributes"]["expect"]["stringValue"]
        for m in json.loads(fixture.read_text())["Records"]
    }
    got = {}
    for line in out.stdout.splitlines():
        v = json.loads(line)
        got[v["messageId"]] = "insert" if v["valid"] else "reject:" + v["reason"]
    assert got == expect
