"""Asserts the properties of template.yaml that matter and that cfn-lint does
not check (it accepted `Runtime: provided.al2099` and a misspelled
`ReportBatchItemFailure`). Run by `make test` with the venv's pytest."""

import copy
import fnmatch
import json
import os
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
    assert list(fns) == ["LoginEtlFunction", "MaintenanceFunction", "SetupFunction"]
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


def _own(node):
    """The branch of a queue reference taken when the stack makes its queues."""
    assert list(node) == ["Fn::If"] and node["Fn::If"][0] in ("OwnQueues", "OwnDlq"), node
    return node["Fn::If"][1]


def test_sqs_event_reports_batch_item_failures(fn, tpl):
    events = fn["Properties"]["Events"]
    assert len(events) == 1
    (event,) = events.values()
    assert event["Type"] == "SQS"
    props = event["Properties"]
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert _own(props["Queue"]) == {"Fn::GetAtt": ["LoginQueue", "Arn"]}
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
    assert _own(q["RedrivePolicy"]["deadLetterTargetArn"]) == {"Fn::GetAtt": ["LoginDeadLetterQueue", "Arn"]}
    assert q["RedrivePolicy"] == {
        "deadLetterTargetArn": q["RedrivePolicy"]["deadLetterTargetArn"],
        "maxReceiveCount": {
            "Fn::If": [
                "DeriveMaxReceiveCount",
                {"Fn::FindInMap": ["MaxReceivesForOutage", {"Ref": "OutageToleranceMinutes"}, {"Ref": "BackoffMaxSeconds"}]},
                {"Ref": "MaxReceiveCount"},
            ]
        },
    }
    assert tpl["Parameters"]["MaxReceiveCount"]["Default"] == 0, "derived from the outage tolerance"
    assert tpl["Resources"]["LoginDeadLetterQueue"]["Type"] == "AWS::SQS::Queue"


def _floor_wait(base, cap, n):
    """The shortest backoff wait after receive n (src/ingest/backoff.rs Schedule::floor)."""
    d = min(cap, base * 2 ** (n - 1), 43_200)
    return d - d // 2


def test_the_derived_max_receive_count_outlasts_the_tolerated_outage_for_every_allowed_schedule(tpl):
    """No valid message reaches the DLQ during an outage of OutageToleranceMinutes:
    with maxReceiveCount N, SQS moves a message at its receive N+1, which comes
    no sooner than the sum of the N shortest waits."""
    params = tpl["Parameters"]
    table = tpl["Mappings"]["MaxReceivesForOutage"]
    assert params["OutageToleranceMinutes"]["Default"] >= 120
    for minutes in params["OutageToleranceMinutes"]["AllowedValues"]:
        assert set(table[str(minutes)]) == {"300", "900", "1800", "3600"}, "the caps the Rule allows"
        for cap in [300, 900, 1800, 3600]:
            n = table[str(minutes)][str(cap)]
            assert 1 <= n <= 1000, "SQS's range"
            # Waits grow with the base: the smallest allowed base is the worst case.
            for base in [1, 2, 10, 30, 60, 3600]:
                tolerated = sum(_floor_wait(base, cap, k) for k in range(1, n + 1))
                assert tolerated >= minutes * 60, (minutes, cap, base, n, tolerated)
            # And not wastefully large: one receive fewer would not do for base 1.
            assert params["BackoffBaseSeconds"]["MinValue"] == 0, "0 is off, so 1 is the smallest base"
            assert sum(_floor_wait(1, cap, k) for k in range(1, n)) < minutes * 60
    defaults = {k: params[k]["Default"] for k in ["OutageToleranceMinutes", "BackoffMaxSeconds", "BackoffBaseSeconds"]}
    assert defaults == {"OutageToleranceMinutes": 120, "BackoffMaxSeconds": 900, "BackoffBaseSeconds": 30}
    assert table["120"]["900"] == 25, "the arithmetic in docs/runbooks/outage.md"


def test_the_function_backs_off_on_its_own_queue_only():
    resources = deployed()
    role = resources["LoginEtlRole"]
    (st,) = [st for st in _statements(role) if st["Sid"] == "BackOffFailedRecords"]
    assert st["Action"] == "sqs:ChangeMessageVisibility"
    assert st["Resource"] == {"Fn::GetAtt": ["LoginQueue", "Arn"]}
    visibility = [
        a for s in _statements(role) for a in _as_list(s["Action"]) if a.startswith("sqs:ChangeMessageVisibility")
    ]
    assert visibility == ["sqs:ChangeMessageVisibility"], "granted once, nowhere else"
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["SOURCE_QUEUE_URL"] == {"Ref": "LoginQueue"}
    assert env["BACKOFF_BASE_SECONDS"] == 30 and env["BACKOFF_MAX_SECONDS"] == 900
    assert env["REFUSED_MAX_RECEIVES"] == 3
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms["DatabaseWriteFailedAlarm"]["MetricName"] == "BatchFailed"
    assert alarms["VisibilityChangesFailedAlarm"]["MetricName"] == "VisibilityChangesFailed"
    # Refusals by the configuration have their own alarm, over exactly the
    # classes src/error.rs names (Misconfiguration::class).
    refused = alarms["ConfigurationRefusedAlarm"]["Metrics"]
    classes = {
        d["Value"]
        for m in refused if "MetricStat" in m
        for d in m["MetricStat"]["Metric"]["Dimensions"] if d["Name"] == "failure_class"
    }
    source = (ROOT / "src" / "error.rs").read_text()
    named = set(re.findall(r'Misconfiguration::\w+ => "([a-z_]+)"', source))
    assert named and classes == named, (classes, named)
    assert all(m["MetricStat"]["Metric"]["MetricName"] == "BatchFailed" for m in refused if "MetricStat" in m)
    expression = [m for m in refused if m.get("ReturnData")]
    assert len(expression) == 1 and all(m["Id"] in expression[0]["Expression"] for m in refused if "MetricStat" in m)


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


def test_function_uses_its_own_role(fn):
    # SAM adds nothing to a role it is given; see the transformed tests below.
    assert fn["Properties"]["Role"] == {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}
    assert "Policies" not in fn["Properties"]


def test_environment_points_at_the_secrets(fn, tpl):
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["DB_SECRET_ID"] == {"Fn::If": ["ReadsSetupSecrets", {"Fn::GetAtt": ["DatabaseSetup", "IngestSecretArn"]},
                                              {"Fn::If": ["ReadsDbSecret", {"Ref": "DbSecretArn"}, ""]}]}  # fmt: skip
    assert env["MASKING_KEY_SECRET_ID"] == {
        "Fn::If": ["CreateMaskingKey", {"Ref": "MaskingKeySecret"}, {"Ref": "ExistingMaskingKeySecretArn"}]
    }
    assert env["DB_SSLMODE"] == {"Ref": "DbSslMode"}
    assert "DATABASE_URL" not in env and "MASKING_KEY" not in env
    assert tpl["Parameters"]["DbSslMode"]["Default"] == "verify-full"
    assert fn["Properties"]["LoggingConfig"]["LogFormat"] == "JSON"


def test_a_ca_bundle_secret_is_passed_and_readable_only_when_given(tpl):
    """verify-full against a direct RDS instance: the bundle comes from a
    file packaged beside bootstrap (DbCaBundleFile, `make deploy
    DB_CA_BUNDLE=...`), or from a secret."""
    ca = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds-ca-Ab12Cd"
    for given in ["", ca]:
        resources = deployed(DbCaBundleSecretArn=given)
        env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
        assert env["DB_CA_BUNDLE_SECRET_ID"] == given
        (read,) = [st for st in _statements(resources["LoginEtlRole"]) if st["Sid"] == "ReadOwnSecrets"]
        assert (ca in read["Resource"]) == bool(given), read["Resource"]
    for fn in ("LoginEtlFunction", "MaintenanceFunction"):
        env = deployed(DbCaBundleFile="global-bundle.pem")[fn]["Properties"]["Environment"]["Variables"]
        assert env["DB_CA_BUNDLE"] == "global-bundle.pem", fn
    pattern = tpl["Parameters"]["DbCaBundleFile"]["AllowedPattern"]
    assert re.fullmatch(pattern, "global-bundle.pem") and not re.fullmatch(pattern, "../etc/ssl/cert.pem")


MASTER_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-0a1b2c3d-AbCdEf"
SETUP = {"MasterSecretArn": MASTER_SECRET_ARN, "DbSecretArn": "", "MaintainDbSecretArn": "",
         "DbHost": "mydb.xxxx.us-east-1.rds.amazonaws.com", "DbName": "analytics"}  # fmt: skip


def test_with_the_master_secret_the_stack_sets_up_its_database_and_its_functions_read_what_setup_made(tpl):
    """MasterSecretArn: a setup function of the same binary answers the
    DatabaseSetup resource (README's block, as login-etl setup); its role
    reads the master secret and keeps the secrets named after the stack,
    nothing else; each function reads its own role's secret by its
    attribute, and its role may read that name alone. Without it, none of
    this is made and the secrets given are read."""
    assert _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, **SETUP}) == []
    assert "SetupNeedsTheServer" in _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, **SETUP, "DbName": ""})
    assert "SetupNeedsTheServer" in _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, **SETUP, "DbSecretArn": FULL_SECRET_ARN})
    assert "PasswordsNeedTheSecrets" in _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, "DbSecretArn": ""})
    made = deployed(**SETUP, RetentionDays=90)
    setup = made["DatabaseSetup"]
    assert setup["Type"] == "Custom::LoginEtlDatabase"
    props = setup["Properties"]
    assert props["ServiceToken"] == {"Fn::GetAtt": ["SetupFunction", "Arn"]}
    # No answer (no route to S3) fails the deploy soon after the function's 900 s, not after an hour.
    assert 900 < props["ServiceTimeout"] <= 1200
    assert (props["MasterSecretArn"], props["Host"], props["DbName"]) == (MASTER_SECRET_ARN, SETUP["DbHost"], "analytics")
    assert props["RetentionDays"] == 90 and props["Auth"] == "password"
    # The login roles' prefix: the stack's name (- as _), so two stacks on
    # one server never share roles; or the one given. The IAM policy names
    # the same users.
    for given, named, prefix in (("", "login-etl", "login_etl"), ("", "logins-prod-2", "logins_prod_2"), ("app", "x", "app")):
        stack_named = deployed(**SETUP, DbRolePrefix=given, **{"AWS::StackName": named})
        assert stack_named["DatabaseSetup"]["Properties"]["Prefix"] == prefix, (given, named)
        env = stack_named["SetupFunction"]["Properties"]["Environment"]["Variables"]
        assert env["SETUP_PREFIX"] == prefix
    assert props["Secrets"] == {"Ref": "AWS::StackName"}
    # Behind a proxy the roles' secrets name it, and setup still connects to DbHost.
    assert (props["SecretHost"], props["SecretPort"]) == ("", "")
    proxy = "login-etl.proxy-abc123.us-east-1.rds.amazonaws.com"
    behind = deployed(**SETUP, DbProxyHost=proxy, DbProxyPort="6432")["DatabaseSetup"]["Properties"]
    assert (behind["Host"], behind["SecretHost"], behind["SecretPort"]) == (SETUP["DbHost"], proxy, "6432")
    port = tpl["Parameters"]["DbProxyPort"]["AllowedPattern"]
    assert [p for p in ("", "1", "6432", "65535") if re.fullmatch(port, p)] == ["", "1", "6432", "65535"]
    assert [p for p in ("0", "65536", "99999", "64a") if re.fullmatch(port, p)] == []
    assert props["SetupRoleArn"] == {"Fn::GetAtt": ["SetupRole", "Arn"]}
    # A release that writes another schema changes the resource: an update runs setup (migrate) again.
    schema = re.search(r"macro_rules! schema_version \{\s*\(\) => \{\s*(\d+)", (ROOT / "src/table/schema/mod.rs").read_text())
    assert schema and props["SchemaVersion"] == schema.group(1), props["SchemaVersion"]
    assert "SetupNeedsTheServer" in _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, **SETUP, "DbAuth": "iam"})
    assert props["Readers"] == [{"Fn::Sub": "ingest=${LoginEtlRole.Arn}"}, {"Fn::Sub": "maintain=${MaintenanceRole.Arn}"}]
    assert deployed(**SETUP, RetentionDays=0)["DatabaseSetup"]["Properties"]["RetentionDays"] == "all"
    # DeployPrincipalArns: with setup's role, the only ones that rewrite or delete the secrets it makes.
    ci = "arn:aws:iam::123456789012:role/ci-deploy"
    assert deployed(**SETUP, DeployPrincipalArns=ci)["DatabaseSetup"]["Properties"]["Rewriters"] == [ci]
    fn = made["SetupFunction"]["Properties"]
    assert fn["Environment"]["Variables"]["LOGIN_ETL_TASK"] == "setup" and fn["Timeout"] == 900
    assert fn["Role"] == {"Fn::GetAtt": ["SetupRole", "Arn"]}
    stack_secrets = "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${AWS::StackName}/"
    by_sid = {st["Sid"]: st for st in _statements(made["SetupRole"])}
    assert set(by_sid) == {"ReadTheMasterSecret", "KeepTheRolesSecrets", "WriteOwnLogs"}
    assert by_sid["ReadTheMasterSecret"]["Resource"] == [MASTER_SECRET_ARN]
    ca = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds-ca-Ab12Cd"
    with_ca = {st["Sid"]: st for st in _statements(deployed(**SETUP, DbCaBundleSecretArn=ca)["SetupRole"])}
    assert with_ca["ReadTheMasterSecret"]["Resource"] == [MASTER_SECRET_ARN, ca], "the CA bundle's secret too"
    # A master secret under a customer-managed key: that key, through Secrets Manager only.
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with_key = {st["Sid"]: st for st in _statements(deployed(**SETUP, MasterSecretKmsKeyArn=key)["SetupRole"])}
    assert (with_key["OpenTheMasterSecret"]["Action"], with_key["OpenTheMasterSecret"]["Resource"]) == ("kms:Decrypt", key)
    assert with_key["OpenTheMasterSecret"]["Condition"] == {"StringEquals": {"kms:ViaService": {"Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"}}}
    # With VPC endpoints, setup waits for Secrets Manager's.
    vpc = deployed(**SETUP, SubnetIds="subnet-a", SecurityGroupIds="sg-1", VpcEndpointsVpcId="vpc-1")
    assert vpc["DatabaseSetup"]["Properties"]["Endpoint"] == {"Ref": "SecretsManagerEndpoint"}
    assert by_sid["KeepTheRolesSecrets"]["Resource"] == {"Fn::Sub": stack_secrets + "*"}
    assert "secretsmanager:DeleteSecret" not in by_sid["KeepTheRolesSecrets"]["Action"]
    for function, role, kind in (("LoginEtlFunction", "LoginEtlRole", "Ingest"), ("MaintenanceFunction", "MaintenanceRole", "Maintain")):
        env = made[function]["Properties"]["Environment"]["Variables"]
        assert env["DB_SECRET_ID"] == {"Fn::GetAtt": ["DatabaseSetup", f"{kind}SecretArn"]}, function
        (read,) = [st for st in _statements(made[role]) if st["Sid"] == "ReadOwnSecrets"]
        assert {"Fn::Sub": stack_secrets + kind.lower() + "-??????"} in _as_list(read["Resource"]), read
    # No setup without the master secret; the given secrets are read.
    plain = deployed()
    assert not {"DatabaseSetup", "SetupFunction", "SetupLogGroup"} & set(plain)
    assert "Policies" not in plain["SetupRole"]["Properties"], "a role that may do nothing"
    assert plain["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]["DB_SECRET_ID"] == FULL_SECRET_ARN


def test_the_setup_function_acts_on_its_environment_which_holds_the_resources_properties(tpl):
    """Anyone who may invoke the setup function can send it a request, so
    it acts on its environment (SETUP_*), which CloudFormation sets, and
    refuses a request whose properties differ: each property the setup
    reads has its variable, with the same value (a list joined by commas),
    in the raw template and as deployed."""
    read = re.findall(r'\("(\w+)", (?:list\(&)?self\.', (ROOT / "src/cli/setup/resource.rs").read_text())
    assert "RetentionDays" in read and "SetupRoleArn" in read and len(read) == 20, read
    snake = lambda name: "SETUP_" + {"SetupRoleArn": "ROLE_ARN"}.get(name, re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper())  # noqa: E731
    raw = tpl["Resources"]
    props, env = raw["DatabaseSetup"]["Properties"], raw["SetupFunction"]["Properties"]["Environment"]["Variables"]
    for name in read:
        want = props[name]
        if isinstance(want, list) or want == {"Ref": "DbSecretReaderPrincipalArns"} or want == {"Ref": "DeployPrincipalArns"}:
            want = {"Fn::Join": [",", want]}
        assert env[snake(name)] == want, name
    assert env["SETUP_STACK_ID"] == {"Ref": "AWS::StackId"}
    # A queue made before the stack is judged before anything drains it:
    # the function (and so its event-source mapping) waits for the setup
    # resource, whose role may read both queues' settings, nothing more.
    queues = {"ExistingQueueArn": "arn:aws:sqs:us-east-1:123456789012:producers",
              "ExistingDlqArn": "arn:aws:sqs:us-east-1:123456789012:producers-dlq"}  # fmt: skip
    made = deployed(**SETUP, **queues)
    props = made["DatabaseSetup"]["Properties"]
    assert props["DlqArn"] == queues["ExistingDlqArn"], props
    assert props["MinReceiveCount"] == {"Fn::FindInMap": ["MaxReceivesForOutage", 120, 900]}, "the stack's own queue's count"
    assert made["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]["DB_SECRET_ID"] == {
        "Fn::GetAtt": ["DatabaseSetup", "IngestSecretArn"]}  # fmt: skip
    (judge,) = [st for st in _statements(made["SetupRole"]) if st["Sid"] == "JudgeTheExistingQueues"]
    assert (judge["Action"], judge["Resource"]) == (["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], list(queues.values()))
    assert deployed(**SETUP)["DatabaseSetup"]["Properties"]["QueueUrl"] == "", "the stack's own queue: nothing to judge"
    for params in ({}, {"DbProxyHost": "p.proxy-abc.us-east-1.rds.amazonaws.com", "DbProxyPort": "6432", "RetentionDays": 0,
                        "DeployPrincipalArns": "arn:aws:iam::123456789012:role/ci,arn:aws:iam::123456789012:role/cd"}):  # fmt: skip
        made = deployed(**SETUP, **params)
        props, env = made["DatabaseSetup"]["Properties"], made["SetupFunction"]["Properties"]["Environment"]["Variables"]
        for name in read:
            value, got = props[name], env[snake(name)]
            if isinstance(value, list):
                value, got = _entries(value), _entries(got)
            assert got == value, (name, got, value)


def _entries(value):
    """A list property's entries, or its variable's (joined by commas, or
    an Fn::Join deployed() left for a GetAtt among them); empty ones left out."""
    if isinstance(value, dict) and "Fn::Join" in value:
        value = value["Fn::Join"][1]
    if isinstance(value, str):
        value = value.split(",")
    return [v for v in value if v]


IAM = {"DbAuth": "iam", "DbSecretArn": "", "MaintainDbSecretArn": "",
       "DbHost": "login-etl.proxy-abc123.us-east-1.rds.amazonaws.com", "DbPort": 5432, "DbName": "analytics",
       "DbUser": "login_etl_ingest", "MaintainDbUser": "login_etl_maintain", "DbResourceId": "prx-0123abcd"}  # fmt: skip


def test_iam_authentication_connects_as_each_functions_own_user_and_reads_no_database_secret(tpl):
    """DbAuth=iam: each function may rds-db:connect as its own database
    user on the exact dbuser ARN, is told the endpoint and user (PG*
    variables) and DB_AUTH, and reads no database secret; with passwords,
    nobody may rds-db:connect."""
    assert _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, **IAM}) == []
    resources = deployed(**IAM)
    for fn, role, user in (("LoginEtlFunction", "LoginEtlRole", "login_etl_ingest"),
                           ("MaintenanceFunction", "MaintenanceRole", "login_etl_maintain")):  # fmt: skip
        env = resources[fn]["Properties"]["Environment"]["Variables"]
        assert env["DB_AUTH"] == "iam" and env["DB_SECRET_ID"] == "", env
        assert (env["PGHOST"], str(env["PGPORT"]), env["PGDATABASE"], env["PGUSER"]) == (
            IAM["DbHost"], "5432", "analytics", user)  # fmt: skip
        statements = list(_statements(resources[role]))
        connects = [st for st in statements if "rds-db:connect" in _as_list(st["Action"])]
        arn = f"arn:${{AWS::Partition}}:rds-db:${{AWS::Region}}:${{AWS::AccountId}}:dbuser:prx-0123abcd/{user}"
        assert [st["Resource"] for st in connects] == [arn], connects
        reads = [r for st in statements if "secretsmanager:GetSecretValue" in _as_list(st["Action"])
                 for r in _as_list(st["Resource"])]  # fmt: skip
        assert not {FULL_SECRET_ARN, MAINTAIN_SECRET_ARN, ""} & set(map(str, reads)), reads
    assert not [r for r in resources.values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy"
                and r["Properties"]["SecretId"] in ("", FULL_SECRET_ARN)], "no database secret to protect"  # fmt: skip
    with_passwords = deployed()
    for role in ("LoginEtlRole", "MaintenanceRole"):
        assert not [st for st in _statements(with_passwords[role]) if "rds-db:connect" in _as_list(st["Action"])]
        env_fn = "LoginEtlFunction" if role == "LoginEtlRole" else "MaintenanceFunction"
        env = with_passwords[env_fn]["Properties"]["Environment"]["Variables"]
        assert env["DB_AUTH"] == "password" and env["PGHOST"] == "" and env["DB_SECRET_ID"].startswith("arn:")


def test_the_log_level_is_the_applications_and_metrics_survive_every_allowed_level(tpl):
    """Lambda drops JSON lines below ApplicationLogLevel; the function writes its
    EMF documents at the configured level (src/ingest/metrics.rs emf_level), which
    needs AWS_LAMBDA_LOG_LEVEL, set by Lambda from ApplicationLogLevel."""
    fn = tpl["Resources"]["LoginEtlFunction"]["Properties"]
    assert fn["LoggingConfig"] == {
        "LogFormat": "JSON",
        "ApplicationLogLevel": {"Ref": "LogLevel"},
        "LogGroup": {"Ref": "LoginEtlLogGroup"},
    }
    allowed = tpl["Parameters"]["LogLevel"]["AllowedValues"]
    assert set(allowed) <= {"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"}
    assert {"WARN", "ERROR"} <= set(allowed), "tests/it/log_levels.rs covers these"
    env = fn["Environment"]["Variables"]
    assert "AWS_LAMBDA_LOG_LEVEL" not in env and "RUST_LOG" not in env, "Lambda sets the level itself"


@pytest.mark.parametrize("secret", ["MaskingKeySecret", "ErasureKeySecret"])
def test_generated_keys_are_64_hex_characters(tpl, secret):
    gen = tpl["Resources"][secret]["Properties"]["GenerateSecretString"]
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
    alarms = {
        (a["Properties"]["Namespace"], a["Properties"]["MetricName"]): a["Properties"]
        for a in resources(tpl, "AWS::CloudWatch::Alarm").values()
        if isinstance(a["Properties"].get("Namespace"), str)  # AWS metrics; ours are tested below
    }
    # The DLQ's alarm is metric math over its depth (arrivals, tested below).
    (depth,) = [m["MetricStat"]["Metric"] for m in tpl["Resources"]["DeadLetterQueueAlarm"]["Properties"]["Metrics"]
                if m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "ApproximateNumberOfMessagesVisible"]
    assert _own(depth["Dimensions"][0]["Value"]) == {"Fn::GetAtt": ["LoginDeadLetterQueue", "QueueName"]}
    errors = alarms[("AWS/Lambda", "Errors")]
    assert errors["Dimensions"][0]["Value"] == {"Ref": "LoginEtlFunction"}
    age = alarms[("AWS/SQS", "ApproximateAgeOfOldestMessage")]
    assert _own(age["Dimensions"][0]["Value"]) == {"Fn::GetAtt": ["LoginQueue", "QueueName"]}
    outputs = tpl["Outputs"]
    assert _own(outputs["QueueUrl"]["Value"]) == {"Ref": "LoginQueue"}
    assert _own(outputs["DeadLetterQueueUrl"]["Value"]) == {"Ref": "LoginDeadLetterQueue"}
    assert outputs["FunctionName"]["Value"] == {"Ref": "LoginEtlFunction"}
    # doctor --queue-url judges the queue's receive Deny against this role.
    assert outputs["FunctionRoleArn"]["Value"] == {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}


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
    # deploy()'s parameters: its database's (README's block's secrets, or
    # the stack's own setup), then the rest.
    body = stack_py.split("\ndef deploy(", 1)[1].split("\ndef ", 1)[0]
    block = "".join(part.split("}", 1)[0] for part in re.split(r"(?:database|params) = \{", body)[1:])
    used = set(re.findall(r'"([A-Za-z]+)":', block))
    assert {"DbSecretArn", "MasterSecretArn", "Architecture", "QueueType", "VisibilityTimeoutSeconds"} <= used <= params


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


# ---------------------------------------------------------------------------
# The template as CloudFormation receives it: transformed offline by the SAM
# translator (the same code `sam deploy` runs in the service), then with its
# conditions evaluated for given parameters. Least privilege is a property of
# what is deployed, not of what the template says.

FULL_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/db-AbC123"
INVESTIGATORS = "arn:aws:iam::123456789012:role/investigators"
# What a deploy must be given (no default): the database secret, and with the
# vault (the default) the role whose sessions may reveal.
MAINTAIN_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/maintain-XyZ789"
# The full profile's stack, which most tests examine: the parameters it
# requires, and Profile=full (the template's default is masking:
# test_the_default_profile_is_masking_only_and_needs_no_reveal_role).
REQUIRED = {"DbSecretArn": FULL_SECRET_ARN, "RevealTrustedPrincipalArn": INVESTIGATORS,
            "MaintainDbSecretArn": MAINTAIN_SECRET_ARN, "Profile": "full"}  # fmt: skip


class _NoManagedPolicies:
    """The translator looks up managed policy names only for SAM `Policies`
    entries; the template has none."""

    def load(self):
        return {}


def _defaults(tpl):
    return {k: v.get("Default") for k, v in tpl["Parameters"].items() if "Default" in v}


def transformed(**params):
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    # The translator fills in pseudo parameters from the region; offline.
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    doc = yaml_parse((ROOT / "template.yaml").read_text())
    # What `sam package` uploads the code to; the rest is the template as written.
    for name in ("LoginEtlFunction", "MaintenanceFunction", "SetupFunction"):
        doc["Resources"][name]["Properties"]["CodeUri"] = "s3://bucket/login-etl.zip"
    values = {**_defaults(doc), **REQUIRED, **params}
    out = transform(copy.deepcopy(doc), values, _NoManagedPolicies())
    return out, values


def _evaluate(node, values, conditions):
    """Resolves Ref (parameters), Fn::If, Fn::Equals, Fn::Not, Fn::Join and
    Condition so that only what the parameters select remains; other
    intrinsics (GetAtt, Ref to resources) stay as they are."""
    if isinstance(node, list):
        out = [_evaluate(n, values, conditions) for n in node]
        return [n for n in out if n != {"Ref": "AWS::NoValue"}]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (key, arg), = node.items()
        if key == "Ref" and arg in values:
            return values[arg]
        if key == "Fn::If":
            name, yes, no = arg
            return _evaluate(yes if _condition(name, values, conditions) else no, values, conditions)
        if key == "Fn::Equals":
            a, b = (_evaluate(x, values, conditions) for x in arg)
            return str(a) == str(b)
        if key == "Fn::Not":
            return not _evaluate(arg[0], values, conditions)
        if key == "Fn::And":
            return all(_evaluate(x, values, conditions) for x in arg)
        if key == "Fn::Or":
            return any(_evaluate(x, values, conditions) for x in arg)
        if key == "Fn::Join":
            sep, items = arg
            items = _evaluate(items, values, conditions)
            if isinstance(items, str):
                items = [items]
            if all(isinstance(i, (str, int)) for i in items):
                return sep.join(str(i) for i in items)
            # A GetAtt among them: kept, for Fn::Split to take apart.
            return {"Fn::Join": [sep, items]}
        if key == "Fn::Split":
            sep, source = arg
            source = _evaluate(source, values, conditions)
            if isinstance(source, str):
                return source.split(sep)
            if isinstance(source, dict) and list(source) == ["Fn::Join"] and source["Fn::Join"][0] == sep:
                out = []
                for item in source["Fn::Join"][1]:
                    out.extend(item.split(sep) if isinstance(item, str) else [item])
                return out
            return {"Fn::Split": [sep, source]}
        if key == "Fn::Select":
            index, items = arg
            items = _evaluate(items, values, conditions)
            return items[int(index)] if isinstance(items, list) else {"Fn::Select": [index, items]}
        if key == "Fn::Sub" and isinstance(arg, str):
            text = arg
            for k, v in values.items():
                if isinstance(v, (str, int)):
                    text = text.replace("${%s}" % k, str(v))
            # Parameters resolved; pseudo parameters (${AWS::...}) stay as written.
            return text if text != arg else node
        if key == "Fn::Sub" and isinstance(arg, list):
            text, names = arg[0], _evaluate(arg[1], values, conditions)
            for k, v in names.items():
                if isinstance(v, str):
                    text = text.replace("${%s}" % k, v)
            return text  # pseudo parameters (${AWS::...}) stay as written
        if key == "Condition":
            return _condition(arg, values, conditions)
    out = {}
    for k, v in node.items():
        v = _evaluate(v, values, conditions)
        if v != {"Ref": "AWS::NoValue"}:
            out[k] = v
    return out


def _condition(name, values, conditions):
    return bool(_evaluate(conditions[name], values, conditions))


def deployed(**params):
    """Resources CloudFormation would create for these parameters."""
    out, values = transformed(**params)
    # A CommaDelimitedList parameter is a list where it is referenced.
    values = {
        k: v.split(",") if isinstance(v, str) and out["Parameters"].get(k, {}).get("Type") == "CommaDelimitedList" else v
        for k, v in values.items()
    }  # fmt: skip
    conditions = out.get("Conditions", {})
    resources = {}
    for name, res in out["Resources"].items():
        if "Condition" in res and not _condition(res["Condition"], values, conditions):
            continue
        resources[name] = _evaluate(res, values, conditions)
    return resources


def _statements(role):
    for policy in role["Properties"].get("Policies", []):
        statements = policy["PolicyDocument"]["Statement"]
        yield from statements if isinstance(statements, list) else [statements]


def _as_list(x):
    return x if isinstance(x, list) else [x]


@pytest.mark.parametrize("vpc", [False, True])
def test_the_deployed_role_grants_nothing_on_star_but_vpc_network_interfaces(vpc):
    params = {"SubnetIds": "subnet-1,subnet-2", "SecurityGroupIds": "sg-1"} if vpc else {}
    resources = deployed(**params)
    roles = {k: v for k, v in resources.items() if v["Type"] == "AWS::IAM::Role"}
    assert sorted(roles) == ["LoginEtlRole", "MaintenanceRole", "PiiRevealRole", "SetupRole"], "SAM generated no role of its own"
    # Without MasterSecretArn the setup's role is there with no policy (see template.yaml).
    assert "Policies" not in roles["SetupRole"]["Properties"], roles["SetupRole"]
    role = roles["LoginEtlRole"]["Properties"]
    assert not role.get("ManagedPolicyArns"), "no managed policy (they grant on *)"
    fn = resources["LoginEtlFunction"]["Properties"]
    assert fn["Role"] == {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}
    statements = list(_statements(roles["LoginEtlRole"]))
    by_sid = {st["Sid"]: st for st in statements}
    for st in statements:
        assert st["Effect"] == "Allow"
        for action in _as_list(st["Action"]):
            assert "*" not in action, action
            if action.split(":")[0] in {"sqs", "secretsmanager", "kms", "logs"}:
                assert "*" not in json.dumps(st["Resource"]).replace(":*", ""), (action, st["Resource"])
    assert set(_as_list(by_sid["ConsumeLoginQueue"]["Action"])) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    assert by_sid["ConsumeLoginQueue"]["Resource"] == {"Fn::GetAtt": ["LoginQueue", "Arn"]}
    assert by_sid["ReadOwnSecrets"]["Resource"] == [
        FULL_SECRET_ARN,
        {"Ref": "MaskingKeySecret"},
        {"Ref": "ErasureKeySecret"},
    ]
    assert by_sid["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": ["LoginEtlLogGroup", "Arn"]}
    assert by_sid["SendRejectsToDeadLetterQueue"]["Action"] == "sqs:SendMessage"
    assert by_sid["SendRejectsToDeadLetterQueue"]["Resource"] == {"Fn::GetAtt": ["LoginDeadLetterQueue", "Arn"]}
    assert set(_as_list(by_sid["WriteOwnLogs"]["Action"])) == {"logs:CreateLogStream", "logs:PutLogEvents"}
    # The VPC permissions exist only with subnets, and then the function runs in them.
    assert ("ManageVpcNetworkInterfaces" in by_sid) == vpc
    assert ("VpcConfig" in fn) == vpc
    if vpc:
        assert all(a.startswith("ec2:") for a in _as_list(by_sid["ManageVpcNetworkInterfaces"]["Action"]))
    # Traces are off by default: no layer, no endpoint, no X-Ray right.
    assert "SendTraces" not in by_sid
    assert "Layers" not in fn
    assert fn["Environment"]["Variables"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""
    # The event-source mapping SAM generates runs with this role.
    (esm,) = [r for r in resources.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert esm["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["Properties"]["EventSourceArn"] == {"Fn::GetAtt": ["LoginQueue", "Arn"]}


def test_the_masking_key_is_retained_and_an_existing_one_can_be_reused():
    out, _ = transformed()
    secret = out["Resources"]["MaskingKeySecret"]
    assert secret["DeletionPolicy"] == "Retain" and secret["UpdateReplacePolicy"] == "Retain"
    existing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/key-Zz9Yy8"
    resources = deployed(ExistingMaskingKeySecretArn=existing)
    assert "MaskingKeySecret" not in resources, "no new key when one is given"
    assert "ErasureKeySecret" not in resources, "nor a new erasure key: the list is keyed with the old one"
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["MASKING_KEY_SECRET_ID"] == existing
    assert env["ERASURE_KEY_SECRET_ID"] == "", "user keys derived from the masking key, as before"
    statements = {st["Sid"]: st for st in _statements(resources["LoginEtlRole"])}
    assert statements["ReadOwnSecrets"]["Resource"] == [FULL_SECRET_ARN, existing]
    # With the erasure key retained beside it, the function reads both.
    erasure = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/erasure-Aa1Bb2"
    resources = deployed(ExistingMaskingKeySecretArn=existing, ExistingErasureKeySecretArn=erasure)
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["ERASURE_KEY_SECRET_ID"] == erasure
    statements = {st["Sid"]: st for st in _statements(resources["LoginEtlRole"])}
    assert statements["ReadOwnSecrets"]["Resource"] == [FULL_SECRET_ARN, existing, erasure]
    # A reused key is closed as a new one is, and stays closed after a
    # delete: its policy names this stack's roles and is retained.
    for name, secret in (("MaskingKeySecretPolicy", existing), ("ErasureKeySecretPolicy", erasure)):
        policy = resources[name]
        assert policy["Properties"]["SecretId"] == secret
        assert policy["DeletionPolicy"] == "Retain", name
        readers = _deny_unless(policy["Properties"]["ResourcePolicy"], "secretsmanager:GetSecretValue")
        assert readers == [{"Fn::GetAtt": ["LoginEtlRole", "Arn"]}], readers
    # Without an erasure key (user keys derived from the masking key) there
    # is no erasure-key policy to make.
    assert "ErasureKeySecretPolicy" not in deployed(ExistingMaskingKeySecretArn=existing)
    # A new stack makes both keys, both retained.
    erasure_secret = out["Resources"]["ErasureKeySecret"]
    assert erasure_secret["DeletionPolicy"] == "Retain" and erasure_secret["UpdateReplacePolicy"] == "Retain"
    assert out["Resources"]["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]["ERASURE_KEY_SECRET_ID"] == {
        "Fn::If": ["CreateMaskingKey", {"Ref": "ErasureKeySecret"}, {"Ref": "ExistingErasureKeySecretArn"}]
    }


def _rules_hold(tpl, values):
    """Evaluates the template's Rules (Fn::Contains, Fn::Equals, Fn::Not,
    Fn::And, Fn::Or) for values,
    as CloudFormation does at validation: every assertion of every rule
    whose condition holds."""

    def ev(node):
        if isinstance(node, dict):
            (key, arg), = node.items()
            if key == "Ref":
                return str(values[arg])
            if key == "Fn::Equals":
                return ev(arg[0]) == ev(arg[1])
            if key == "Fn::Contains":
                return ev(arg[1]) in [ev(x) for x in arg[0]]
            if key == "Fn::Not":
                return not ev(arg[0])
            if key == "Fn::And":
                return all(ev(x) for x in arg)
            if key == "Fn::Or":
                return any(ev(x) for x in arg)
            raise AssertionError(f"unexpected rule function {key}")
        return str(node)

    failed = []
    for name, rule in tpl["Rules"].items():
        if "RuleCondition" in rule and not ev(rule["RuleCondition"]):
            continue
        failed += [name for a in rule["Assertions"] if not ev(a["Assert"])]
    return failed


@pytest.mark.parametrize(
    "params, broken",
    [
        ({}, []),
        ({"QueueType": "fifo", "BatchSize": 10}, []),
        ({"QueueType": "fifo", "BatchSize": 11}, ["FifoBatchSizeAtMost10"]),
        ({"BatchSize": 500, "MaximumBatchingWindowInSeconds": 0}, ["LargeBatchesNeedABatchingWindow"]),
        ({"BatchSize": 10, "MaximumBatchingWindowInSeconds": 0}, []),
        ({"BatchSize": 10000, "MaximumBatchingWindowInSeconds": 1}, []),
        ({"QueueType": "fifo", "BatchSize": 50, "MaximumBatchingWindowInSeconds": 0},
         ["FifoBatchSizeAtMost10", "LargeBatchesNeedABatchingWindow"]),
        # A derived maxReceiveCount needs a cap the mapping has, and the backoff on.
        ({"BackoffMaxSeconds": 8}, ["DerivedMaxReceiveCountNeedsAKnownCap"]),
        ({"BackoffBaseSeconds": 0}, ["DerivedMaxReceiveCountNeedsAKnownCap"]),
        ({"BackoffBaseSeconds": 2, "BackoffMaxSeconds": 8, "MaxReceiveCount": 8}, []),
        ({"BackoffBaseSeconds": 0, "MaxReceiveCount": 5}, []),
        # The vault needs a named role to reveal; without the vault, none.
        ({"RevealTrustedPrincipalArn": ""}, ["VaultNeedsARevealRole"]),
        ({"RevealTrustedPrincipalArn": "", "EnableVault": "false"}, []),
        # The masking-only profile has no vault, so no reveal role either.
        ({"RevealTrustedPrincipalArn": "", "Profile": "masking"}, []),
        # Passwords need both secrets; IAM the endpoint, the users, the resource id and verify-full.
        ({"DbSecretArn": ""}, ["PasswordsNeedTheSecrets"]),
        ({"MaintainDbSecretArn": ""}, ["PasswordsNeedTheSecrets"]),
        (IAM, []),
        ({**IAM, "DbSslMode": "require"}, ["IamNeedsTheEndpointTheUsersAndVerifyFull"]),
        ({**IAM, "DbResourceId": ""}, ["IamNeedsTheEndpointTheUsersAndVerifyFull"]),
        ({**IAM, "MaintainDbUser": ""}, ["IamNeedsTheEndpointTheUsersAndVerifyFull"]),
        ({"DbAuth": "iam"}, ["IamNeedsTheEndpointTheUsersAndVerifyFull"] * 2),
        # Traces need the collector's layer; off, none.
        ({"Tracing": "Enabled"}, ["TracingNeedsACollectorLayer"]),
        ({"Tracing": "Enabled", "OtelLayerArn": "arn:aws:lambda:eu-west-1:901920570463:layer:aws-otel-collector-arm64-ver-0-117-0:1"}, []),
    ],
)
def test_bad_parameter_combinations_fail_validation(tpl, params, broken):
    values = {**_defaults(tpl), **REQUIRED, **params}
    assert _rules_hold(tpl, values) == broken


def test_the_default_profile_is_masking_only_and_needs_no_reveal_role(tpl):
    """As README's setup block: a stack given only its database secrets is
    masking-only (no vault key, no reveal role, no VAULT_KMS_KEY_ID; the
    one KMS key is the dead-letter copies', DlqKey) and its rules hold."""
    assert tpl["Parameters"]["Profile"]["Default"] == "masking"
    secrets = {"DbSecretArn": FULL_SECRET_ARN, "MaintainDbSecretArn": MAINTAIN_SECRET_ARN}
    assert _rules_hold(tpl, {**_defaults(tpl), **secrets}) == []
    out = deployed(Profile=_defaults(tpl)["Profile"], RevealTrustedPrincipalArn="")
    keys = [name for name, r in out.items() if r["Type"] == "AWS::KMS::Key"]
    assert "PiiRevealRole" not in out and keys == ["DlqKey"], sorted(out)
    env = out["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["VAULT_KMS_KEY_ID"] == "" and env["LOGIN_ETL_PROFILE"] == "masking", env


@pytest.mark.parametrize(
    "arn, ok",
    [
        (FULL_SECRET_ARN, True),
        ("arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/login-etl-db-x1Y2z3", True),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/db", False),  # no suffix
        ("login-etl/db", False),
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/db-*", False),
    ],
)
def test_secret_arns_must_be_full(tpl, arn, ok):
    for param in ("DbSecretArn", "ExistingMaskingKeySecretArn"):
        pattern = tpl["Parameters"][param]["AllowedPattern"]
        assert bool(re.fullmatch(pattern, arn)) == ok, (param, arn)
    assert re.fullmatch(tpl["Parameters"]["ExistingMaskingKeySecretArn"]["AllowedPattern"], "")


def test_function_knows_its_dlq_and_metrics_namespace(fn, tpl):
    env = fn["Properties"]["Environment"]["Variables"]
    assert _own(env["DLQ_URL"]) == {"Ref": "LoginDeadLetterQueue"}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert env["POWERTOOLS_SERVICE_NAME"] == "login-etl"
    assert tpl["Parameters"]["MetricsNamespace"]["Default"] == "LoginEtl"


def _sub(template, names):
    """Fn::Sub of a dashboard body with placeholder values."""
    text, variables = template
    values = {"AWS::Region": "us-east-1", **{k: f"<{k}>" for k in variables}, **names}
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], text)


def test_dashboard_shows_rows_rejections_lag_dlq_and_errors(tpl):
    body = tpl["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    dashboard = json.loads(_sub(body, {"Ns": "LoginEtl"}))
    titles = [w["properties"]["title"] for w in dashboard["widgets"]]
    assert titles == [
        "Rows inserted per second",
        "Rejections by reason",
        "Ingest lag (ms)",
        "Dead-letter queue depth",
        "Errors",
        "Failed database writes by class",
        "Backoff",
        "Defects by code (logins stored with them)",
        "Function duration (ms) and throttles",
        "Maintenance (each run)",
        "Table growth (rows a day)",
    ]
    text = json.dumps(dashboard)
    for metric in ["RowsInserted", "Rejected", "IngestLagMs", "ApproximateNumberOfMessagesVisible", "Errors",
                   "BatchFailed", "RecordsBackedOff", "VisibilityChangesFailed", "RefusedToDlq"]:  # fmt: skip
        assert metric in text, metric
    assert "service,reason" in text, "rejections are broken down by the reason dimension"
    assert "service,defect" in text and '"Throttles"' in text
    # Every metric of the namespace the dashboard shows is one the function
    # or maintenance emits (a renamed metric leaves no empty panel behind).
    emitted = (ROOT / "src" / "ingest" / "metrics.rs").read_text() + (ROOT / "src" / "table" / "maintain.rs").read_text()
    shown = {m[1] for w in dashboard["widgets"] for m in w["properties"]["metrics"] if m[0] == "LoginEtl"}
    assert shown and all(f'"{name}"' in emitted for name in shown), sorted(n for n in shown if f'"{name}"' not in emitted)


def test_alarms_on_rejection_rate_and_ingest_lag(tpl):
    rate = tpl["Resources"]["RejectionRateAlarm"]["Properties"]
    ids = {m["Id"]: m for m in rate["Metrics"]}
    assert ids["rejected"]["MetricStat"]["Metric"]["MetricName"] == "Rejected"
    assert ids["received"]["MetricStat"]["Metric"]["MetricName"] == "RecordsReceived"
    assert "rejected / received" in ids["rate"]["Expression"] and ids["rate"]["ReturnData"]
    assert rate["Threshold"] == {"Ref": "RejectionRateAlarmPercent"}
    lag = tpl["Resources"]["IngestLagAlarm"]["Properties"]
    assert lag["MetricName"] == "IngestLagMs" and lag["Namespace"] == {"Ref": "MetricsNamespace"}
    # The parameter is in seconds, the metric in milliseconds.
    assert lag["Threshold"] == {"Fn::Sub": "${IngestLagAlarmSeconds}000"}


@pytest.mark.parametrize("profile", ["masking", "full"])
def test_the_masking_only_profile_has_no_vault_and_tells_the_function_its_profile(profile):
    # EnableVault keeps its default (true): the profile alone decides.
    resources = deployed(Profile=profile)
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["LOGIN_ETL_PROFILE"] == profile
    vault = {"VaultKey", "VaultKeyAlias", "PiiRevealRole"} & set(resources)
    if profile == "masking":
        assert vault == set() and env["VAULT_KMS_KEY_ID"] == ""
    else:
        assert {"VaultKey", "PiiRevealRole"} <= vault
        assert env["VAULT_KMS_KEY_ID"] == {"Fn::GetAtt": ["VaultKey", "Arn"]}
    # Both keep maintenance, its alarms and the erasure key (which a later
    # widening to the full profile keys the erasure list with).
    for always in ["MaintenanceFunction", "PartitionDaysAheadAlarm", "ErasureKeySecret", "MaskingKeySecret"]:
        assert always in resources, always


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_the_function_may_encrypt_into_the_vault_but_only_the_reveal_role_decrypts(enabled):
    resources = deployed(EnableVault=enabled)
    role = resources["LoginEtlRole"]
    kms_actions = [a for st in _statements(role) for a in _as_list(st["Action"]) if a.startswith("kms:")]
    assert kms_actions == [], "the function's IAM policy grants no KMS action; the key policy does"
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    if enabled == "false":
        assert "VaultKey" not in resources and "PiiRevealRole" not in resources
        assert env["VAULT_KMS_KEY_ID"] == "", "no vault: behaviour unchanged"
        return
    assert env["VAULT_KMS_KEY_ID"] == {"Fn::GetAtt": ["VaultKey", "Arn"]}
    key = resources["VaultKey"]
    assert key["DeletionPolicy"] == "Retain" and key["UpdateReplacePolicy"] == "Retain"
    statements = {st["Sid"]: st for st in key["Properties"]["KeyPolicy"]["Statement"]}
    assert set(statements) == {"AccountAdministersTheKey", "FunctionGeneratesDataKeys", "RevealRoleDecrypts"}
    context = {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-pii-vault"}}
    gen, dec = statements["FunctionGeneratesDataKeys"], statements["RevealRoleDecrypts"]
    assert (gen["Action"], gen["Principal"], gen["Condition"]) == (
        "kms:GenerateDataKey", {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}}, context)
    assert (dec["Action"], dec["Principal"], dec["Condition"]) == (
        "kms:Decrypt", {"AWS": {"Fn::GetAtt": ["PiiRevealRole", "Arn"]}}, context)
    admin = statements["AccountAdministersTheKey"]
    assert admin["Principal"] == {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}
    # Wildcards count: kms:Create* would cover kms:CreateGrant, a way to Decrypt.
    for use in ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
                "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant"]:  # fmt: skip
        assert not _allows(admin["Action"], use), f"the account administers the key but cannot {use}"
    # The reveal role: trusted as the parameter says (one role of this
    # account, a session with MFA and a source identity), its DB secret only
    # when given.
    reveal = resources["PiiRevealRole"]["Properties"]
    (trust,) = reveal["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"]["AWS"] == INVESTIGATORS
    assert _trust_widenings(trust, source_identity=True) == []
    assert not any(st["Sid"] == "ReadRevealDbSecret" for st in _statements(resources["PiiRevealRole"]))
    with_secret = deployed(RevealDbSecretArn="arn:aws:secretsmanager:us-east-1:123456789012:secret:reveal-Xy12Ab")
    assert any(st["Sid"] == "ReadRevealDbSecret" for st in _statements(with_secret["PiiRevealRole"]))


# Actions through which a principal can read the vault: Decrypt itself, or
# ways to give itself Decrypt (a grant, a new key policy) or to move the data
# keys under a key it holds.
_VAULT_READING_ACTIONS = ("kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant", "kms:PutKeyPolicy")


def _allows(actions, action):
    """Whether IAM action patterns (wildcards, any case) cover `action`."""
    return any(fnmatch.fnmatchcase(action.lower(), str(p).lower()) for p in _as_list(actions))


def _key_policy_widenings(key):
    """The statements of a KMS key's policy that let anyone read what it
    protects: an Allow to a wildcard principal ("*", {"AWS": "*"}, a list
    holding one; conditions or not) of an action that reads the vault
    (kms:*, "*", kms:Decrypt, ...); an Allow with NotPrincipal or NotAction;
    and any such action for the function's own role (it may only
    GenerateDataKey). No KeyPolicy is the default one: the account only."""
    policy = key["Properties"].get("KeyPolicy")
    if policy is None:
        return []
    if isinstance(policy, str):
        policy = json.loads(policy)
    found = []
    for i, st in enumerate(_as_list(policy.get("Statement", []))):
        if st.get("Effect") != "Allow":
            continue
        sid = st.get("Sid", f"statement {i}")
        if "NotPrincipal" in st or "NotAction" in st:
            found.append(f"{sid}: Allow with NotPrincipal or NotAction")
            continue
        reads = [a for a in _VAULT_READING_ACTIONS if _allows(st.get("Action", []), a)]
        if not reads:
            continue
        principal = st.get("Principal")
        aws = principal.get("AWS") if isinstance(principal, dict) else principal
        if principal == "*" or any(p == "*" or (isinstance(p, str) and "*" in p) for p in _as_list(aws)):
            found.append(f"{sid}: {reads} to any principal")
        elif "LoginEtlRole" in json.dumps(principal) and not _checks_seals_only(st):
            found.append(f"{sid}: {reads} to the function's role")
    return found


def _checks_seals_only(st):
    """A Decrypt the function may have: only in the rebuilt logins' context,
    where what is encrypted is a seal (a digest), never a value."""
    condition = st.get("Condition", {})
    return (_as_list(st.get("Action")) == ["kms:Decrypt"]
            and condition == {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-rebuilt"}})  # fmt: skip


_PROPER_KEY_POLICY = [
    {"Sid": "KeyAdministration", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
     "Principal": {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}},
    {"Sid": "FunctionGeneratesDataKeys", "Effect": "Allow", "Action": "kms:GenerateDataKey", "Resource": "*",
     "Principal": {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}}},
    {"Sid": "RevealDecrypts", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*",
     "Principal": {"AWS": {"Ref": "RevealRoleArn"}},
     "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-pii-vault"}}},
    {"Sid": "NoDecryptWithoutContext", "Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*", "Principal": "*",
     "Condition": {"Null": {"kms:EncryptionContext:purpose": "true"}}},
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, widened",
    [
        (None, False),
        ({"Principal": "*", "Action": "kms:*"}, True),
        ({"Principal": {"AWS": "*"}, "Action": "kms:Decrypt"}, True),
        ({"Principal": {"AWS": [{"Ref": "RevealRoleArn"}, "*"]}, "Action": ["kms:Decrypt*"]}, True),
        ({"Principal": "*", "Action": "*", "Condition": {"StringEquals": {"kms:CallerAccount": "123456789012"}}}, True),
        ({"Principal": {"AWS": "*"}, "Action": "KMS:CreateGrant"}, True),
        ({"NotPrincipal": {"AWS": {"Ref": "RevealRoleArn"}}, "Action": "kms:Encrypt"}, True),
        ({"Principal": {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}}, "Action": "kms:Decrypt"}, True),
        ({"Principal": {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}}, "Action": "kms:Decrypt",
          "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-dlq"}}}, True),
        ({"Principal": {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}}, "Action": "kms:Decrypt",
          "Condition": {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-rebuilt"}}}, False),
        ({"Principal": {"AWS": "*"}, "Action": "kms:DescribeKey"}, False),
    ],
)
def test_the_key_policy_check_flags_widenings_and_accepts_a_proper_policy(extra, widened):
    """The check the vault key's test relies on: a proper policy (account
    administration, GenerateDataKey for the function, Decrypt for a reveal
    role under an encryption-context condition, a Deny to "*") passes, and
    each widening added to it is found."""
    statements = copy.deepcopy(_PROPER_KEY_POLICY)
    if extra:
        statements.append({"Sid": "Added", "Effect": "Allow", "Resource": "*", **extra})
    key = {"Properties": {"KeyPolicy": {"Version": "2012-10-17", "Statement": statements}}}
    assert bool(_key_policy_widenings(key)) == widened, _key_policy_widenings(key)
    as_text = {"Properties": {"KeyPolicy": json.dumps(key["Properties"]["KeyPolicy"])}}
    assert _key_policy_widenings(as_text) == _key_policy_widenings(key)


def _decrypting_principals(resources, context):
    """Who may kms:Decrypt (or a wildcard covering it) under the encryption
    context `context`, in any KMS key policy or IAM role of the deployed
    template: a statement without a purpose condition counts for every
    context."""
    found = set()
    for name, r in resources.items():
        if r["Type"] == "AWS::KMS::Key":
            statements = [(st, json.dumps(st.get("Principal"))) for st in r["Properties"]["KeyPolicy"]["Statement"]]
        elif r["Type"] == "AWS::IAM::Role":
            statements = [(st, name) for st in _statements(r)]
        else:
            continue
        for st, who in statements:
            purpose = json.dumps(st.get("Condition", {}))
            if st.get("Effect") == "Allow" and _allows(st.get("Action", []), "kms:Decrypt") and (
                    "kms:EncryptionContext:purpose" not in purpose or context in purpose):  # fmt: skip
                found.add(who)
    return found


@pytest.mark.parametrize("profile", ["masking", "full"])
@pytest.mark.parametrize("operator", [True, False])
def test_every_profile_seals_dead_letter_originals_only_the_dlq_operator_opens(profile, operator):
    """issue 61: a masking-only stack keeps each rejected message's original
    too, under a KMS key of its own (DlqKey): the function may only
    generate its data keys (in the dead-letter context), and no principal
    but DlqOperatorRole may decrypt under that context, in any key policy
    or role of the stack (the account administers the key, and cannot
    Decrypt)."""
    params = {"Profile": profile}
    if operator:
        params["DlqOperatorTrustedPrincipalArn"] = OPERATOR
    resources = deployed(**params)
    key = resources["DlqKey"]
    assert key["DeletionPolicy"] == "Retain" and key["Properties"]["EnableKeyRotation"] is True
    env = resources["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DLQ_KMS_KEY_ID"] == {"Fn::GetAtt": ["DlqKey", "Arn"]}
    statements = {st["Sid"]: st for st in key["Properties"]["KeyPolicy"]["Statement"]}
    seal = statements["FunctionSealsDeadLetterCopies"]
    assert (seal["Action"], seal["Principal"], seal["Condition"]) == (
        "kms:GenerateDataKey", {"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}},
        {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-dlq"}})  # fmt: skip
    assert _key_policy_widenings(key) == []
    op = json.dumps({"AWS": {"Fn::GetAtt": ["DlqOperatorRole", "Arn"]}})
    want = {op, "DlqOperatorRole"} if operator else set()
    assert _decrypting_principals(resources, "login-etl-dlq") == want
    # A login rebuilt from a copy that kept no original: sealed by the DLQ
    # operator alone (Encrypt), checked by the function alone (Decrypt),
    # both in a context of their own.
    function = json.dumps({"AWS": {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}})
    assert _decrypting_principals(resources, "login-etl-rebuilt") == {function}
    sealers = {json.dumps(st["Principal"]) for st in statements.values()
               if _allows(_as_list(st.get("Action", [])), "kms:Encrypt")}  # fmt: skip
    assert sealers == ({op} if operator else set())
    assert all("login-etl-rebuilt" in json.dumps(st.get("Condition", {})) for st in statements.values()
               if _allows(_as_list(st.get("Action", [])), "kms:Encrypt"))  # fmt: skip


def test_no_kms_key_policy_lets_anyone_but_named_roles_read_the_vault():
    """On the deployed (SAM-transformed) template with the vault on: no
    statement of VaultKey's key policy (nor of any other KMS key's) allows
    kms:*, kms:Decrypt or a way to them to "*", and none gives them to the
    function's own role."""
    resources = deployed(EnableVault="true")
    keys = {k: v for k, v in resources.items() if v["Type"] == "AWS::KMS::Key"}
    assert "VaultKey" in keys
    for name, key in keys.items():
        assert _key_policy_widenings(key) == [], name


@pytest.mark.parametrize("retention", [0, 90])
def test_maintenance_runs_the_same_binary_on_a_schedule_with_its_own_role_and_secret(tpl, retention):
    # Maintenance nobody can forget: the maintain role's secret is required
    # (with DbAuth=iam, its user: test_iam_authentication_...), and nothing
    # of maintenance depends on a condition.
    param = tpl["Parameters"]["MaintainDbSecretArn"]
    assert _rules_hold(tpl, {**_defaults(tpl), **REQUIRED, "MaintainDbSecretArn": ""}) == ["PasswordsNeedTheSecrets"]
    assert re.fullmatch(param["AllowedPattern"], MAINTAIN_SECRET_ARN)
    for name in ["MaintenanceFunction", "MaintenanceRole", "MaintenanceLogGroup", "DefaultPartitionRowsAlarm",
                 "MaintenanceErrorsAlarm", "PartitionDaysAheadAlarm"]:  # fmt: skip
        assert "Condition" not in tpl["Resources"][name], name
    resources = deployed(MaintainDbSecretArn=MAINTAIN_SECRET_ARN, RetentionDays=retention)
    fn = resources["MaintenanceFunction"]
    main = resources["LoginEtlFunction"]
    # The same build: one binary, one runtime, one architecture.
    for key in ("Runtime", "Handler", "Architectures", "Code"):
        assert fn["Properties"][key] == main["Properties"][key], key
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["LOGIN_ETL_TASK"] == "maintain"
    assert env["DB_SECRET_ID"] == MAINTAIN_SECRET_ARN
    assert env["RETENTION_DAYS"] == ("" if retention == 0 else retention)
    assert env["PREMAKE_DAYS"] == 7
    assert "MASKING_KEY_SECRET_ID" not in env, "maintenance never sees the masking key"
    assert "ERASURE_KEY_SECRET_ID" not in env, "nor the erasure key"
    assert fn["Properties"]["Role"] == {"Fn::GetAtt": ["MaintenanceRole", "Arn"]}
    statements = {st["Sid"]: st for st in _statements(resources["MaintenanceRole"])}
    assert statements["ReadOwnSecrets"]["Resource"] == [MAINTAIN_SECRET_ARN]
    assert statements["WriteOwnLogs"]["Resource"] == {"Fn::GetAtt": ["MaintenanceLogGroup", "Arn"]}
    assert set(statements) == {"ReadOwnSecrets", "WriteOwnLogs"}
    # The function's role cannot read the maintain role's secret.
    ingest = {st["Sid"]: st for st in _statements(resources["LoginEtlRole"])}
    assert MAINTAIN_SECRET_ARN not in json.dumps(ingest)
    # EventBridge invokes it on the schedule.
    (rule,) = [r for r in resources.values() if r["Type"] == "AWS::Events::Rule"]
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 hour)"
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["MaintenanceFunction", "Arn"]}
    alarm = resources["DefaultPartitionRowsAlarm"]["Properties"]
    assert alarm["MetricName"] == "DefaultPartitionRows" and alarm["TreatMissingData"] == "notBreaching"
    assert resources["MaintenanceErrorsAlarm"]["Properties"]["Dimensions"][0]["Value"] == {"Ref": "MaintenanceFunction"}


# -- The account as the insider: queues, secrets, trust ---------------------

OPERATOR = "arn:aws:iam::123456789012:role/dlq-operators"
PRODUCERS = "arn:aws:iam::123456789012:role/app-a,arn:aws:iam::123456789012:role/app-b"
KEY_OPERATORS = "arn:aws:iam::123456789012:role/key-operators"
FUNCTION_ROLE = {"Fn::GetAtt": ["LoginEtlRole", "Arn"]}


def _trust_widenings(st, source_identity=False):
    """What lets more than one named role of this account, with MFA (and a
    source identity, where asked), assume a role."""
    found = []
    principal = st.get("Principal", {})
    aws = principal.get("AWS") if isinstance(principal, dict) else principal
    if principal == "*" or any(not isinstance(p, str) or "*" in p or p.endswith(":root") for p in _as_list(aws)):
        found.append(f"principal {aws!r}: not one named role")
    cond = st.get("Condition", {})
    if cond.get("Bool", {}).get("aws:MultiFactorAuthPresent") != "true":
        found.append("no MFA condition")
    if cond.get("StringEquals", {}).get("aws:PrincipalAccount") != "AWS::AccountId" and cond.get(
        "StringEquals", {}
    ).get("aws:PrincipalAccount") != {"Ref": "AWS::AccountId"}:
        found.append("not limited to this account")
    if source_identity and cond.get("StringLike", {}).get("sts:SourceIdentity") != "?*":
        found.append("no source identity required")
    return found


def _deny_unless(policy, action, key="aws:PrincipalArn"):
    """The principals a policy's Deny statements leave `action` to (their
    StringNotEquals on `key`), or None when no Deny covers it."""
    allowed = None
    for st in _as_list(policy["Statement"]):
        if st.get("Effect") != "Deny" or st.get("Principal") != "*" or not _allows(st["Action"], action):
            continue
        cond = st.get("Condition", {})
        if not cond:
            allowed = []  # denied to everyone
        elif "StringNotEquals" in cond and key in cond["StringNotEquals"]:
            names = _as_list(cond["StringNotEquals"][key])
            allowed = names if allowed is None else [n for n in allowed if n in names]
    return allowed


def _queue_policy_widenings(policy, consumers, senders):
    """What lets anyone but `consumers` receive, delete, change visibility of
    or purge the queue's messages, anyone but `senders` (or, for the string
    "account", any principal of another account) send to it, or anyone
    read it over plain HTTP."""
    found = []
    statements = _as_list(policy["Statement"])
    if not any(
        st.get("Effect") == "Deny" and st.get("Principal") == "*" and _allows(st["Action"], "sqs:ReceiveMessage")
        and st.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        for st in statements
    ):  # fmt: skip
        found.append("no TLS-only Deny")
    for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:PurgeQueue"]:
        left = _deny_unless(policy, action)
        if left is None or sorted(map(json.dumps, left)) != sorted(map(json.dumps, consumers)):
            found.append(f"{action} left to {left}, not {consumers}")
    if senders == "account":
        left = _deny_unless(policy, "sqs:SendMessage", "aws:PrincipalAccount")
        if left != [{"Ref": "AWS::AccountId"}]:
            found.append(f"sqs:SendMessage from other accounts ({left})")
    else:
        left = _deny_unless(policy, "sqs:SendMessage")
        if left is None or sorted(map(json.dumps, left)) != sorted(map(json.dumps, senders)):
            found.append(f"sqs:SendMessage left to {left}, not {senders}")
    for st in statements:
        if st.get("Effect") == "Allow" and (st.get("Principal") == "*" or "*" in json.dumps(st.get("Principal"))):
            found.append(f"{st.get('Sid')}: Allow to any principal")
    return found


def _queue_policy(resources, queue):
    (policy,) = [
        r["Properties"]["PolicyDocument"]
        for r in resources.values()
        if r["Type"] == "AWS::SQS::QueuePolicy" and r["Properties"]["Queues"] == [{"Ref": queue}]
    ]
    return policy


@pytest.mark.parametrize("operator", [False, True])
@pytest.mark.parametrize("producers", [False, True])
def test_both_queues_are_closed_to_all_but_named_roles(operator, producers):
    params = {}
    if operator:
        params["DlqOperatorTrustedPrincipalArn"] = OPERATOR
    if producers:
        params["ProducerPrincipalArns"] = PRODUCERS
    resources = deployed(**params)
    op_role = {"Fn::GetAtt": ["DlqOperatorRole", "Arn"]}
    senders = "account"
    if producers:
        senders = PRODUCERS.split(",") + ([op_role] if operator else [])
    login = _queue_policy(resources, "LoginQueue")
    assert _queue_policy_widenings(login, [FUNCTION_ROLE], senders) == []
    dlq = _queue_policy(resources, "LoginDeadLetterQueue")
    # Without an operator, the function's role (which may not receive from
    # it: its own policy names the login queue only) holds the place: nobody.
    assert _queue_policy_widenings(dlq, [op_role if operator else FUNCTION_ROLE], [FUNCTION_ROLE]) == []
    # No SQS redrive of the masked copies, by anyone: login-etl dlq-redrive
    # sends the originals back.
    for action in ["sqs:StartMessageMoveTask", "sqs:CancelMessageMoveTask"]:
        assert _deny_unless(dlq, action) == []
    assert ("DlqOperatorRole" in resources) == operator
    if operator:
        role = resources["DlqOperatorRole"]
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"]["AWS"] == OPERATOR and _trust_widenings(trust) == []
        by_sid = {st["Sid"]: st for st in _statements(role)}
        assert by_sid["ReadTheDeadLetterQueue"]["Resource"] == {"Fn::GetAtt": ["LoginDeadLetterQueue", "Arn"]}
        assert not any("MoveTask" in a for a in by_sid["ReadTheDeadLetterQueue"]["Action"])
        assert by_sid["RedriveToTheLoginQueue"]["Resource"] == {"Fn::GetAtt": ["LoginQueue", "Arn"]}
        unseal = by_sid["UnsealDeadLetterCopies"]
        assert unseal["Action"] == "kms:Decrypt"
        assert unseal["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "login-etl-dlq"}}
        key = {st["Sid"]: st for st in resources["DlqKey"]["Properties"]["KeyPolicy"]["Statement"]}
        assert key["DlqOperatorUnseals"]["Principal"] == {"AWS": op_role}
        assert key["DlqOperatorUnseals"]["Condition"] == unseal["Condition"]


@pytest.mark.parametrize(
    "widen, what",
    [
        (lambda p: p["Statement"].pop(0), "TLS"),
        (lambda p: p["Statement"][1]["Condition"]["StringNotEquals"].update({"aws:PrincipalArn": [FUNCTION_ROLE, "arn:aws:iam::123456789012:role/x"]}), "ReceiveMessage"),
        (lambda p: p["Statement"][1].update({"Action": ["sqs:ReceiveMessage"]}), "DeleteMessage"),
        (lambda p: p["Statement"].pop(2), "SendMessage"),
        (lambda p: p["Statement"].append({"Sid": "Open", "Effect": "Allow", "Principal": "*", "Action": "sqs:*"}), "Allow to any"),
    ],
)  # fmt: skip
def test_the_queue_policy_check_flags_each_widening(widen, what):
    login = copy.deepcopy(_queue_policy(deployed(), "LoginQueue"))
    assert _queue_policy_widenings(login, [FUNCTION_ROLE], "account") == []
    widen(login)
    found = _queue_policy_widenings(login, [FUNCTION_ROLE], "account")
    assert any(what in f for f in found), found


def _secret_readers(resources, secret):
    (policy,) = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::SecretsManager::ResourcePolicy" and r["Properties"]["SecretId"] == secret
    ]
    assert policy["BlockPublicPolicy"] is True
    doc = policy["ResourcePolicy"]
    assert not any(st["Effect"] == "Allow" for st in _as_list(doc["Statement"])), "no Allow in a secret's policy"
    return _deny_unless(doc, "secretsmanager:GetSecretValue")


@pytest.mark.parametrize("operators", [False, True])
def test_the_keys_and_the_database_secret_are_read_by_named_roles_only(operators):
    params = {"KeyOperatorPrincipalArns": KEY_OPERATORS} if operators else {}
    resources = deployed(**params)
    readers = [FUNCTION_ROLE] + ([KEY_OPERATORS] if operators else [])
    for secret in [{"Ref": "MaskingKeySecret"}, {"Ref": "ErasureKeySecret"}]:
        assert _secret_readers(resources, secret) == readers, secret
        (policy,) = [
            r for r in resources.values()
            if r["Type"] == "AWS::SecretsManager::ResourcePolicy" and r["Properties"]["SecretId"] == secret
        ]  # fmt: skip
        # Adding a version (a rotation) is the readers' too, and nobody's else.
        assert _deny_unless(policy["Properties"]["ResourcePolicy"], "secretsmanager:PutSecretValue") == readers
    assert _secret_readers(resources, FULL_SECRET_ARN) == [FUNCTION_ROLE]
    with_rotation = deployed(DbSecretReaderPrincipalArns="arn:aws:iam::123456789012:role/rotator")
    assert _secret_readers(with_rotation, FULL_SECRET_ARN) == [FUNCTION_ROLE, "arn:aws:iam::123456789012:role/rotator"]
    unprotected = deployed(ProtectDbSecret="false")
    assert not any(
        r["Type"] == "AWS::SecretsManager::ResourcePolicy" and r["Properties"]["SecretId"] == FULL_SECRET_ARN
        for r in unprotected.values()
    )
    # A widened policy fails the check: a second principal in the Deny's exception.
    widened = copy.deepcopy(resources)
    for r in widened.values():
        if r["Type"] == "AWS::SecretsManager::ResourcePolicy":
            st = r["Properties"]["ResourcePolicy"]["Statement"][0]
            st["Condition"]["StringNotEquals"]["aws:PrincipalArn"] = readers + ["arn:aws:iam::123456789012:role/x"]
    assert _secret_readers(widened, FULL_SECRET_ARN) != [FUNCTION_ROLE]


@pytest.mark.parametrize(
    "arn, ok",
    [
        (INVESTIGATORS, True),
        ("arn:aws:iam::123456789012:role/path/investigators", True),
        ("", True),
        ("*", False),
        ("arn:aws:iam::123456789012:root", False),
        ("arn:aws:iam::*:role/x", False),
        ("arn:aws:iam::123456789012:user/alice", False),
    ],
)
def test_the_reveal_and_dlq_trust_parameters_take_one_role(tpl, arn, ok):
    for name in ["RevealTrustedPrincipalArn", "DlqOperatorTrustedPrincipalArn"]:
        pattern = tpl["Parameters"][name]["AllowedPattern"]
        assert bool(re.fullmatch(pattern, arn)) == ok, (name, arn)


@pytest.mark.parametrize(
    "widen",
    [
        lambda t: t.update({"Principal": {"AWS": "arn:aws:iam::123456789012:root"}}),
        lambda t: t.update({"Principal": "*"}),
        lambda t: t["Condition"].pop("Bool"),
        lambda t: t["Condition"].pop("StringEquals"),
        lambda t: t["Condition"].pop("StringLike"),
    ],
)
def test_the_trust_check_flags_each_widening(widen):
    (trust,) = deployed()["PiiRevealRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    trust = copy.deepcopy(trust)
    assert _trust_widenings(trust, source_identity=True) == []
    widen(trust)
    assert _trust_widenings(trust, source_identity=True) != []


def test_a_change_to_the_vault_key_alarms_and_the_logs_mask_ip_addresses():
    resources = deployed(AlarmTopicArn="arn:aws:sns:us-east-1:123456789012:alarms")
    rule = resources["VaultKeyChangedRule"]["Properties"]
    detail = rule["EventPattern"]["detail"]
    assert {"PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey", "CreateGrant"} <= set(detail["eventName"])
    assert {"Fn::GetAtt": ["VaultKey", "Arn"]} in detail["requestParameters"]["keyId"]
    assert rule["Targets"] == [{"Id": "alarm-topic", "Arn": "arn:aws:sns:us-east-1:123456789012:alarms"}]
    assert "VaultKeyChangedRule" not in deployed(), "no topic, no rule"
    with_maintenance = deployed(MaintainDbSecretArn=MAINTAIN_SECRET_ARN)
    for group in ["LoginEtlLogGroup", "MaintenanceLogGroup"]:
        policy = with_maintenance[group]["Properties"]["DataProtectionPolicy"]
        identifiers = {i for st in policy["Statement"] for i in st["DataIdentifier"]}
        assert identifiers == {"arn:aws:dataprotection::aws:data-identifier/IpAddress"}
        assert any("Deidentify" in st["Operation"] for st in policy["Statement"]), group


@pytest.mark.parametrize(
    "extra, ok",
    [
        ("", True),
        ("app_build", True),
        ("app_build,os_version,x_y", True),
        ("os.version", False),
        ("x-y", False),
        ("app_build, os", False),  # the function trims; the stack keeps the list exact
        ("1st", False),
        ("email address", False),
        (",".join(f"f{i}" for i in range(17)), False),
    ],
)
def test_the_contract_settings_reach_the_function_and_extra_fields_are_names(fn, tpl, extra, ok):
    env = fn["Properties"]["Environment"]["Variables"]
    assert env["CONTRACT"] == {"Ref": "Contract"}
    assert tpl["Parameters"]["Contract"]["AllowedValues"] == ["lenient", "strict"]
    assert tpl["Parameters"]["Contract"]["Default"] == "lenient", "a login is kept by default"
    assert env["UNKNOWN_FIELDS"] == {"Ref": "UnknownFields"}
    assert env["EXTRA_FIELDS"] == {"Ref": "ExtraFields"}
    assert tpl["Parameters"]["UnknownFields"]["AllowedValues"] == ["ignore", "reject"]
    assert tpl["Parameters"]["UnknownFields"]["Default"] == "ignore"
    assert bool(re.fullmatch(tpl["Parameters"]["ExtraFields"]["AllowedPattern"], extra)) == ok


def test_make_deploy_needs_no_root_and_pins_no_region():
    """`make deploy` installs the build tools only (pip into .venv, a rustup
    target): no apt-get, no sudo, no test tool; each samconfig.toml
    environment is its own stack, with no region pinned."""
    import subprocess
    import tomllib

    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    envs = {name for name in config if name != "version"}
    assert {"default", "staging", "prod"} <= envs
    stacks = {config[e]["global"]["parameters"]["stack_name"] for e in envs}
    assert len(stacks) == len(envs), "one stack per environment"
    for e in envs:
        for section in config[e].values():
            assert "region" not in section, f"samconfig.toml [{e}] pins a region"
        assert config[e]["deploy"]["parameters"]["capabilities"] == "CAPABILITY_IAM"
    # As on a deployer's machine whose region is in the AWS profile.
    clean = {k: v for k, v in os.environ.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION", "MAKEFLAGS")}
    for env in envs:
        plan = subprocess.run(["make", "-n", "-B", "deploy", f"SAM_ENV={env}"], cwd=ROOT, capture_output=True,
                              text=True, check=True, env=clean).stdout  # fmt: skip
        # release/deploy.sh runs sam deploy, reusing a deleted stack's keys.
        assert "release/deploy.sh" in plan and f"-- --config-env {env}" in plan
        for needless in ("apt-get", "sudo", "pgbouncer", "moto", "pytest", "localstack"):
            assert needless not in plan, f"make deploy runs {needless}"
        assert "env -u AWS_DEFAULT_REGION" in plan, "the Makefile's offline region would pin the deploy's"


def test_make_deploy_packages_the_ca_bundle_beside_each_bootstrap(tmp_path):
    """`make deploy DB_CA_BUNDLE=global-bundle.pem` copies the RDS bundle
    beside each function's bootstrap sam built (its name is the stack's
    DbCaBundleFile); a file that holds no certificate is refused with where
    the bundle comes from; without DB_CA_BUNDLE nothing is packaged."""
    import subprocess

    build = tmp_path / "build"
    for name in ("LoginEtlFunction", "MaintenanceFunction"):
        (build / name).mkdir(parents=True)
        (build / name / "bootstrap").write_text("#!/bin/sh\n")
    (build / "NotAFunction").mkdir()
    pem = tmp_path / "global-bundle.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")
    clean = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}

    def package(bundle):
        return subprocess.run(["make", "--no-print-directory", "package-ca-bundle", f"DB_CA_BUNDLE={bundle}",
                               f"SAM_BUILD_DIR={build}"], cwd=ROOT, capture_output=True, text=True, env=clean)  # fmt: skip

    done = package(pem)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("LoginEtlFunction", "MaintenanceFunction"):
        assert (build / name / "global-bundle.pem").read_text() == pem.read_text(), name
    assert not (build / "NotAFunction" / "global-bundle.pem").exists()
    assert "DbCaBundleFile must be global-bundle.pem" in done.stdout
    junk = tmp_path / "bundle.txt"
    junk.write_text("not a certificate")
    refused = package(junk)
    assert refused.returncode == 2 and "truststore.pki.rds.amazonaws.com" in refused.stderr, refused.stderr
    plans = {given: subprocess.run(["make", "-n", "-B", "deploy", *([f"DB_CA_BUNDLE={pem}"] if given else [])],
                                   cwd=ROOT, capture_output=True, text=True, check=True, env=clean).stdout
             for given in (True, False)}  # fmt: skip
    packaging = "scripts/package-ca-bundle.sh"
    assert packaging in plans[True] and packaging not in plans[False], plans


def test_partitions_running_out_alarm_in_every_stack():
    """The function's PartitionDaysAhead reading alarms under two days, in
    every stack, quiet without traffic; PremakeDays cannot be set where it
    would always fire."""
    resources = deployed()
    alarm = resources["PartitionDaysAheadAlarm"]["Properties"]
    assert alarm["MetricName"] == "PartitionDaysAhead"
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == ("Minimum", "LessThanThreshold", 2)
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "login-etl"}]
    out, _ = transformed()
    assert int(out["Parameters"]["PremakeDays"]["MinValue"]) > alarm["Threshold"]
    for name in ["MaintenanceFunction", "DefaultPartitionRowsAlarm", "MaintenanceErrorsAlarm"]:
        assert name in resources, name


EXISTING_QUEUE = "arn:aws:sqs:eu-west-1:210987654321:producers-logins"
EXISTING_DLQ = "arn:aws:sqs:eu-west-1:210987654321:producers-logins-dlq"


@pytest.mark.parametrize("operator", ["", "arn:aws:iam::123456789012:role/dlq-operators"])
def test_an_existing_queue_is_told_the_statements_the_stacks_own_queues_carry(operator):
    """The stack cannot change a queue it did not make: its outputs print
    the statements for the operator to add, and they are the stack's own
    queues' statements (the producers' and the deploy's rules aside: those
    are the queue owner's), aimed at the given queues."""
    placeholders = {"LoginEtlRole": "ROLE:function", "DlqOperatorRole": "ROLE:dlq-operator",
                    "LoginQueue": EXISTING_QUEUE, "LoginDeadLetterQueue": EXISTING_DLQ}  # fmt: skip

    def plain(node):
        if isinstance(node, list):
            return [plain(n) for n in node]
        if isinstance(node, dict):
            if list(node) == ["Fn::GetAtt"]:
                return placeholders[node["Fn::GetAtt"][0]]
            return {k: plain(v) for k, v in node.items()}
        return node

    own = deployed(DlqOperatorTrustedPrincipalArn=operator)
    out, values = transformed(ExistingQueueArn=EXISTING_QUEUE, ExistingDlqArn=EXISTING_DLQ,
                              DlqOperatorTrustedPrincipalArn=operator)  # fmt: skip
    printed = {}
    for name, queue in (("ExistingQueuePolicyStatements", "LoginQueuePolicy"), ("ExistingDlqPolicyStatements", "LoginDeadLetterQueuePolicy")):
        sub = out["Outputs"][name]["Value"]["Fn::Sub"]
        text, names = (sub, {}) if isinstance(sub, str) else (sub[0], plain(_evaluate(sub[1], values, out["Conditions"])))
        for k, v in {"LoginEtlRole.Arn": placeholders["LoginEtlRole"], **values, **names}.items():
            text = text.replace("${%s}" % k, str(v))
        assert "${" not in text, text
        printed[queue] = {st.pop("Sid").removeprefix("LoginEtl"): st for st in json.loads(text)}
    for queue, skipped in (("LoginQueuePolicy", {"OnlyNamedProducersSend", "OnlyThisAccountSends"}), ("LoginDeadLetterQueuePolicy", set())):
        statements = plain(own[queue]["Properties"]["PolicyDocument"]["Statement"])
        expected = {st.pop("Sid"): st for st in statements if st["Sid"] not in skipped | {"OnlyTheDeployRewritesThisPolicy"}}
        assert printed[queue] == expected, queue
    assert 'ROLE:dlq-operator' in json.dumps(printed) if operator else 'ROLE:dlq-operator' not in json.dumps(printed)
    # Printed only for existing queues: the stack's own carry them already.
    own_out, own_values = transformed()
    for name in ("ExistingQueuePolicyStatements", "ExistingDlqPolicyStatements"):
        condition = own_out["Outputs"][name]["Condition"]
        assert not _condition(condition, own_values, own_out["Conditions"])
        assert _condition(condition, values, out["Conditions"])


def test_an_existing_queue_is_wired_everywhere_and_no_queue_is_made():
    """With ExistingQueueArn and ExistingDlqArn the stack makes no queue and
    no queue policy (the queues keep their own), and every reference the
    stack's own queues had goes to the given ones: the mapping, the
    function's permissions and DLQ, the DLQ operator, the alarms, the
    dashboard, the outputs. One without the other fails validation."""
    own = deployed()
    mine = deployed(ExistingQueueArn=EXISTING_QUEUE, ExistingDlqArn=EXISTING_DLQ)
    made = {"LoginQueue", "LoginDeadLetterQueue", "LoginQueuePolicy", "LoginDeadLetterQueuePolicy"}
    assert made <= set(own) and not made & set(mine)
    text = json.dumps(mine)
    # No Ref or GetAtt to a queue the stack would have made.
    assert '"LoginQueue"' not in text and '"LoginDeadLetterQueue"' not in text
    (esm,) = [r for r in mine.values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert esm["Properties"]["EventSourceArn"] == EXISTING_QUEUE
    statements = {st["Sid"]: st for st in _statements(mine["LoginEtlRole"])}
    assert statements["ConsumeLoginQueue"]["Resource"] == EXISTING_QUEUE
    assert statements["SendRejectsToDeadLetterQueue"]["Resource"] == EXISTING_DLQ
    env = mine["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DLQ_URL"] == "https://sqs.eu-west-1.${AWS::URLSuffix}/210987654321/producers-logins-dlq"
    assert env["SOURCE_QUEUE_URL"] == "https://sqs.eu-west-1.${AWS::URLSuffix}/210987654321/producers-logins"
    # Each SQS metric an alarm reads, plain or inside its metric math.
    stats = [m["MetricStat"]["Metric"] for a in mine.values() if a["Type"] == "AWS::CloudWatch::Alarm"
             for m in a["Properties"].get("Metrics", []) if "MetricStat" in m]
    stats += [a["Properties"] for a in mine.values() if a["Type"] == "AWS::CloudWatch::Alarm"
              and "MetricName" in a["Properties"]]
    names = {m["MetricName"]: m["Dimensions"][0]["Value"] for m in stats if m.get("Namespace") == "AWS/SQS"}  # fmt: skip
    assert names == {"ApproximateNumberOfMessagesVisible": "producers-logins-dlq",
                     "ApproximateAgeOfOldestMessage": "producers-logins"}  # fmt: skip
    out, values = transformed(ExistingQueueArn=EXISTING_QUEUE, ExistingDlqArn=EXISTING_DLQ)
    conditions = out["Conditions"]
    outputs = _evaluate(out["Outputs"], values, conditions)
    assert outputs["QueueUrl"]["Value"].endswith("/210987654321/producers-logins")
    tpl_ = cfn_yaml.load(str(ROOT / "template.yaml"))
    base = {**_defaults(tpl_), **REQUIRED}
    assert _rules_hold(tpl_, {**base, "ExistingQueueArn": EXISTING_QUEUE, "ExistingDlqArn": EXISTING_DLQ}) == []
    assert _rules_hold(tpl_, {**base, "ExistingQueueArn": EXISTING_QUEUE}) == ["ExistingQueuesTogether"]
    assert _rules_hold(tpl_, {**base, "ExistingDlqArn": EXISTING_DLQ}) == ["ExistingQueuesTogether"]
    pattern = tpl_["Parameters"]["ExistingQueueArn"]["AllowedPattern"]
    for ok in ["", EXISTING_QUEUE, EXISTING_QUEUE + ".fifo"]:
        assert re.fullmatch(pattern, ok), ok
    for bad in ["producers-logins", "https://sqs.eu-west-1.amazonaws.com/210987654321/producers-logins", "*"]:
        assert not re.fullmatch(pattern, bad), bad


DEPLOYERS = "arn:aws:iam::123456789012:role/ci-deploy"


@pytest.mark.parametrize("deployers", [False, True])
def test_the_policies_deny_their_own_rewrite_but_to_the_deploy_and_an_alarm_records_it(deployers):
    """issue 63: the maintain role's secret is read by the maintenance
    role alone (as the function's by the function's); with
    DeployPrincipalArns, no other principal of the account may rewrite or
    delete a queue's or a secret's policy (PowerUserAccess lifts only what
    IAM allows: a Deny in the resource's own policy holds); with an alarm
    topic, an EventBridge rule reports those calls."""
    params = {"AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:alarms"}
    if deployers:
        params["DeployPrincipalArns"] = DEPLOYERS
    resources = deployed(**params)
    assert _secret_readers(resources, MAINTAIN_SECRET_ARN) == [{"Fn::GetAtt": ["MaintenanceRole", "Arn"]}]
    secrets = [r for r in resources.values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy"]
    queues = [r for r in resources.values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    assert len(secrets) == 4 and len(queues) == 2, (len(secrets), len(queues))
    for r in secrets:
        for action in ("secretsmanager:PutResourcePolicy", "secretsmanager:DeleteResourcePolicy",
                       "secretsmanager:DeleteSecret", "secretsmanager:UpdateSecretVersionStage"):  # fmt: skip
            allowed = _deny_unless(r["Properties"]["ResourcePolicy"], action)
            assert allowed == ([DEPLOYERS] if deployers else None), (r["Properties"]["SecretId"], action, allowed)
    for r in queues:
        for action in ("sqs:SetQueueAttributes", "sqs:AddPermission", "sqs:RemovePermission"):
            allowed = _deny_unless(r["Properties"]["PolicyDocument"], action)
            assert allowed == ([DEPLOYERS] if deployers else None), (action, allowed)
    rule = resources["AccessPolicyChangedRule"]["Properties"]
    pattern = json.dumps(rule["EventPattern"])
    for name in ("PutResourcePolicy", "DeleteResourcePolicy", "DeleteSecret", "SetQueueAttributes", "AddPermission"):
        assert name in pattern, name
    assert FULL_SECRET_ARN in pattern and MAINTAIN_SECRET_ARN in pattern
    assert rule["Targets"] == [{"Id": "alarm-topic", "Arn": params["AlarmTopicArn"]}]
    assert "prefix" not in pattern, "no stack setup: only the secrets given"
    # The stack's setup made the roles' secrets: every <stack>/<role>, by ARN or by name.
    set_up = deployed(**{**params, **SETUP})["AccessPolicyChangedRule"]["Properties"]["EventPattern"]
    (secrets_pattern,) = [p for p in set_up["$or"] if p["source"] == ["aws.secretsmanager"]]
    prefixes = [i["prefix"] for i in secrets_pattern["detail"]["requestParameters"]["secretId"] if isinstance(i, dict) and "prefix" in i]
    assert prefixes == [{"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${AWS::StackName}/"},
                        {"Fn::Sub": "${AWS::StackName}/"}], prefixes  # fmt: skip


# -- Alarms that page on what is new ---------------------------------------


def _metric_math(expression, series):
    """CloudWatch metric math over aligned series, for the functions the
    template's alarms use: FILL(x, c), DIFF(x), IF(cond, a, b), +, >,
    numbers and metric ids (None: no data point)."""
    import re

    tokens = re.findall(r"[A-Za-z_][A-Za-z_0-9]*|\d+(?:\.\d+)?|[(),+>]", expression)
    n = len(next(iter(series.values())))
    pos = 0

    def take(expected=None):
        nonlocal pos
        tok = tokens[pos]
        assert expected is None or tok == expected, (tok, expected, expression)
        pos += 1
        return tok

    def atom():
        tok = take()
        if tok == "(":
            value = expr()
            take(")")
            return value
        if re.fullmatch(r"\d+(?:\.\d+)?", tok):
            return [float(tok)] * n
        if tok in ("FILL", "DIFF", "IF"):
            take("(")
            args = [expr()]
            while tokens[pos] == ",":
                take(",")
                args.append(expr())
            take(")")
            if tok == "FILL":
                return [args[1][i] if v is None else v for i, v in enumerate(args[0])]
            if tok == "DIFF":
                x = args[0]
                return [None] + [None if a is None or b is None else b - a for a, b in zip(x, x[1:])]
            return [a if c else b for c, a, b in zip(*args)]
        return list(series[tok])

    def summed():
        value = atom()
        while pos < len(tokens) and tokens[pos] == "+":
            take("+")
            right = atom()
            value = [None if a is None or b is None else a + b for a, b in zip(value, right)]
        return value

    def expr():
        value = summed()
        if pos < len(tokens) and tokens[pos] == ">":
            take(">")
            right = summed()
            value = [a is not None and b is not None and a > b for a, b in zip(value, right)]
        return value

    out = expr()
    assert pos == len(tokens), expression
    return out


def test_the_dlq_alarm_pages_on_each_new_arrival_not_on_depth(tpl):
    alarm = tpl["Resources"]["DeadLetterQueueAlarm"]["Properties"]
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    (returned,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    names = {i: m["MetricStat"]["Metric"]["MetricName"] for i, m in metrics.items() if "MetricStat" in m}
    assert sorted(names.values()) == ["ApproximateNumberOfMessagesVisible", "RefusedToDlq", "SentToDlq"]
    by_name = {v: k for k, v in names.items()}
    assert (alarm["ComparisonOperator"], alarm["Threshold"], alarm["TreatMissingData"]) == (
        "GreaterThanThreshold", 0, "notBreaching")
    assert alarm["OKActions"] == alarm["AlarmActions"]

    def states(depth, sent, refused):
        values = _metric_math(returned["Expression"], {
            by_name["ApproximateNumberOfMessagesVisible"]: depth,
            by_name["SentToDlq"]: sent, by_name["RefusedToDlq"]: refused})
        # A missing point is not breaching; the alarm is ALARM over 0.
        return ["ALARM" if v is not None and v > 0 else "OK" for v in values]

    # Five-minute periods: a reject by the function (left in the queue),
    # quiet, a second reject, quiet, a message SQS moved by its redrive
    # policy (no function metric), quiet again; the DLQ is never emptied.
    depth = [0, 1, 1, 2, 2, 3, 3]
    sent = [None, 1, None, 1, None, None, None]
    refused = [None, None, None, None, None, None, None]
    assert states(depth, sent, refused) == ["OK", "ALARM", "OK", "ALARM", "OK", "ALARM", "OK"]
    # A depth alarm would have stayed in ALARM from the first reject on.
    assert [d > 0 for d in depth] == [False] + [True] * 6
    # Draining the DLQ (a redrive) raises nothing.
    assert states([3, 0, 0], [None] * 3, [None] * 3) == ["OK", "OK", "OK"]


def test_a_fresh_healthy_stack_has_no_alarm_on_missing_data(tpl):
    """Before any traffic or scheduled run, no metric has a data point: an
    alarm that treats missing data as breaching would start in ALARM."""
    breaching = [name for name, r in tpl["Resources"].items()
                 if r["Type"] == "AWS::CloudWatch::Alarm"
                 and r["Properties"].get("TreatMissingData", "missing") == "breaching"]  # fmt: skip
    assert breaching == [], breaching


# -- The quick start: eight parameters at most ---------------------------


def test_the_quick_start_group_comes_first_and_asks_for_eight_parameters_at_most(tpl):
    groups = tpl["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [p for g in groups for p in g["Parameters"]]
    assert sorted(grouped) == sorted(tpl["Parameters"]), "every parameter in one group, once"
    assert len(grouped) == len(set(grouped))
    quick = groups[0]
    assert quick["Label"]["default"].startswith("Quick start")
    assert len(quick["Parameters"]) <= 8, quick["Parameters"]
    # Everything else has a default: the quick start gives these alone.
    assert all("Default" in tpl["Parameters"][p] for p in tpl["Parameters"])
    # README's quick start gives exactly the group's parameters.
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- quick-start-deploy -->")
    command = readme[start:readme.index("```", readme.index("```", start) + 3)]
    given = {w.split("=", 1)[0] for w in command.replace('"', " ").split() if "=" in w and w[0].isupper()
             and w.split("=", 1)[0] in tpl["Parameters"]}  # fmt: skip
    assert given == set(quick["Parameters"]), given ^ set(quick["Parameters"])


def test_vpc_endpoints_for_the_services_the_functions_call_are_made_only_when_asked():
    vpc = {"SubnetIds": "subnet-a,subnet-b", "SecurityGroupIds": "sg-1"}
    made = deployed(**vpc, VpcEndpointsVpcId="vpc-0abc")
    endpoints = {r["Properties"]["ServiceName"]["Fn::Sub"]: r["Properties"] for r in made.values()
                 if r["Type"] == "AWS::EC2::VPCEndpoint"}  # fmt: skip
    assert set(endpoints) == {f"com.amazonaws.${{AWS::Region}}.{s}" for s in ("secretsmanager", "sqs", "kms")}
    for e in endpoints.values():
        assert e["VpcId"] == "vpc-0abc" and e["SubnetIds"] == ["subnet-a", "subnet-b"]
        assert e["SecurityGroupIds"] == ["sg-1"] and e["PrivateDnsEnabled"] is True
    # Not asked for, or no subnets: none.
    for params in (vpc, {"VpcEndpointsVpcId": "vpc-0abc"}):
        assert not [r for r in deployed(**params).values() if r["Type"] == "AWS::EC2::VPCEndpoint"], params
    # With traces on, X-Ray's too: the collector extension sends from the same subnets.
    traced = deployed(**vpc, VpcEndpointsVpcId="vpc-0abc", Tracing="Enabled",
                      OtelLayerArn="arn:aws:lambda:eu-west-1:901920570463:layer:aws-otel-collector-arm64-ver-0-117-0:1")
    services = {r["Properties"]["ServiceName"]["Fn::Sub"] for r in traced.values() if r["Type"] == "AWS::EC2::VPCEndpoint"}
    assert "com.amazonaws.${AWS::Region}.xray" in services and len(services) == 4, services


def test_the_function_knows_the_dlq_operators_role_to_refuse_what_it_sends_unsigned():
    made = deployed(DlqOperatorTrustedPrincipalArn=OPERATOR)
    env = made["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DLQ_OPERATOR_ROLE_ID"] == {"Fn::GetAtt": ["DlqOperatorRole", "RoleId"]}
    env = deployed()["LoginEtlFunction"]["Properties"]["Environment"]["Variables"]
    assert "DLQ_OPERATOR_ROLE_ID" not in env, "no operator role, nothing to check"


# -- A quick start with no traps --------------------------------------------


def test_an_alarm_email_makes_the_topic_every_alarm_and_rule_publishes_to():
    """issue 74: AlarmEmail without AlarmTopicArn makes a topic with that
    address subscribed, which every alarm and EventBridge rule targets
    (CloudWatch and EventBridge of this account may publish to it); a
    given AlarmTopicArn wins; neither: no topic, no action."""
    email = deployed(AlarmEmail="ops@example.com")
    topic = email["AlarmTopic"]["Properties"]
    assert topic["Subscription"] == [{"Protocol": "email", "Endpoint": "ops@example.com"}]
    [statement] = email["AlarmTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert set(statement["Principal"]["Service"]) == {"cloudwatch.amazonaws.com", "events.amazonaws.com"}
    assert "aws:SourceAccount" in statement["Condition"]["StringEquals"]
    alarms = {n: r for n, r in email.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    assert alarms and all(r["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}] for r in alarms.values()), alarms
    rules = [r for r in email.values() if r["Type"] == "AWS::Events::Rule" and "Targets" in r["Properties"]
             and r["Properties"]["Targets"][0]["Id"] == "alarm-topic"]  # fmt: skip
    assert rules and all(r["Properties"]["Targets"][0]["Arn"] == {"Ref": "AlarmTopic"} for r in rules)
    given = deployed(AlarmEmail="ops@example.com", AlarmTopicArn="arn:aws:sns:us-east-1:123456789012:alarms")
    assert "AlarmTopic" not in given
    assert all(r["Properties"]["AlarmActions"] == ["arn:aws:sns:us-east-1:123456789012:alarms"]
               for r in given.values() if r["Type"] == "AWS::CloudWatch::Alarm")  # fmt: skip
    neither = deployed()
    assert "AlarmTopic" not in neither
    assert not any("AlarmActions" in r["Properties"] for r in neither.values() if r["Type"] == "AWS::CloudWatch::Alarm")


def test_a_permissions_boundary_bounds_every_role_the_stack_makes():
    """issue 74: PermissionsBoundaryArn is set on every IAM role the stack
    makes (the functions use those roles: SAM makes none of its own)."""
    boundary = "arn:aws:iam::123456789012:policy/team-boundary"
    params = {"Profile": "full", "EnableVault": "true", "RevealTrustedPrincipalArn": "arn:aws:iam::123456789012:role/r",
              "DlqOperatorTrustedPrincipalArn": "arn:aws:iam::123456789012:role/o", "MaintainDbSecretArn": MAINTAIN_SECRET_ARN}  # fmt: skip
    bounded = deployed(PermissionsBoundaryArn=boundary, **params)
    roles = {n: r for n, r in bounded.items() if r["Type"] == "AWS::IAM::Role"}
    assert len(roles) == 5, sorted(roles)
    assert all(r["Properties"]["PermissionsBoundary"] == boundary for r in roles.values()), roles
    functions = [r for r in bounded.values() if r["Type"] in ("AWS::Serverless::Function", "AWS::Lambda::Function")]
    assert functions and all("Role" in f["Properties"] for f in functions), "no function gets a role SAM would make"
    assert not any("PermissionsBoundary" in r["Properties"] for r in deployed(**params).values()
                   if r["Type"] == "AWS::IAM::Role")  # fmt: skip


def test_tracing_adds_the_collector_layer_its_endpoint_and_x_rays_two_write_actions_only():
    layer = "arn:aws:lambda:eu-west-1:901920570463:layer:aws-otel-collector-arm64-ver-0-117-0:1"
    resources = deployed(Tracing="Enabled", OtelLayerArn=layer)
    fn = resources["LoginEtlFunction"]["Properties"]
    assert fn["Layers"] == [layer]
    assert fn["Environment"]["Variables"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4318"
    by_sid = {st["Sid"]: st for st in _statements(resources["LoginEtlRole"])}
    assert set(_as_list(by_sid["SendTraces"]["Action"])) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    # The maintenance function is not traced.
    assert "SendTraces" not in {st["Sid"] for st in _statements(resources["MaintenanceRole"])}


def test_the_queues_min_receive_count_output_is_the_count_the_setup_holds_the_queue_to(tpl):
    """doctor --min-receive-count takes the stack's QueueMinReceiveCount:
    the same value the setup function judges an existing queue by."""
    output = tpl["Outputs"]["QueueMinReceiveCount"]["Value"]
    setup = tpl["Resources"]["SetupFunction"]["Properties"]["Environment"]["Variables"]["SETUP_MIN_RECEIVE_COUNT"]
    assert output == setup == tpl["Resources"]["DatabaseSetup"]["Properties"]["MinReceiveCount"]
