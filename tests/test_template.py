"""Asserts the properties of template.yaml that matter and that cfn-lint does
not check (it accepted `Runtime: provided.al2099` and a misspelled
`ReportBatchItemFailure`). Run by `make test` with the venv's pytest."""

import pathlib
import re
import string

import pytest
import yaml
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


def test_function_runtime_architecture_and_build(fn, tpl):
    p = fn["Properties"]
    assert p["Runtime"] == "provided.al2023"
    assert p["Architectures"] == [{"Ref": "Architecture"}]
    arch = tpl["Parameters"]["Architecture"]
    assert arch["Default"] == "arm64" and sorted(arch["AllowedValues"]) == ["arm64", "x86_64"]
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
    # FIFO event sources take no batching window.
    assert props["MaximumBatchingWindowInSeconds"] == {
        "Fn::If": ["IsFifo", {"Ref": "AWS::NoValue"}, {"Ref": "MaximumBatchingWindowInSeconds"}]
    }
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
    assert q["VisibilityTimeout"] == {
        "Fn::If": [
            "DeriveVisibilityTimeout",
            {"Fn::FindInMap": ["VisibilityTimeout", {"Ref": "FunctionTimeout"}, "Seconds"]},
            {"Ref": "VisibilityTimeoutSeconds"},
        ]
    }
    # The override (for LocalStack tests) is off unless asked for.
    assert tpl["Parameters"]["VisibilityTimeoutSeconds"]["Default"] == 0
    assert tpl["Conditions"]["DeriveVisibilityTimeout"] == {"Fn::Equals": [{"Ref": "VisibilityTimeoutSeconds"}, 0]}
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


def test_fifo_queue_type_makes_both_queues_fifo(tpl):
    assert tpl["Parameters"]["QueueType"]["Default"] == "standard"
    assert tpl["Conditions"]["IsFifo"] == {"Fn::Equals": [{"Ref": "QueueType"}, "fifo"]}
    fifo = {"Fn::If": ["IsFifo", True, {"Ref": "AWS::NoValue"}]}
    assert tpl["Resources"]["LoginQueue"]["Properties"]["FifoQueue"] == fifo
    assert tpl["Resources"]["LoginDeadLetterQueue"]["Properties"]["FifoQueue"] == fifo


def _overrides_in_hook():
    hook = (ROOT / "localstack" / "init" / "ready.d" / "10-deploy-login-etl.sh").read_text()
    return set(re.findall(r"\b([A-Z][A-Za-z]+)=", hook.split("--parameter-overrides", 1)[1].split("describe-stacks", 1)[0]))


def test_local_deploys_pass_only_parameters_the_template_has(tpl):
    params = set(tpl["Parameters"])
    hook = _overrides_in_hook()
    assert {"DbSecretArn", "DbSslMode", "RunMigrations"} <= hook <= params
    stack_py = (ROOT / "localstack" / "stack.py").read_text()
    block = stack_py.split("params = {", 1)[1].split("}", 1)[0]
    used = set(re.findall(r'"([A-Za-z]+)":', block))
    assert {"DbSecretArn", "Architecture", "QueueType", "VisibilityTimeoutSeconds"} <= used <= params


def test_docker_compose_runs_localstack_and_postgres_with_the_hook():
    compose = yaml.safe_load((ROOT / "localstack" / "docker-compose.yml").read_text())
    ls, pg = compose["services"]["localstack"], compose["services"]["postgres"]
    assert ls["image"].startswith("localstack/localstack:")
    assert "./init/ready.d:/etc/localstack/init/ready.d:ro" in ls["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in ls["volumes"]
    assert ls["environment"]["LAMBDA_DOCKER_NETWORK"] == compose["networks"]["default"]["name"]
    assert {"sqs", "secretsmanager", "lambda", "cloudformation"} <= set(ls["environment"]["SERVICES"].split(","))
    assert pg["environment"] == {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "postgres", "POSTGRES_DB": "postgres"}
    assert "127.0.0.1:5432:5432" in pg["ports"]
    hook = ROOT / "localstack" / "init" / "ready.d" / "10-deploy-login-etl.sh"
    assert hook.stat().st_mode & 0o111, "LocalStack runs only executable hooks"
