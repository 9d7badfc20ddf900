"""The release's one file (issue 95): release/templates.py's template.yaml,
which fits CloudFormation's inline limit and deploys template.yaml's stack
as a nested stack, and its copier (release/release_files.py), run against
moto's S3 with a local HTTP server standing in for the release's download
URL and for CloudFormation's response URL. The whole path, in LocalStack,
is tests/test_dist.py's."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from samcli.yamlhelper import yaml_parse

ROOT = Path(__file__).resolve().parent.parent
VERSION = "9.9.9"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


templates = load("release_templates", ROOT / "release" / "templates.py")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    for cpu in templates.CPUS:
        (out / templates.zip_name(VERSION, cpu)).write_bytes(f"zip for {cpu}".encode())
    templates.main([str(out), VERSION, "https://example.com/v9.9.9/"])
    return out


def test_the_release_template_goes_inline_and_carries_every_parameter_and_output_to_the_nested_stack(written):
    source = yaml_parse((ROOT / "template.yaml").read_text())
    text = (written / "template.yaml").read_bytes()
    assert len(text) <= templates.INLINE_LIMIT, len(text)
    root = yaml_parse(text.decode())
    assert set(root["Parameters"]) == set(source["Parameters"]) | {"ReleaseUrl"}
    # Empty by default, so an update with the next release's template (the
    # AWS CLI keeps a parameter's previous value) fetches that release's files.
    assert root["Parameters"]["ReleaseUrl"]["Default"] == ""
    env = root["Resources"]["ReleaseCopier"]["Properties"]["Environment"]["Variables"]
    assert env["RELEASE_URL"] == {"Fn::If": ["ReleaseFromMirror", {"Ref": "ReleaseUrl"}, "https://example.com/v9.9.9/"]}
    app = root["Resources"]["App"]["Properties"]["Parameters"]
    assert set(app) == set(source["Parameters"]) | set(templates.NESTED_ONLY)
    assert set(root["Outputs"]) == set(source["Outputs"])
    for name, output in source["Outputs"].items():
        assert root["Outputs"][name].get("Condition") == output.get("Condition")
        assert root["Outputs"][name]["Value"] == {"Fn::GetAtt": ["App", f"Outputs.{name}"]}
    # The quick start's group is the same first group.
    groups = lambda t: t["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]  # noqa: E731
    assert groups(root)[0] == groups(source)[0]
    # Each file pinned by its digest, the CPU's zip by the Architecture.
    files = root["Resources"]["ReleaseFiles"]["Properties"]["Files"]
    digest = lambda name: hashlib.sha256((written / name).read_bytes()).hexdigest()  # noqa: E731
    code = files[0]
    assert code["Name"] == {"Fn::If": ["ReleaseIsArm", templates.zip_name(VERSION, "arm64"), templates.zip_name(VERSION, "x86_64")]}
    assert code["Sha256"] == {"Fn::If": ["ReleaseIsArm", digest(templates.zip_name(VERSION, "arm64")),
                                         digest(templates.zip_name(VERSION, "x86_64"))]}  # fmt: skip
    assert files[1] == {"Role": "Template", "Name": templates.stack_name(VERSION),
                        "Sha256": digest(templates.stack_name(VERSION))}  # fmt: skip
    assert len(root["Resources"]["ReleaseCopier"]["Properties"]["Code"]["ZipFile"]) < 4096


def test_the_nested_template_names_everything_after_the_root_stack_and_runs_the_copied_zip(written):
    nested = yaml_parse((written / templates.stack_name(VERSION)).read_text())
    for name in templates.FUNCTIONS:
        assert nested["Resources"][name]["Properties"]["CodeUri"] == {"Bucket": {"Ref": "ReleaseBucket"}, "Key": {"Ref": "ReleaseCodeKey"}}
    # Every use of the stack's name is the root's (RootStackName), or the
    # stack's own when it is deployed alone (RootStackName empty).
    text = json.dumps(nested)
    named_after = json.dumps(templates.NAMED_AFTER)
    source = json.dumps(yaml_parse((ROOT / "template.yaml").read_text()))
    assert text.count(named_after) == source.count("AWS::StackName") > 0
    assert text.replace(named_after, "").count("AWS::StackName") == 0
    assert "${NamedAfter}" in text and "${AWS::StackName}" not in text
    root_name = nested["Parameters"]["RootStackName"]
    assert root_name["Default"] == "" and root_name["AllowedPattern"] == "^$|^[A-Za-z][A-Za-z0-9-]{0,127}$"


class Peer(BaseHTTPRequestHandler):
    """The release's download URL (GET: FILES) and CloudFormation's
    response URL (PUT: kept in ANSWERS)."""

    FILES: dict[str, bytes] = {}
    ANSWERS: list[dict] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.FILES.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_PUT(self):
        self.ANSWERS.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def peer():
    Peer.FILES, Peer.ANSWERS = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


STACK = "arn:aws:cloudformation:us-east-1:123456789012:stack/app/1"


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("STACK_ID", STACK)
    monkeypatch.setenv("BUCKET", "stack-bucket")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="stack-bucket")
        yield client


class Copier:
    """release_files.py with its plan in its environment, as the template
    sets it, and the stack's status as CloudFormation would answer it."""

    def __init__(self, peer: str, monkeypatch, files: list[dict], status: str = "UPDATE_COMPLETE") -> None:
        self.peer, self.monkeypatch = peer, monkeypatch
        self.module = load("release_files", ROOT / "release" / "release_files.py")
        real = self.module.boto3.client
        stacks = type("Cfn", (), {"describe_stacks": lambda _, StackName: {"Stacks": [{"StackStatus": self.status}]}})()
        monkeypatch.setattr(self.module.boto3, "client", lambda name: stacks if name == "cloudformation" else real(name))
        self.plan(files, status)

    def plan(self, files: list[dict], status: str = "UPDATE_COMPLETE") -> None:
        self.status = status
        self.monkeypatch.setenv("RELEASE_URL", f"{self.peer}/v9.9.9")
        self.monkeypatch.setenv("FILES", json.dumps(files))

    def ask(self, kind: str, physical: str | None = None, response: str | None = None, **event) -> dict | None:
        """A request as CloudFormation sends it: the template's properties
        are the environment's plan (`ResourceProperties=` for others)."""
        request = {"RequestType": kind, "ResponseURL": response or f"{self.peer}/{STACK}|ReleaseFiles|r1",
                   "StackId": STACK, "RequestId": "r1", "LogicalResourceId": "ReleaseFiles",
                   "ResourceProperties": {"Files": json.loads(os.environ["FILES"])}, **event}  # fmt: skip
        if physical:
            request["PhysicalResourceId"] = physical
        self.module.handler(request, None)
        assert len(Peer.ANSWERS) <= 1, Peer.ANSWERS
        return Peer.ANSWERS.pop() if Peer.ANSWERS else None


@pytest.fixture
def emulated(monkeypatch, peer):
    """The response URL on the emulator's origin (the peer), as LocalStack's
    is; S3 stays moto's (the SDK takes AWS_ENDPOINT_URL_S3 first)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", peer)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.us-east-1.amazonaws.com")
    return peer


def keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="stack-bucket").get("Contents", []))


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_the_copier_puts_each_file_whose_digest_is_pinned_and_removes_a_copy_the_stack_no_longer_uses(s3, emulated, monkeypatch):
    Peer.FILES = {"/v9.9.9/code.zip": b"the zip", "/v9.9.9/stack.yaml": b"Resources: {}"}
    files = [{"Role": "Code", "Name": "code.zip", "Sha256": digest(b"the zip")},
             {"Role": "Template", "Name": "stack.yaml", "Sha256": digest(b"Resources: {}")}]  # fmt: skip
    copier = Copier(emulated, monkeypatch, files)
    answer = copier.ask("Create")
    assert answer["Status"] == "SUCCESS", answer
    assert keys(s3) == sorted(answer["Data"].values())
    assert s3.get_object(Bucket="stack-bucket", Key=answer["Data"]["Code"])["Body"].read() == b"the zip"
    # The next release (CloudFormation updates the function's environment
    # first): another prefix, the old one kept until its Delete.
    Peer.FILES["/v9.9.9/code.zip"] = b"the next zip"
    copier.plan([{**files[0], "Sha256": digest(b"the next zip")}, files[1]])
    updated = copier.ask("Update", physical=answer["PhysicalResourceId"])
    assert updated["Status"] == "SUCCESS" and updated["PhysicalResourceId"] != answer["PhysicalResourceId"]
    assert len(keys(s3)) == 4
    # A Delete outside CloudFormation's phases of one (anyone may invoke
    # the function): refused, the old copy kept for a rollback.
    refused = copier.ask("Delete", physical=answer["PhysicalResourceId"])
    assert refused["Status"] == "FAILED" and "an update's cleanup only, not UPDATE_COMPLETE" in refused["Reason"], refused
    assert len(keys(s3)) == 4
    # The update's cleanup: the old copy goes, never the one in use.
    copier.status = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
    assert copier.ask("Delete", physical=answer["PhysicalResourceId"])["Status"] == "SUCCESS"
    assert keys(s3) == sorted(updated["Data"].values())
    assert copier.ask("Delete", physical=updated["PhysicalResourceId"])["Status"] == "FAILED"
    assert keys(s3) == sorted(updated["Data"].values())
    # The stack's delete empties the bucket, whatever is in it (a copy
    # an update that failed half-way left).
    s3.put_object(Bucket="stack-bucket", Key="0123456789abcdef/code.zip", Body=b"half")
    copier.status = "DELETE_IN_PROGRESS"
    assert copier.ask("Delete", physical=updated["PhysicalResourceId"])["Status"] == "SUCCESS"
    assert keys(s3) == []


def test_a_rollback_sent_before_the_environment_is_names_the_earlier_copy_and_fetches_nothing(s3, emulated, monkeypatch):
    Peer.FILES = {"/v9.9.9/code.zip": b"the zip"}
    before = [{"Role": "Code", "Name": "code.zip", "Sha256": digest(b"the zip")}]
    copier = Copier(emulated, monkeypatch, before)
    first = copier.ask("Create")
    copier.plan([{"Role": "Code", "Name": "code.zip", "Sha256": digest(b"the next zip")}])  # its URL serves no such file
    Peer.FILES = {}
    back = copier.ask("Update", physical="whatever-the-failed-update-said", ResourceProperties={"Files": before})
    assert back == {**first, "RequestId": back["RequestId"]}, (back, first)


def test_what_a_request_says_decides_nothing(s3, emulated, monkeypatch):
    """A forged request (anyone allowed to invoke the function): its
    properties name another URL and files, ignored; another stack's or
    resource's is refused; an answer URL that is not CloudFormation's gets
    no answer at all."""
    Peer.FILES = {"/v9.9.9/code.zip": b"the zip", "/evil/code.zip": b"evil"}
    copier = Copier(emulated, monkeypatch, [{"Role": "Code", "Name": "code.zip", "Sha256": digest(b"the zip")}])
    forged = {"Bucket": "another", "BaseUrl": f"{emulated}/evil", "Files": [{"Role": "Code", "Name": "code.zip", "Sha256": digest(b"evil")}]}
    copier.ask("Create", ResourceProperties=forged)
    assert keys(s3) == [], "nothing fetched for files the environment does not name"
    answer = copier.ask("Create", ResourceProperties={**forged, "Files": json.loads(os.environ["FILES"])})
    assert answer["Status"] == "SUCCESS"
    assert s3.get_object(Bucket="stack-bucket", Key=answer["Data"]["Code"])["Body"].read() == b"the zip"
    other = copier.ask("Create", StackId="arn:aws:cloudformation:us-east-1:123456789012:stack/other/2")
    assert other["Status"] == "FAILED" and "its own stack's ReleaseFiles only" in other["Reason"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert copier.ask("Delete", physical=answer["PhysicalResourceId"], response=f"{emulated}/x") is None
    assert keys(s3) == [answer["Data"]["Code"]], "nothing done for an answer nobody checks"
    module = copier.module
    ok = f"https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/{STACK.replace('/', '%2F')}%7CReleaseFiles%7Cr1?X-Amz-Signature=1"
    assert module.cloudformations(ok, STACK)
    assert not module.cloudformations(ok.replace("stack%2Fapp", "stack%2Fother"), STACK)
    assert not module.cloudformations(ok.replace("https", "http"), STACK)
    assert not module.cloudformations(f"https://evil.example/{STACK}|ReleaseFiles|r1", STACK)


def test_a_file_whose_bytes_differ_from_the_pinned_digest_is_refused_and_nothing_is_put(s3, emulated, monkeypatch):
    Peer.FILES = {"/v9.9.9/code.zip": b"a zip someone swapped"}
    pinned = digest(b"the zip")
    copier = Copier(emulated, monkeypatch, [{"Role": "Code", "Name": "code.zip", "Sha256": pinned}], status="CREATE_IN_PROGRESS")
    answer = copier.ask("Create")
    assert answer["Status"] == "FAILED"
    reason = answer["Reason"]
    assert pinned in reason and digest(b"a zip someone swapped") in reason, reason
    assert "not the file of the release" in reason and "ReleaseUrl" in reason, reason
    assert keys(s3) == []
    # Its rollback's Delete answers, and leaves the bucket empty for the stack's delete.
    copier.status = "ROLLBACK_IN_PROGRESS"
    assert copier.ask("Delete", physical=answer["PhysicalResourceId"])["Status"] == "SUCCESS"


def test_a_template_built_without_its_release_url_asks_for_one(s3, emulated, monkeypatch):
    copier = Copier(emulated, monkeypatch, [{"Role": "Code", "Name": "code.zip", "Sha256": "0" * 64}])
    monkeypatch.setenv("RELEASE_URL", "")
    answer = copier.ask("Create")
    assert answer["Status"] == "FAILED" and "give ReleaseUrl=" in answer["Reason"], answer


def test_a_file_the_url_does_not_serve_is_refused_naming_the_url_and_the_parameter(s3, emulated, monkeypatch):
    copier = Copier(emulated, monkeypatch, [{"Role": "Code", "Name": "code.zip", "Sha256": "0" * 64}])
    answer = copier.ask("Create")
    assert answer["Status"] == "FAILED"
    assert f"{emulated}/v9.9.9/code.zip answered HTTP 404" in answer["Reason"] and "ReleaseUrl" in answer["Reason"]
