"""release/deployer-policy.json: the least IAM policy that deploys, updates
and deletes the stack (issue 96). Read from what CloudFormation is given:
the template's resource types as the SAM transform leaves them, the
properties that need more than their type's actions, and the AWS CLI
calls of the release's deploy path (release/deploy.sh), over both of
the release's templates: the one file (release/templates.py's root: its
bucket, copier and nested stack) and the nested stack. A resource type
added to the template without its actions here, or an action the policy
file lacks, fails; so does an action the policy grants that nothing
needs."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import pathlib
import re
import sys

from samcli.yamlhelper import yaml_parse
from test_template import ROOT, transformed

POLICY = ROOT / "release" / "deployer-policy.json"

# What CloudFormation calls, as the deployer, to create, update and delete
# each resource type (the resource types' own schemas' handlers).
BY_TYPE = {
    "AWS::CloudWatch::Alarm": ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
    "AWS::CloudWatch::Dashboard": ["cloudwatch:PutDashboard", "cloudwatch:GetDashboard", "cloudwatch:DeleteDashboards"],
    "AWS::EC2::VPCEndpoint": ["ec2:CreateVpcEndpoint", "ec2:DescribeVpcEndpoints", "ec2:ModifyVpcEndpoint",
                              "ec2:DeleteVpcEndpoints", "ec2:CreateTags"],
    "AWS::Events::Rule": ["events:PutRule", "events:DescribeRule", "events:DeleteRule", "events:PutTargets",
                          "events:RemoveTargets", "events:ListTargetsByRule"],
    "AWS::IAM::Role": ["iam:CreateRole", "iam:GetRole", "iam:DeleteRole", "iam:UpdateAssumeRolePolicy",
                       "iam:UpdateRoleDescription", "iam:ListAttachedRolePolicies", "iam:ListRolePolicies",
                       "iam:TagRole", "iam:UntagRole"],
    # No kms:ScheduleKeyDeletion: every key is retained (DeletionPolicy:
    # Retain, held below), so no delete schedules one.
    "AWS::KMS::Key": ["kms:CreateKey", "kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy",
                      "kms:ListResourceTags", "kms:TagResource", "kms:UntagResource", "kms:UpdateKeyDescription",
                      "kms:GetKeyRotationStatus"],
    "AWS::Lambda::EventSourceMapping": ["lambda:CreateEventSourceMapping", "lambda:GetEventSourceMapping",
                                        "lambda:UpdateEventSourceMapping", "lambda:DeleteEventSourceMapping"],
    "AWS::Lambda::Function": ["lambda:CreateFunction", "lambda:GetFunction", "lambda:GetFunctionConfiguration",
                              "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
                              "lambda:DeleteFunction", "lambda:PutFunctionConcurrency",
                              "lambda:DeleteFunctionConcurrency", "iam:PassRole"],
    "AWS::Lambda::Permission": ["lambda:AddPermission", "lambda:RemovePermission"],
    "AWS::Logs::LogGroup": ["logs:CreateLogGroup", "logs:DescribeLogGroups", "logs:DeleteLogGroup",
                            "logs:ListTagsForResource", "logs:TagResource", "logs:UntagResource"],
    "AWS::SNS::Topic": ["sns:CreateTopic", "sns:GetTopicAttributes", "sns:SetTopicAttributes", "sns:DeleteTopic",
                        "sns:TagResource", "sns:UntagResource", "sns:ListTagsForResource"],
    "AWS::SNS::TopicPolicy": ["sns:SetTopicAttributes", "sns:GetTopicAttributes"],
    "AWS::SQS::Queue": ["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes",
                        "sqs:DeleteQueue", "sqs:ListQueueTags", "sqs:TagQueue", "sqs:UntagQueue"],
    "AWS::SQS::QueuePolicy": ["sqs:SetQueueAttributes", "sqs:GetQueueAttributes"],
    "AWS::SecretsManager::ResourcePolicy": ["secretsmanager:PutResourcePolicy", "secretsmanager:GetResourcePolicy",
                                            "secretsmanager:DeleteResourcePolicy"],
    "AWS::SecretsManager::Secret": ["secretsmanager:CreateSecret", "secretsmanager:DescribeSecret",
                                    "secretsmanager:UpdateSecret", "secretsmanager:DeleteSecret",
                                    "secretsmanager:TagResource", "secretsmanager:UntagResource"],
    # A custom resource: CloudFormation invokes its ServiceToken as the deployer.
    "Custom::LoginEtlDatabase": ["lambda:InvokeFunction"],
    "Custom::ReleaseFiles": ["lambda:InvokeFunction"],
    "AWS::S3::BucketPolicy": ["s3:PutBucketPolicy", "s3:GetBucketPolicy", "s3:DeleteBucketPolicy"],
    "AWS::S3::Bucket": ["s3:CreateBucket", "s3:DeleteBucket", "s3:ListBucket", "s3:GetBucketTagging", "s3:PutBucketTagging"],
    # The nested stack, whose template CloudFormation reads from the
    # stack's bucket as the deployer.
    "AWS::CloudFormation::Stack": ["cloudformation:CreateStack", "cloudformation:UpdateStack",
                                   "cloudformation:DeleteStack", "cloudformation:DescribeStacks", "s3:GetObject"],
}

# Properties whose handling needs more than their type's actions.
BY_PROPERTY = {
    ("AWS::EC2::VPCEndpoint", "SecurityGroupIds"): ["ec2:DescribeSecurityGroups"],
    ("AWS::EC2::VPCEndpoint", "SubnetIds"): ["ec2:DescribeSubnets", "ec2:DescribeNetworkInterfaces"],
    ("AWS::EC2::VPCEndpoint", "VpcId"): ["ec2:DescribeVpcs"],
    ("AWS::IAM::Role", "Policies"): ["iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy"],
    ("AWS::IAM::Role", "ManagedPolicyArns"): ["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
    ("AWS::S3::Bucket", "PublicAccessBlockConfiguration"): ["s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock"],
    ("AWS::S3::Bucket", "BucketEncryption"): ["s3:PutEncryptionConfiguration", "s3:GetEncryptionConfiguration"],
    ("AWS::S3::Bucket", "OwnershipControls"): ["s3:PutBucketOwnershipControls", "s3:GetBucketOwnershipControls"],
    ("AWS::IAM::Role", "PermissionsBoundary"): ["iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary"],
    ("AWS::KMS::Key", "EnableKeyRotation"): ["kms:EnableKeyRotation", "kms:DisableKeyRotation"],
    ("AWS::Lambda::Function", "Tags"): ["lambda:TagResource", "lambda:UntagResource", "lambda:ListTags"],
    ("AWS::Lambda::Function", "Layers"): ["lambda:GetLayerVersion"],
    # Lambda checks the VPC's subnets and groups as the caller.
    ("AWS::Lambda::Function", "VpcConfig"): ["ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVpcs"],
    ("AWS::Logs::LogGroup", "DataProtectionPolicy"): ["logs:PutDataProtectionPolicy", "logs:GetDataProtectionPolicy",
                                                       "logs:DeleteDataProtectionPolicy"],
    ("AWS::Logs::LogGroup", "RetentionInDays"): ["logs:PutRetentionPolicy", "logs:DeleteRetentionPolicy"],
    ("AWS::SNS::Topic", "Subscription"): ["sns:Subscribe", "sns:Unsubscribe", "sns:ListSubscriptionsByTopic",
                                          "sns:GetSubscriptionAttributes"],
    ("AWS::SecretsManager::Secret", "GenerateSecretString"): ["secretsmanager:GetRandomPassword"],
}

# The stack's own calls, whatever its resources: a change set (the SAM
# transform included), its events, a delete.
STACK = ["cloudformation:CreateChangeSet", "cloudformation:DescribeChangeSet", "cloudformation:ExecuteChangeSet",
         "cloudformation:DeleteChangeSet", "cloudformation:DescribeStacks", "cloudformation:DescribeStackEvents",
         "cloudformation:DescribeStackResource", "cloudformation:DescribeStackResources",
         "cloudformation:ListStackResources", "cloudformation:GetTemplate", "cloudformation:GetTemplateSummary",
         "cloudformation:ValidateTemplate", "cloudformation:DeleteStack"]  # fmt: skip

# AWS CLI commands whose action is not their name in CamelCase, or which
# make several calls (the CLI's own commands), or none.
CLI = {
    ("cloudformation", "deploy"): STACK,  # the template inline: no bucket
    ("configure", "get"): [],  # local
}


def release_root() -> dict:
    """The release's one file, as release/templates.py writes it."""
    spec = importlib.util.spec_from_file_location("release_templates", ROOT / "release" / "templates.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    source = yaml_parse((ROOT / "template.yaml").read_text())
    names = [templates.zip_name("0", c) for c in templates.CPUS] + [templates.stack_name("0")]
    return templates.root_template(source, "0", dict.fromkeys(names, "0" * 64), "https://example.com/")


def _resources():
    """Every resource the release's templates can make (every condition):
    the one file's, and the nested stack's as the SAM transform leaves it."""
    out, _ = transformed()
    return list(release_root()["Resources"].values()) + list(out["Resources"].values())


def deploy_path_calls() -> set[tuple[str, str]]:
    """Each `aws SERVICE COMMAND` release/deploy.sh runs, and the network
    check it runs first (release/preflight.sh)."""
    text = "\n".join((ROOT / "release" / f).read_text() for f in ("deploy.sh", "preflight.sh"))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # What is said (a finding's fix, a hint) is in double quotes: not a call.
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)
    # preflight.sh's q is the AWS CLI with text output.
    calls = set(re.findall(r"\b(?:aws|q) ([a-z0-9]+) ([a-z][a-z-]+)", code))
    # The deploy, whose arguments deploy.sh gathers in an array.
    if "cloudformation deploy" in code:
        calls.add(("cloudformation", "deploy"))
    return calls


def needed() -> dict[str, set[str]]:
    """Each action the stack and its deploy path need, with what needs it."""
    need: dict[str, set[str]] = {}

    def add(actions, why):
        for a in actions:
            need.setdefault(a, set()).add(why)

    add(STACK, "the stack")
    for res in _resources():
        kind = res["Type"]
        assert kind in BY_TYPE, (
            f"the template makes a {kind}, whose actions the deployer policy test does not know: add to BY_TYPE "
            "(tests/test_deployer_policy.py) the actions CloudFormation calls to create, update and delete it, "
            "and to release/deployer-policy.json")  # fmt: skip
        add(BY_TYPE[kind], kind)
        for prop in res.get("Properties", {}):
            add(BY_PROPERTY.get((kind, prop), []), f"{kind}.{prop}")
    for service, command in sorted(deploy_path_calls()):
        if (service, command) in CLI:
            actions = CLI[(service, command)]
        else:
            actions = [f"{service}:{''.join(w.capitalize() for w in command.split('-'))}"]
        add(actions, f"deploy.sh: aws {service} {command}")
    return need


def _statements():
    doc = json.loads(POLICY.read_text())
    assert doc["Version"] == "2012-10-17"
    return doc["Statement"]


def _granted(action: str) -> bool:
    allowed = denied = False
    for st in _statements():
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
            allowed |= st["Effect"] == "Allow"
            denied |= st["Effect"] == "Deny"
    return allowed and not denied


def test_the_deployer_policy_grants_every_action_the_stack_and_its_deploy_path_need():
    missing = {a: sorted(why) for a, why in needed().items() if not _granted(a)}
    assert not missing, f"release/deployer-policy.json lacks (action: what needs it): {missing}"


def test_the_deployer_policy_grants_nothing_else():
    need = needed()
    granted = set()
    for st in _statements():
        assert st["Effect"] == "Allow", st
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for a in actions:
            assert "*" not in a, f"{st['Sid']}: {a} is a wildcard; name each action"
            granted.add(a)
    # IAM's action names are case-insensitive (describe-db-instances is
    # rds:DescribeDBInstances).
    extra = sorted(a for a in granted if a.lower() not in {n.lower() for n in need})
    assert not extra, f"release/deployer-policy.json grants what nothing needs: {extra}"


def test_what_makes_or_changes_a_resource_is_allowed_through_cloudformation_alone():
    """A stolen deployer credential cannot call IAM, Lambda, KMS or Secrets
    Manager itself (a role trusting anyone, a secret's policy opened):
    those actions hold only when CloudFormation makes the call
    (aws:CalledVia); what the deployer calls itself is the stack's own API
    and reads."""
    direct = set()
    for st in _statements():
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        via = st.get("Condition", {}).get("ForAnyValue:StringEquals", {}).get("aws:CalledVia")
        if via == ["cloudformation.amazonaws.com"]:
            continue
        direct |= set(actions)
    for a in direct:
        service, name = a.split(":")
        assert service == "cloudformation" or name.startswith(("Describe", "List", "Get")), a
    # Every key is retained: no delete needs kms:ScheduleKeyDeletion.
    out, _ = transformed()
    keys = [r for r in out["Resources"].values() if r["Type"] == "AWS::KMS::Key"]
    assert keys and all(r.get("DeletionPolicy") == "Retain" for r in keys)


def test_roles_are_passed_to_lambda_alone_and_the_bucket_is_the_stacks_own():
    (passing,) = [st for st in _statements() if "iam:PassRole" in st["Action"]]
    assert passing["Action"] == "iam:PassRole"
    assert passing["Condition"]["StringEquals"] == {"iam:PassedToService": "lambda.amazonaws.com"}
    (bucket,) = [st for st in _statements() if any(str(a).startswith("s3:") for a in st["Action"])]
    # CloudFormation names a bucket <stack>-<logical id, lowercased>-<random>.
    assert "ReleaseBucket" in release_root()["Resources"]
    assert bucket["Resource"] == ["arn:aws:s3:::*-releasebucket-*", "arn:aws:s3:::*-releasebucket-*/*"], bucket["Resource"]
    assert bucket["Condition"]["ForAnyValue:StringEquals"]["aws:CalledVia"] == ["cloudformation.amazonaws.com"]
    # The pattern matches buckets of any account: the deployer's own only.
    assert bucket["Condition"]["StringEquals"] == {"aws:ResourceAccount": "${aws:PrincipalAccount}"}


def test_a_resource_type_without_its_actions_fails(monkeypatch):
    """The test above can fail: a template making a resource type this
    file does not know, and a policy that lacks one action."""
    import test_template

    real = test_template.transformed

    def with_a_bucket(**params):
        out, values = real(**params)
        out["Resources"]["Extra"] = {"Type": "AWS::SSM::Parameter", "Properties": {}}
        return out, values

    monkeypatch.setattr(sys.modules[__name__], "transformed", with_a_bucket)
    try:
        needed()
    except AssertionError as e:
        assert "AWS::SSM::Parameter" in str(e)
    else:
        raise AssertionError("a resource type without its actions passed")
    monkeypatch.setattr(sys.modules[__name__], "transformed", real)
    doc = json.loads(POLICY.read_text())
    for st in doc["Statement"]:
        if isinstance(st["Action"], list) and "logs:PutDataProtectionPolicy" in st["Action"]:
            st["Action"].remove("logs:PutDataProtectionPolicy")
    monkeypatch.setattr(sys.modules[__name__], "_statements", lambda: doc["Statement"])
    assert not _granted("logs:PutDataProtectionPolicy")
    assert "logs:PutDataProtectionPolicy" in needed()


def test_release_md_says_how_to_attach_it():
    text = (ROOT / "docs" / "release.md").read_text()
    assert "deployer-policy.json" in text
    assert "aws iam create-policy" in text and "file://deployer-policy.json" in text
    assert pathlib.Path(POLICY).is_file()
