"""release/deploy.sh (what `make deploy` and a release's `./deploy.sh`
run) against stand-ins for the `aws` and `sam` commands: which key secrets
it passes back to a stack that is not deployed, when it stops instead, and
what it keeps of samconfig.toml. The stand-ins answer as the AWS CLI does
and write down how they were called; tests/test_dist.py deploys for real
in LocalStack.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "release" / "deploy.sh"
MASKING = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/masking-AbCdEf"
ERASURE = "arn:aws:secretsmanager:us-east-1:123456789012:secret:login-etl/erasure-GhIjKl"

# `aws`: describe-stacks answers STUB_STATE (empty: the stack does not
# exist); list-secrets prints the lines of STUB_<KIND> for the query that
# asks for that key; every call is logged with the region it saw.
AWS = """#!/usr/bin/env bash
echo "aws $* region=${AWS_REGION:-}" >> "$STUB_LOG"
case "$1 $2" in
  "cloudformation describe-stacks")
    case "$*" in *DbCaBundleFile*) echo "${STUB_CA:-}"; exit 0 ;; esac
    [ -n "${STUB_STATE:-}" ] && { echo "$STUB_STATE"; exit 0; }
    echo "An error occurred (ValidationError) when calling the DescribeStacks operation: Stack with id $4 does not exist" >&2; exit 254 ;;
  "secretsmanager list-secrets")
    case "$*" in *"Value=='masking'"*) printf '%s' "${STUB_MASKING:-}" ;; *"Value=='erasure'"*) printf '%s' "${STUB_ERASURE:-}" ;; esac ;;
  "cloudformation describe-stack-resource")
    [ -n "${STUB_FLAT:-}" ] && { echo "An error occurred (ValidationError) when calling the DescribeStackResource operation: Resource ReleaseFiles does not exist for stack $4" >&2; exit 254; }
    echo Custom::ReleaseFiles ;;
  "sts get-caller-identity") echo 123456789012 ;;
  "cloudformation deploy") python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" > "$STUB_SAM" ;;
esac
"""
SAM = """#!/usr/bin/env bash
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" > "$STUB_SAM"
"""


@pytest.fixture
def run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("aws", AWS), ("sam", SAM)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def run(*args: str, cwd: Path = tmp_path, script: Path = SCRIPT, **stub: str):
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
               "STUB_LOG": str(tmp_path / "aws.log"), "STUB_SAM": str(tmp_path / "sam.json"),
               **{f"STUB_{k.upper()}": v for k, v in stub.items()}}  # fmt: skip
        (tmp_path / "sam.json").unlink(missing_ok=True)
        (tmp_path / "aws.log").unlink(missing_ok=True)
        done = subprocess.run(["bash", str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
        sam = json.loads((tmp_path / "sam.json").read_text()) if (tmp_path / "sam.json").exists() else None
        log = (tmp_path / "aws.log").read_text() if (tmp_path / "aws.log").exists() else ""
        return done, sam, log

    return run


def overrides(sam: list[str]) -> list[str]:
    i = sam.index("--parameter-overrides")
    return [w for w in sam[i + 1 :] if "=" in w and not w.startswith("--")]


def test_a_stack_not_deployed_gets_the_keys_an_earlier_one_retained(run):
    done, sam, log = run("DbSecretArn=x", masking=f"{MASKING}\t2026-01-01\n", erasure=f"{ERASURE}\t2026-01-01\n")
    assert done.returncode == 0, done.stderr
    assert "reusing the key secrets" in done.stdout
    assert overrides(sam) == ["DbSecretArn=x", f"ExistingMaskingKeySecretArn={MASKING}", f"ExistingErasureKeySecretArn={ERASURE}"]
    assert sam[sam.index("--stack-name") + 1] == "login-etl" and "--resolve-s3" in sam


@pytest.mark.parametrize("state, looked_up", [("UPDATE_COMPLETE", False), ("REVIEW_IN_PROGRESS", True)])
def test_a_deployed_stack_keeps_its_own_keys_and_one_never_executed_is_not_deployed(run, state, looked_up):
    done, sam, log = run("DbSecretArn=x", state=state, masking=f"{MASKING}\t2026-01-01\n")
    assert done.returncode == 0, done.stderr
    assert ("list-secrets" in log) == looked_up
    assert (f"ExistingMaskingKeySecretArn={MASKING}" in overrides(sam)) == looked_up


def test_two_candidates_stop_it_with_the_parameters_to_pass_and_new_keys_skips_the_lookup(run):
    two = f"{MASKING}\t2026-01-01\n{MASKING}2\t2026-02-01\n"
    done, sam, _ = run("DbSecretArn=x", masking=two)
    assert done.returncode == 2 and sam is None, "nothing deployed"
    assert "ExistingMaskingKeySecretArn=<masking ARN>" in done.stderr and MASKING in done.stderr
    done, sam, log = run("--new-keys", "DbSecretArn=x", masking=two)
    assert done.returncode == 0 and "list-secrets" not in log
    assert overrides(sam) == ["DbSecretArn=x"]
    # A key given on the command line is never second-guessed.
    done, sam, log = run(f"ExistingMaskingKeySecretArn={MASKING}", masking=two)
    assert done.returncode == 0 and "list-secrets" not in log


def test_samconfigs_stack_and_saved_parameters_are_kept_and_its_region_reaches_the_lookups(run, tmp_path):
    (tmp_path / "samconfig.toml").write_text(
        'version = 0.1\n[staging.global.parameters]\nstack_name = "login-etl-staging"\n'
        '[staging.deploy.parameters]\nparameter_overrides = "MetricsNamespace=\\"LoginEtl/staging\\" DbSecretArn=saved"\n'
    )
    done, sam, log = run("DbSecretArn=given", "--", "--config-env", "staging", "--region", "eu-west-1",
                         masking=f"{MASKING}\t2026-01-01\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sam[sam.index("--stack-name") + 1] == "login-etl-staging"
    # Saved first, then the given (sam keeps the last of a name), then the found key.
    assert overrides(sam) == ["MetricsNamespace=LoginEtl/staging", "DbSecretArn=saved", "DbSecretArn=given",
                              f"ExistingMaskingKeySecretArn={MASKING}"]  # fmt: skip
    assert all(line.endswith("region=eu-west-1") for line in log.splitlines()), log
    assert "--resolve-s3" not in sam, "samconfig's bucket settings apply"


def test_a_release_deploys_its_one_template_with_the_aws_cli_alone_and_no_bucket(run, tmp_path):
    """A release's template (it fetches its code: ReleaseFiles) goes to
    `aws cloudformation deploy` as it is, inline: no `sam`, no package, no
    bucket; --ca-bundle is refused with what replaced it."""
    release = tmp_path / "dist"
    release.mkdir()
    (release / "template.yaml").write_text("Resources:\n  ReleaseFiles:\n    Type: Custom::ReleaseFiles\n")
    (release / "deployer-policy.json").write_text("{}")
    (release / "deploy.sh").write_bytes(SCRIPT.read_bytes())
    (tmp_path / "bin" / "sam").unlink()  # a release needs no SAM CLI
    done, deploy, log = run("DbName=x", "--", "--region", "eu-west-1", script=release / "deploy.sh")
    assert done.returncode == 0, done.stderr
    assert deploy[:2] == ["cloudformation", "deploy"], deploy
    assert deploy[deploy.index("--template-file") + 1] == str(release / "template.yaml")
    assert "--s3-bucket" not in deploy and "cloudformation package" not in log, deploy
    assert overrides(deploy) == ["DbName=x"] and deploy[-2:] == ["--region", "eu-west-1"]
    done, deploy, _ = run("--ca-bundle", "global-bundle.pem", script=release / "deploy.sh")
    assert done.returncode == 2 and deploy is None and "DbCaBundleSecretArn" in done.stderr, done.stderr
    # An update of a stack the one file made: deployed.
    done, deploy, _ = run("DbName=x", script=release / "deploy.sh", state="UPDATE_COMPLETE")
    assert done.returncode == 0 and deploy, done.stderr
    # A stack that holds its resources itself is not moved into a nested one.
    done, deploy, _ = run("DbName=x", script=release / "deploy.sh", state="UPDATE_COMPLETE", flat="1")
    assert done.returncode == 2 and deploy is None, done.stderr
    assert "would replace them all" in done.stderr and "A stack made before the one file" in done.stderr


def test_a_deployed_stack_reading_a_ca_bundle_is_not_deployed_without_it(run, tmp_path):
    done, sam, _ = run("DbSecretArn=x", state="UPDATE_COMPLETE", ca="global-bundle.pem")
    assert done.returncode == 2 and sam is None, done.stderr
    assert "make deploy DB_CA_BUNDLE=global-bundle.pem again" in done.stderr
    # Given, or the stack reads none: deployed.
    for args, ca in ((["DbCaBundleFile=global-bundle.pem"], "global-bundle.pem"), (["DbCaBundleFile="], "global-bundle.pem"), ([], "")):
        done, sam, _ = run("DbSecretArn=x", *args, state="UPDATE_COMPLETE", ca=ca)
        assert done.returncode == 0 and sam, (args, done.stderr)
    # A release's zip never holds one: the fix is to stop reading it.
    (tmp_path / "template.yaml").write_text("Resources:\n  ReleaseFiles: {}\n")
    done, sam, _ = run("--template", str(tmp_path / "template.yaml"), state="UPDATE_COMPLETE", ca="global-bundle.pem")
    assert done.returncode == 2 and sam is None and "give DbCaBundleFile= (the RDS CAs are built in" in done.stderr, done.stderr


def test_a_stack_whose_first_create_rolled_back_is_named_with_the_delete_it_needs(run):
    done, sam, _ = run("DbSecretArn=x", state="ROLLBACK_COMPLETE")
    assert done.returncode == 2 and sam is None
    assert "aws cloudformation delete-stack --stack-name login-etl" in done.stderr, done.stderr
