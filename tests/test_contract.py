"""The producer contract: the published JSON Schemas and `login-etl validate`
agree with the function's own validator on a large generated corpus, under
both contracts (CONTRACT=lenient, the default: a login is stored with its
defects; CONTRACT=strict: a defect is a rejection).

The schemas are made from the parser's own field list (`login-etl schema`);
docs/contract/login-event.schema.json and login-event.strict.schema.json
must be that output. For every body of the corpus that a JSON Schema can
decide, the schema's verdict (Python's jsonschema, Draft 2020-12) equals
validate's, which is the function's. The cases a schema cannot decide are
named here, and each must occur where it can:
- an `ip` that is not an address (its parse): the strict schema accepts, the
  function says invalid_ip (kept, the defect says ip.unparseable);
- a key that appears twice: JSON parsers keep one, the function says
  duplicate_field.<name> (kept, for a field but user_id: <name>.duplicate);
- a user_id that is a number with a zero fraction (7.0): JSON Schema's
  integer, the function's wrong type (not an integer in the JSON text);
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
SCHEMA_FILES = {"lenient": ROOT / "docs" / "contract" / "login-event.schema.json",
                "strict": ROOT / "docs" / "contract" / "login-event.strict.schema.json"}  # fmt: skip

FIELDS = {"user_id": 128, "app_version": 32, "device_type": 32, "ip": 64, "locale": 32, "device_id": 256}
REQUIRED = {"lenient": ["user_id"], "strict": ["user_id", "app_version", "device_type", "ip", "device_id"]}
# What Rust's str::trim removes (Unicode White_Space), and what it keeps
# though some regex dialects call it a space (\s: ECMA-262's takes U+FEFF,
# Python's U+001C to U+001F).
BLANKS = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2003", "\u2028", "\u202f", "\u3000"]
NOT_BLANKS = ["\ufeff", "\x1c\x1d", "\x1f"]


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CONTRACT", "UNKNOWN_FIELDS", "EXTRA_FIELDS")}
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
    values: list = [None, 7, -7, 7.0, 10**30, 1.5, True, [], {}, ["x"], "", " ", "a\x00b", "x" * limit, "é" * limit,
                    "x" * (limit + 1), "é" * (limit + 1), "😀" * limit, *NOT_BLANKS]  # fmt: skip
    values += [b * 3 for b in BLANKS] + [f"{b}v{b}" for b in BLANKS]
    if field == "app_version":
        values += ["1.2.3", "1.2.3.4", "1..2", ".1", "1.", "1000", "01.002.003", "1.2\n", "1.2 ", "v1", "١.٢",
                   "2.3.0-beta1", "2.3.0 (4512)", "v2.3.0", "10.0.1000", "2025.1.0", "5.2.1203", "2146.999.999",
                   "2147.1", "0999.1", "20250101", "2025.1.0-beta", "2.3.0-beta.2", "1.0.0-SNAPSHOT",
                   "2.3.0-ip199.172.111.135", "2.3.0-d593-47-5928", "2.3.0+ssn593-47-5928", "1.0.0-alice.example.com",
                   "2.3.0+20240101", "1.0.0-rc1", "2.0.0+build"]  # fmt: skip
    if field == "ip":
        values += ["999.1.1.1", "1.2.3", "::1%eth0", "10.0.0.1/24", "localhost", "1.2.3.4 ", "\t::1\n", "fe80::1",
                   "10.0.0.1:443", "[2001:db8::1]:443", "unknown", "203.0.113.7, 10.0.0.1", "::ffff:203.0.113.7",
                   "unknown, 10.0.0.1"]  # fmt: skip
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


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_the_published_schemas_are_the_commands_output_and_valid_2020_12_schemas(mode):
    out = run("schema", "--contract", mode)
    assert out.returncode == 0, out.stderr
    name = SCHEMA_FILES[mode].name
    assert SCHEMA_FILES[mode].read_text() == out.stdout, (
        f"docs/contract/{name} is not `login-etl schema --contract {mode}`'s output: "
        f"target/debug/login-etl schema --contract {mode} > docs/contract/{name}"
    )
    schema = json.loads(out.stdout)
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == REQUIRED[mode]
    if mode == "strict":
        assert {k: v["maxLength"] for k, v in schema["properties"].items()} == FIELDS
    assert run("schema").stdout == SCHEMA_FILES["lenient"].read_text(), "lenient is the default"


@pytest.mark.parametrize(
    "flags",
    [(), ("--unknown-fields", "reject"), ("--extra-fields", "app_build,os"),
     ("--contract", "strict"), ("--contract", "strict", "--unknown-fields", "reject"),
     ("--contract", "strict", "--extra-fields", "app_build,os")],
)  # fmt: skip
def test_schema_and_validate_agree_on_a_generated_corpus_but_where_a_schema_cannot_decide(flags):
    strict = "strict" in flags
    bodies = corpus(seed=54, n=400)
    schema = json.loads(run("schema", *flags).stdout)
    checker = Draft202012Validator(schema)
    undecidable: dict[str, int] = {"invalid_ip": 0, "duplicate_field": 0, "float_user_id": 0, "not_json": 0}
    agreed = 0
    defects_seen: set[str] = set()
    # The version texts stored as received: the lenient schema's $defs.
    kept_text = None if strict else Draft202012Validator(schema["$defs"]["app_version_text"])
    texts_judged = 0
    for body, verdict in zip(bodies, verdicts(bodies, *flags)):
        reason = verdict.get("reason", "")
        defects_seen.update(verdict.get("defects", []))
        try:
            doc = json.loads(body)
        except ValueError:
            assert reason in ("invalid_json", "empty_body"), (body, verdict)
            undecidable["not_json"] += 1
            continue
        version = doc.get("app_version") if isinstance(doc, dict) else None
        if kept_text and verdict["valid"] and isinstance(version, str):
            own = {d for d in verdict.get("defects", []) if d.startswith("app_version.")}
            stored = own <= {"app_version.prefix", "app_version.suffix", "app_version.fourth_part", "app_version.out_of_range"}
            assert kept_text.is_valid(version) == stored, (version, verdict)
            texts_judged += 1
        by_schema = checker.is_valid(doc)
        if by_schema and reason == "invalid_ip":
            undecidable["invalid_ip"] += 1
            continue
        if by_schema and reason.startswith("duplicate_field."):
            undecidable["duplicate_field"] += 1
            continue
        if by_schema and reason == "wrong_type.user_id" and isinstance(doc.get("user_id"), float):
            undecidable["float_user_id"] += 1
            continue
        assert by_schema == verdict["valid"], f"schema says {by_schema}, the function {verdict} for {body!r}"
        assert strict or verdict["valid"] or reason.endswith("user_id") or reason in (
            "not_a_login_event", "not_an_object") or reason == "unknown_field", verdict  # fmt: skip
        agreed += 1
    assert agreed > 500, agreed
    assert strict or texts_judged > 300, texts_judged
    if strict:
        assert not defects_seen, "strict stores no defect"
        assert undecidable["invalid_ip"], f"a named case never occurred: {undecidable}"
    else:
        for code in ("ip.port", "ip.unparseable", "app_version.suffix", "user_id.integer", "device_id.missing"):
            assert code in defects_seen, f"{code} never seen: {sorted(defects_seen)}"
    assert undecidable["duplicate_field"] and undecidable["not_json"], undecidable
    assert strict or undecidable["float_user_id"], undecidable


def test_a_verdict_never_quotes_a_value_and_the_exit_code_says_whether_all_were_stored():
    rng = random.Random(7)
    login = valid_login(rng)
    secret = "203.0.113.77"
    bad = {**login, "ip": secret + "x", "email": secret}
    out = run("validate", "-", "--contract", "strict", "--unknown-fields", "reject", stdin=json.dumps(bad) + "\n")
    assert out.returncode == 1
    assert secret not in out.stdout and secret not in out.stderr
    assert json.loads(out.stdout) == {"line": 1, "valid": False, "reason": "invalid_ip"}
    assert "1 messages, 0 valid, 0 with defects, 1 rejected (invalid_ip 1)" in out.stderr
    # By default the login is stored, its defect named, never its value.
    kept = run("validate", "-", stdin=json.dumps(bad) + "\n")
    assert kept.returncode == 0, kept.stderr
    assert secret not in kept.stdout and secret not in kept.stderr
    assert json.loads(kept.stdout) == {"line": 1, "valid": True, "defects": ["ip.unparseable"], "undeclared": ["email"]}
    assert ("1 messages, 1 valid, 1 with defects (ip.unparseable 1), 1 with undeclared fields (counted, not stored), "
            "0 rejected") in kept.stderr  # fmt: skip
    ok = run("validate", "-", stdin=json.dumps(login) + "\n")
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"line": 1, "valid": True}
    not_a_login = run("validate", "-", stdin=json.dumps({"ip": secret}) + "\n")
    assert not_a_login.returncode == 1 and secret not in not_a_login.stdout + not_a_login.stderr
    for args in (["validate"], ["validate", "--event", "/nonexistent.json"], ["validate", "-", "--extra-fields", "ip"],
                 ["validate", "-", "--contract", "loose"]):  # fmt: skip
        out = run(*args, stdin="")
        assert out.returncode == 2, (args, out.stderr)


def test_what_adopters_apps_send_keeps_its_version_device_id_and_address_and_validate_names_undeclared_fields():
    """Issue 74's contract gaps, found in an adopter's own messages: a
    calendar version and a patch above 999 keep a sortable integer; a
    numeric device id is tokenized as its decimal text; a forwarded-for list
    keeps its first address; an IPv4 address written as IPv6 is clean (the
    function tokenizes it as the IPv4 address: src/contract/address.rs);
    undeclared fields are named. The function (validate runs its parser),
    and both schemas agree, but where a schema cannot parse an ip."""
    base = {"user_id": "u-1", "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": None,
            "device_id": "593-47-5928"}  # fmt: skip
    cases = [  # (field, value, lenient defects, strict reason or None)
        ("app_version", "2025.1.0", [], None),
        ("app_version", "2025.11.3-beta", ["app_version.suffix"], "invalid_app_version"),
        ("app_version", "5.2.1203", ["app_version.out_of_range"], "app_version_out_of_range"),
        ("device_id", 8412337651, ["device_id.integer"], "wrong_type.device_id"),
        ("ip", "203.0.113.7, 10.0.0.1", ["ip.list"], "invalid_ip"),
        ("ip", "::ffff:203.0.113.7", [], None),
    ]
    bodies = [json.dumps({**base, field: value}) for field, value, _, _ in cases]
    schemas = {mode: Draft202012Validator(json.loads(run("schema", "--contract", mode).stdout))
               for mode in ("lenient", "strict")}  # fmt: skip
    for body, lenient, strict, (field, value, defects, reason) in zip(
        bodies, verdicts(bodies), verdicts(bodies, "--contract", "strict"), cases
    ):
        want = {"line": lenient["line"], "valid": True, **({"defects": defects} if defects else {})}
        assert lenient == want, (value, lenient)
        assert schemas["lenient"].is_valid(json.loads(body))
        if reason is None:
            assert strict["valid"], (value, strict)
        else:
            assert strict.get("reason") == reason, (value, strict)
        assert schemas["strict"].is_valid(json.loads(body)) == strict["valid"], (value, strict)
    undeclared = json.dumps({**base, "email": "a@b.example", "203.0.113.7": True, "os": {"v": 1}})
    [verdict] = verdicts([undeclared])
    assert verdict == {"line": 1, "valid": True, "undeclared": ["email", "<other>", "os"]}, verdict


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_an_events_fixture_is_judged_as_the_function_judges_it(mode):
    fixture = ROOT / "events" / "sqs-mixed.json"
    out = run("validate", "--event", str(fixture), "--contract", mode)
    assert out.returncode == 1
    attribute = "expect" if mode == "lenient" else "expect_strict"
    expect = {
        m["messageId"]: m["messageAttributes"].get(attribute, m["messageAttributes"]["expect"])["stringValue"]
        for m in json.loads(fixture.read_text())["Records"]
    }
    got = {}
    for line in out.stdout.splitlines():
        v = json.loads(line)
        if v["valid"]:
            got[v["messageId"]] = "insert" + (":" + ",".join(v["defects"]) if "defects" in v else "")
        else:
            got[v["messageId"]] = "reject:" + v["reason"]
    assert got == expect


def test_the_issue_s_real_bodies_are_stored_with_their_defects_and_rejected_under_strict():
    """What an adopter's apps send (suffixed versions, ports on ips, nulls
    from web clients, a numeric user id): each a login, stored by default
    with the defect that names what was wrong; under strict, a rejection."""
    base = {"user_id": "u-1", "app_version": "2.3.0", "device_type": "ios", "ip": "10.0.0.1", "locale": None,
            "device_id": "593-47-5928"}  # fmt: skip
    cases = [("app_version", "2.3.0-beta1", ["app_version.suffix"]), ("app_version", "2.3.0 (4512)", ["app_version.suffix"]),
             ("app_version", "v2.3.0", ["app_version.prefix"]), ("app_version", "2.3.0.4512", ["app_version.fourth_part"]),
             ("app_version", "10.0.1000", ["app_version.out_of_range"]), ("device_id", None, ["device_id.missing"]),
             ("ip", "", ["ip.empty"]), ("ip", "unknown", ["ip.unparseable"]), ("ip", "10.0.0.1:443", ["ip.port"]),
             ("user_id", 12345, ["user_id.integer"])]  # fmt: skip
    bodies = [json.dumps({**base, field: value}) for field, value, _ in cases]
    for verdict, (_, _, defects) in zip(verdicts(bodies), cases):
        assert verdict == {"line": verdict["line"], "valid": True, "defects": defects}, verdict
    assert not any(v["valid"] for v in verdicts(bodies, "--contract", "strict"))


VERSION_TEXTS = [("2.3.0-beta.2", ["app_version.suffix"]), ("v1.2.3", ["app_version.prefix"]),
                 ("1.0.0-rc1", ["app_version.suffix"]), ("2.3.0+20240101", ["app_version.suffix"]),
                 ("1.0.0-SNAPSHOT", ["app_version.suffix"]), ("2.3.0 (4512)", ["app_version.suffix"]), ("2.3.0", []),
                 *[(v, ["app_version.suffix", "app_version.text_withheld"]) for v in (
                     "2.3.0-ip199.172.111.135", "2.3.0-d593-47-5928", "2.3.0+ssn593-47-5928", "1.0.0-alice.example.com")],
                 ("203.0.113.77", ["app_version.unparsed"])]  # fmt: skip


def test_a_version_text_is_stored_only_as_releases_write_it():
    """Issue 98, finding 4: an address, an SSN or a host name after a
    version is no release's text: the integer is kept, the text withheld
    (defect app_version.text_withheld); what releases write (a closed list
    of pre-release words with digits, numeric build metadata) is stored.
    validate, the function's parser, and the lenient schema's
    $defs.app_version_text agree on each."""
    kept = Draft202012Validator(json.loads(run("schema").stdout)["$defs"]["app_version_text"])
    base = {"user_id": "u-1", "device_type": "ios", "ip": "10.0.0.1", "locale": None, "device_id": "d"}
    bodies = [json.dumps({**base, "app_version": v}) for v, _ in VERSION_TEXTS]
    for verdict, (version, defects) in zip(verdicts(bodies), VERSION_TEXTS):
        assert verdict.get("defects", []) == defects, (version, verdict)
        assert kept.is_valid(version) == (not {"app_version.text_withheld", "app_version.unparsed"} & set(defects)), version
