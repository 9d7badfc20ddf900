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
    assert root["Parameters"]["ReleaseUrl"]["Default"] == "https://example.com/v9.9.9/"
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
    nested_text = (written / templates.stack_name(VERSION)).read_text()
    assert "AWS::StackName" not in nested_text
    nested = yaml_parse(nested_text)
    for name in templates.FUNCTIONS:
        assert nested["Resources"][name]["Properties"]["CodeUri"] == {"Bucket": {"Ref": "ReleaseBucket"}, "Key": {"Ref": "ReleaseCodeKey"}}
    assert "RootStackName" in json.dumps(nested["Resources"]["SetupFunction"])
    source = (ROOT / "template.yaml").read_text()
    assert source.count("AWS::StackName") == nested_text.count("RootStackName") - 1  # and its parameter


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


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="stack-bucket")
        yield client


def ask(peer: str, kind: str, files: list[dict], physical: str | None = None) -> dict:
    copier = load("release_files", ROOT / "release" / "release_files.py")
    event = {"RequestType": kind, "ResponseURL": f"{peer}/answer", "StackId": "arn:stack", "RequestId": "r1",
             "LogicalResourceId": "ReleaseFiles",
             "ResourceProperties": {"Bucket": "stack-bucket", "BaseUrl": f"{peer}/v9.9.9", "Files": files}}  # fmt: skip
    if physical:
        event["PhysicalResourceId"] = physical
    copier.handler(event, None)
    assert len(Peer.ANSWERS) == 1, Peer.ANSWERS
    return Peer.ANSWERS.pop()


def keys(s3) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="stack-bucket").get("Contents", []))


def test_the_copier_puts_each_file_whose_digest_is_pinned_and_delete_removes_them(peer, s3):
    Peer.FILES = {"/v9.9.9/code.zip": b"the zip", "/v9.9.9/stack.yaml": b"Resources: {}"}
    files = [{"Role": "Code", "Name": "code.zip", "Sha256": hashlib.sha256(b"the zip").hexdigest()},
             {"Role": "Template", "Name": "stack.yaml", "Sha256": hashlib.sha256(b"Resources: {}").hexdigest()}]  # fmt: skip
    answer = ask(peer, "Create", files)
    assert answer["Status"] == "SUCCESS", answer
    assert keys(s3) == sorted(answer["Data"].values())
    assert s3.get_object(Bucket="stack-bucket", Key=answer["Data"]["Code"])["Body"].read() == b"the zip"
    # Another release is another prefix: the old one stays until its Delete.
    Peer.FILES["/v9.9.9/code.zip"] = b"the next zip"
    moved = [{**files[0], "Sha256": hashlib.sha256(b"the next zip").hexdigest()}, files[1]]
    updated = ask(peer, "Update", moved, physical=answer["PhysicalResourceId"])
    assert updated["Status"] == "SUCCESS" and updated["PhysicalResourceId"] != answer["PhysicalResourceId"]
    assert len(keys(s3)) == 4
    assert ask(peer, "Delete", files, physical=answer["PhysicalResourceId"])["Status"] == "SUCCESS"
    assert keys(s3) == sorted(updated["Data"].values())
    assert ask(peer, "Delete", moved, physical=updated["PhysicalResourceId"])["Status"] == "SUCCESS"
    assert keys(s3) == []


def test_a_file_whose_bytes_differ_from_the_pinned_digest_is_refused_and_nothing_is_put(peer, s3):
    Peer.FILES = {"/v9.9.9/code.zip": b"a zip someone swapped"}
    pinned = hashlib.sha256(b"the zip").hexdigest()
    answer = ask(peer, "Create", [{"Role": "Code", "Name": "code.zip", "Sha256": pinned}])
    assert answer["Status"] == "FAILED"
    reason = answer["Reason"]
    assert pinned in reason and hashlib.sha256(b"a zip someone swapped").hexdigest() in reason, reason
    assert "not the file of the release" in reason and "ReleaseUrl" in reason, reason
    assert keys(s3) == []
    # Its rollback's Delete answers, and leaves the bucket empty for the stack's delete.
    assert ask(peer, "Delete", [{"Role": "Code", "Name": "code.zip", "Sha256": pinned}],
               physical=answer["PhysicalResourceId"])["Status"] == "SUCCESS"  # fmt: skip


def test_a_file_the_url_does_not_serve_is_refused_naming_the_url_and_the_parameter(peer, s3):
    answer = ask(peer, "Create", [{"Role": "Code", "Name": "code.zip", "Sha256": "0" * 64}])
    assert answer["Status"] == "FAILED"
    assert f"{peer}/v9.9.9/code.zip answered HTTP 404" in answer["Reason"] and "ReleaseUrl" in answer["Reason"]
