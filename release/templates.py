#!/usr/bin/env python3
"""A release's templates: one file to deploy, with the AWS CLI alone.

    python3 release/templates.py OUT_DIR VERSION [RELEASE_URL]

writes into OUT_DIR, beside the zips:

* template.yaml, what an adopter deploys (`aws cloudformation deploy
  --template-file template.yaml`), small enough to go inline (CloudFormation
  takes 51,200 bytes without a bucket). It holds template.yaml's parameters,
  rules and outputs, and four resources: a bucket of the stack's own, a
  copier function (release/release_files.py, inline, outside any VPC) that
  downloads the CPU's zip and the stack template from RELEASE_URL into it,
  refusing a file whose SHA-256 is not the one pinned here, and the stack
  template as a nested stack over that copy.
* login-etl-VERSION-stack.yaml, template.yaml itself, its functions' code
  the copied zip and AWS::StackName the root stack's name (what it names
  secrets, roles and tags after), so a stack deployed from a release and
  one deployed from source name the same things.

RELEASE_URL (default the RELEASE_URL environment variable, else the
GitHub release of `git remote get-url origin`) is where the release's files
are downloaded from; the ReleaseUrl parameter (empty by default) names a
mirror instead. Neither: a deploy is refused, naming ReleaseUrl.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from samcli.yamlhelper import CfnDumper, string_representer, yaml_dump, yaml_parse  # the SAM CLI's CloudFormation YAML

yaml_dump({})  # registers the SAM CLI's representers on CfnDumper, which RootDumper copies


class RootDumper(CfnDumper):
    """The SAM CLI's dumper, with the inline code as a block (`|`): read as
    written, and shorter than a quoted scalar."""


RootDumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|") if "\n" in v else string_representer(d, v)
)

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("LoginEtlFunction", "MaintenanceFunction", "SetupFunction")
CPUS = ("x86_64", "arm64")
# CloudFormation's limit on a template sent inline (TemplateBody).
INLINE_LIMIT = 51_200
# The nested stack's own parameters, given by the root.
NESTED_ONLY = {
    "RootStackName": "The stack that deploys this one, what secrets, roles and tags are named after (empty: this one).",
    "ReleaseBucket": "The bucket holding the release's copied zip.",
    "ReleaseCodeKey": "The zip's key in ReleaseBucket.",
}


def zip_name(version: str, cpu: str) -> str:
    return f"login-etl-lambda-{version}-{cpu}.zip"


def stack_name(version: str) -> str:
    return f"login-etl-{version}-stack.yaml"


def github_release(version: str) -> str:
    """The download URL of tag v`version` of the origin, if it is on GitHub."""
    origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    found = re.match(r"^(?:https://github\.com/|git@github\.com:)([\w.-]+/[\w.-]+?)(?:\.git)?/?$", origin)
    return f"https://github.com/{found.group(1)}/releases/download/v{version}/" if found else ""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The name everything is named after: the root's (RootStackName), or the
# stack's own when it is deployed alone (docs/upgrade.md).
NAMED_AFTER = {"Fn::If": ["RootStackNameGiven", {"Ref": "RootStackName"}, {"Ref": "AWS::StackName"}]}


def renamed_stack(node):
    """`node` with AWS::StackName read from NAMED_AFTER."""
    if isinstance(node, dict):
        if node == {"Ref": "AWS::StackName"}:
            return NAMED_AFTER
        if set(node) == {"Fn::Sub"} and "${AWS::StackName}" in json.dumps(node):
            text, variables = (node["Fn::Sub"], {}) if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"]
            variables = {k: renamed_stack(v) for k, v in variables.items()}
            return {"Fn::Sub": [text.replace("${AWS::StackName}", "${NamedAfter}"), {**variables, "NamedAfter": NAMED_AFTER}]}
        return {k: renamed_stack(v) for k, v in node.items()}
    if isinstance(node, list):
        return [renamed_stack(v) for v in node]
    return node


def stack_template(source: dict) -> dict:
    template = renamed_stack(yaml_parse(yaml_dump(source)))
    for name in FUNCTIONS:
        function = template["Resources"][name]
        if function["Properties"].get("CodeUri") != ".":
            raise SystemExit(f"template.yaml: {name}'s CodeUri is no longer '.'; update release/templates.py")
        function.pop("Metadata", None)
        function["Properties"]["CodeUri"] = {"Bucket": {"Ref": "ReleaseBucket"}, "Key": {"Ref": "ReleaseCodeKey"}}
    for name, description in NESTED_ONLY.items():
        template["Parameters"][name] = {"Type": "String", "Description": description}
    template["Parameters"]["RootStackName"] |= {"Default": "", "AllowedPattern": "^$|^[A-Za-z][A-Za-z0-9-]{0,127}$"}
    template["Conditions"]["RootStackNameGiven"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": "RootStackName"}, ""]}]}
    return template


def conditions_needed(source: dict, names: set[str]) -> dict:
    """The source's conditions named, and those they use, in its order."""
    wanted, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            text = json.dumps(source["Conditions"][name])
            todo += [c for c in source["Conditions"] if f'"Condition": "{c}"' in text]
    return {k: v for k, v in source["Conditions"].items() if k in wanted}


def copier_source() -> str:
    """release_files.py without its docstring and comments, each level of
    indentation one space: CloudFormation takes 4,096 characters inline."""
    lines = (ROOT / "release" / "release_files.py").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("import "))
    kept = []
    for line in lines[start:]:
        if line.strip().startswith("#") or not line.strip():
            continue
        body = line.lstrip(" ")
        if body.startswith("import ") and kept and kept[-1].startswith("import "):
            kept[-1] += ", " + body.removeprefix("import ")  # one import line
            continue
        kept.append(" " * ((len(line) - len(body)) // 4) + body)
    source = "\n".join(kept) + "\n"
    if len(source) > 4096:
        raise SystemExit(f"release/release_files.py is {len(source)} characters inlined, over CloudFormation's 4,096")
    return source


def root_template(source: dict, version: str, digests: dict[str, str], release_url: str) -> dict:
    parameters = yaml_parse(yaml_dump(source["Parameters"]))
    # Empty: this release's own URL, built in. Not the default itself:
    # `aws cloudformation deploy` keeps a parameter's previous value, so an
    # update with the next release's template would fetch the old release.
    parameters["ReleaseUrl"] = {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^$|^https?://.+",
        "ConstraintDescription": "must be empty or the URL of a folder holding the release's files",
        "Description": f"Empty: {release_url or 'none built in (give one)'}. Else a folder holding the release's files "
        "(a mirror; each file's SHA-256 is pinned).",
    }
    metadata = yaml_parse(yaml_dump(source["Metadata"]))
    groups = metadata["AWS::CloudFormation::Interface"]["ParameterGroups"]
    groups.append({"Label": {"default": "Release"}, "Parameters": ["ReleaseUrl"]})
    outputs = {}
    for name, output in source["Outputs"].items():
        outputs[name] = {"Description": output.get("Description", ""), "Value": {"Fn::GetAtt": ["App", f"Outputs.{name}"]}}
        if "Condition" in output:
            outputs[name]["Condition"] = output["Condition"]
    conditions = conditions_needed(source, {o["Condition"] for o in source["Outputs"].values() if "Condition" in o})
    conditions["ReleaseIsArm"] = {"Fn::Equals": [{"Ref": "Architecture"}, "arm64"]}
    conditions["ReleaseFromMirror"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": "ReleaseUrl"}, ""]}]}
    conditions["ReleaseHasBoundary"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": "PermissionsBoundaryArn"}, ""]}]}

    def given(name: str, spec: dict):
        if spec["Type"] == "CommaDelimitedList":
            return {"Fn::Join": [",", {"Ref": name}]}
        return {"Ref": name}

    nested = {name: given(name, spec) for name, spec in source["Parameters"].items()}
    nested |= {
        "RootStackName": {"Ref": "AWS::StackName"},
        "ReleaseBucket": {"Ref": "ReleaseBucket"},
        "ReleaseCodeKey": {"Fn::GetAtt": ["ReleaseFiles", "Code"]},
    }
    per_cpu = lambda key: {"Fn::If": ["ReleaseIsArm", key("arm64"), key("x86_64")]}  # noqa: E731
    code = {"Name": per_cpu(lambda cpu: zip_name(version, cpu)), "Sha256": per_cpu(lambda cpu: digests[zip_name(version, cpu)])}
    stack = {"Name": stack_name(version), "Sha256": digests[stack_name(version)]}
    # The copier's plan, in its environment: what a request says decides nothing.
    files_json = {"Fn::Sub": [json.dumps([{"Role": "Code", "Name": "${Zip}", "Sha256": "${ZipSha256}"},
                                          {"Role": "Template", **stack}], separators=(",", ":")),
                              {"Zip": code["Name"], "ZipSha256": code["Sha256"]}]}  # fmt: skip
    objects = [{"Fn::GetAtt": ["ReleaseBucket", "Arn"]}, {"Fn::Sub": "${ReleaseBucket.Arn}/*"}]
    resources = {
        "ReleaseBucket": {
            "Type": "AWS::S3::Bucket",
            "Properties": {
                "PublicAccessBlockConfiguration": {k: True for k in (
                    "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")},  # fmt: skip
                "BucketEncryption": {"ServerSideEncryptionConfiguration": [
                    {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},  # fmt: skip
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            },
        },
        # Nobody but the copier writes the copies, and only over TLS.
        "ReleaseBucketPolicy": {
            "Type": "AWS::S3::BucketPolicy",
            "Properties": {
                "Bucket": {"Ref": "ReleaseBucket"},
                "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": objects,
                     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
                    {"Effect": "Deny", "Principal": "*", "Action": ["s3:PutObject", "s3:DeleteObject"], "Resource": objects,
                     "Condition": {"ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["ReleaseCopierRole", "Arn"]}}}}]},  # fmt: skip
            },
        },
        "ReleaseCopierRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},  # fmt: skip
                "PermissionsBoundary": {"Fn::If": ["ReleaseHasBoundary", {"Ref": "PermissionsBoundaryArn"}, {"Ref": "AWS::NoValue"}]},
                "Policies": [{"PolicyName": "release-files", "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
                     "Resource": {"Fn::Sub": "${ReleaseBucket.Arn}/*"}},
                    {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": {"Fn::GetAtt": ["ReleaseBucket", "Arn"]}},
                    # A Delete acts only in the stack's own phases of one.
                    {"Effect": "Allow", "Action": "cloudformation:DescribeStacks", "Resource": {"Ref": "AWS::StackId"}},
                    {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                     "Resource": {"Fn::Sub": "arn:${AWS::Partition}:logs:${AWS::Region}:${AWS::AccountId}:log-group:/aws/lambda/*"}}]}}],  # fmt: skip
            },
        },
        "ReleaseCopier": {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Description": f"Copies login-etl {version}'s zip and stack template into the stack's bucket, checking each SHA-256",
                "Runtime": "python3.12",
                "Handler": "index.handler",
                "Timeout": 300,
                "MemorySize": 512,
                "Role": {"Fn::GetAtt": ["ReleaseCopierRole", "Arn"]},
                "Code": {"ZipFile": copier_source()},
                "Environment": {"Variables": {"STACK_ID": {"Ref": "AWS::StackId"}, "BUCKET": {"Ref": "ReleaseBucket"},
                                              "RELEASE_URL": {"Fn::If": ["ReleaseFromMirror", {"Ref": "ReleaseUrl"}, release_url]},
                                              "FILES": files_json}},  # fmt: skip
            },
        },
        "ReleaseFiles": {
            "Type": "Custom::ReleaseFiles",
            "Properties": {
                "ServiceToken": {"Fn::GetAtt": ["ReleaseCopier", "Arn"]},
                # An answer within 10 minutes, or none (a URL that drips).
                "ServiceTimeout": 600,
                "Bucket": {"Ref": "ReleaseBucket"},
                # The environment's plan again: a change of it is an Update.
                "BaseUrl": {"Fn::If": ["ReleaseFromMirror", {"Ref": "ReleaseUrl"}, release_url]},
                "Files": [{"Role": "Code", **code}, {"Role": "Template", **stack}],
            },
        },
        "App": {
            "Type": "AWS::CloudFormation::Stack",
            "Properties": {
                "TemplateURL": {"Fn::Sub": "https://${ReleaseBucket}.s3.${AWS::Region}.${AWS::URLSuffix}/${ReleaseFiles.Template}"},
                "Parameters": nested,
            },
        },
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"login-etl {version}: {source['Description'].strip()} Deployed from one file: its code and "
        "resources are fetched from the release, each file checked against the SHA-256 pinned here.",
        "Metadata": metadata,
        "Parameters": parameters,
        "Rules": source.get("Rules", {}),
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": outputs,
    }


def main(args: list[str]) -> None:
    out, version = Path(args[0]), args[1]
    release_url = args[2] if len(args) > 2 else os.environ.get("RELEASE_URL") or github_release(version)
    source = yaml_parse((ROOT / "template.yaml").read_text())
    for cpu in CPUS:
        if not (out / zip_name(version, cpu)).is_file():
            raise SystemExit(f"{out / zip_name(version, cpu)} is missing: the templates are written after the zips")
    (out / stack_name(version)).write_text(yaml_dump(stack_template(source)))
    digests = {name: sha256(out / name) for name in [*(zip_name(version, c) for c in CPUS), stack_name(version)]}
    # Leaf maps and lists in flow style ({Ref: X}, [a, b]): the inline limit.
    root = yaml.dump(root_template(source, version, digests, release_url), default_flow_style=None, Dumper=RootDumper, width=120)
    if len(root.encode()) > INLINE_LIMIT:
        raise SystemExit(f"template.yaml is {len(root.encode())} bytes, over CloudFormation's inline {INLINE_LIMIT}: "
                         "shorten what it carries (descriptions belong in the docs)")  # fmt: skip
    (out / "template.yaml").write_text(root)


if __name__ == "__main__":
    main(sys.argv[1:])
