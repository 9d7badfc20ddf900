"""Asserts the properties of template.yaml that matter and that cfn-lint does
not check (it accepted `Runtime: provided.al2099` and a misspelled
`ReportBatchItemFailure`). Run by `make test` with the venv's pytest."""

import pathlib
import string

import pytest
from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tpl():
    return cfn_yaml.load(str(ROOT / "template.yaml"))


def resources(tpl, kind):
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == kind}


@pytest.fixture(scope="module")
def fn(tpl):
    fns = resources(tpl, "AWS::Serverless::Function")
    assert list(fns) == ["LoginEtlFunction"]
    return fns["LoginEtlFunction"]


def test_function_runtime_architecture_and_build(fn):
    p = fn["Properties"]
    assert p["Runtime"] == "provided.al2023"
    assert p["Architectures"] == ["arm64"]
    assert p["Handler"] == "bootstrap"
    assert fn["Metadata"]["BuildMethod"] == "rust-cargolambda"
    assert fn["Metadata"]["BuildProperties"]["Binary"] == "login-etl"
    assert p["Timeout"] == {"Ref": "FunctionTimeout"}


def test_sqs_event_reports_batch_item_failures(fn, tpl):
    events = fn["Properties"]["Events"]
    assert len(events) == 1
    (event,) = events.values()
    assert event["Type"] == "SQS"
    props = event["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert props["Queue"] == {"Fn::GetAtt": ["LoginQueue", "Arn"]}
    assert props["BatchSize"] == {"Ref": "BatchSize"}
    assert props["MaximumBatchingWindowInSeconds"] == {"Ref": "MaximumBatchingWindowInSeconds"}
    assert props["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}
    params = tpl["Parameters"]
    assert 2 <= params["MaximumConcurrency"]["MinValue"] and params["MaximumConcurrency"]["MaxValue"] <= 1000
    assert params["BatchSize"]["MaxValue"] <= 10000


def test_queue_redrives_to_the_dlq(tpl):
    q = tpl["Resources"]["LoginQueue"]["Properties"]
    assert q["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["LoginDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert tpl["Parameters"]["MaxReceiveCount"]["Default"] == 5
    assert tpl["Resources"]["LoginDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"


def test_visibility_timeout_is_at_least_six_function_timeouts(tpl):
    q = tpl["Resources"]["LoginQueue"]["Properties"]
    assert q["VisibilityTimeout"] == {"Fn::FindInMap": ["VisibilityTimeout", {"Ref": "FunctionTimeout"}, "Seconds"]}
    mapping = tpl["Mappings"]["VisibilityTimeout"]
    window = tpl["Parameters"]["MaximumBatchingWindowInSeconds"]["MaxValue"]
    allowed = tpl["Parameters"]["FunctionTimeout"]["AllowedValues"]
    assert sorted(int(t) for t in mapping) == sorted(int(t) for t in allowed)
    for timeout in allowed:
        assert mapping[str(timeout)]["Seconds"] >= 6 * int(timeout) + window, timeout
        assert mapping[str(timeout)]["Seconds"] <= 43200  # SQS maximum


def test_function_may_read_exactly_its_two_secrets(fn):
    policies = fn["Properties"]["Policies"]
    assert len(policies) == 1 and isinstance(policies[0], dict), "no managed or SAM policy templates"
    statements = policies[0]["Statement"]
    assert len(statements) == 1
    (st,) = statements
    assert st["Effect"] == "Allow"
    assert st["Action"] in ("secretsmanager:GetSecretValue", ["secretsmanager:GetSecretValue"])
    assert st["Resource"] == [{"Ref": "DbSecretArn"}, {"Ref": "MaskingKeySecret"}]
    assert "Role" not in fn["Properties"]


def test_environment_points_at_the_secrets(fn, tpl):
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["DB_SECRET_ID"] == {"Ref": "DbSecretArn"}
    assert env["MASKING_KEY_SECRET_ID"] == {"Ref": "MaskingKeySecret"}
    assert env["DB_SSLMODE"] == {"Ref": "DbSslMode"}
    assert "DATABASE_URL" not in env and "MASKING_KEY" not in env
    assert tpl["Parameters"]["DbSslMode"]["Default"] == "verify-full"
    assert fn["Properties"]["LoggingConfig"]["LogFormat"] == "JSON"


def test_generated_masking_key_is_64_hex_characters(tpl):
    gen = tpl["Resources"]["MaskingKeySecret"]["Properties"]["GenerateSecretString"]
    alphabet = set(string.ascii_letters + string.digits + string.punctuation + " ")
    if gen.get("ExcludePunctuation"):
        alphabet -= set(string.punctuation)
    if gen.get("ExcludeUppercase"):
        alphabet -= set(string.ascii_uppercase)
    if gen.get("ExcludeLowercase"):
        alphabet -= set(string.ascii_lowercase)
    if gen.get("ExcludeNumbers"):
        alphabet -= set(string.digits)
    if not gen.get("IncludeSpace", False):
        alphabet.discard(" ")
    alphabet -= set(gen.get("ExcludeCharacters", ""))
    assert alphabet == set("0123456789abcdef")
    assert gen["PasswordLength"] >= 64 and gen["PasswordLength"] % 2 == 0


def test_alarms_and_outputs(tpl):
    alarms = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"] for a in resources(tpl, "AWS::CloudWatch::Alarm").values()}
    dlq = alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["LoginDeadLetterQueue", "QueueName"]}
    errors = alarms[("AWS/Lambda", "Errors")]
    assert errors["Dimensions"][0]["Value"] == {"Ref": "LoginEtlFunction"}
    age = alarms[("AWS/SQS", "ApproximateAgeOfOldestMessage")]
    assert age["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["LoginQueue", "QueueName"]}
    outputs = tpl["Outputs"]
    assert outputs["QueueUrl"]["Value"] == {"Ref": "LoginQueue"}
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": "LoginDeadLetterQueue"}
    assert outputs["FunctionName"]["Value"] == {"Ref": "LoginEtlFunction"}
