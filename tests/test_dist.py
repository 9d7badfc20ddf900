"""A release (`make dist`, docs/release.md) as an adopter meets it: the
checksums verify, each artifact is what its name says (static binaries for
their CPU, zips holding one executable `bootstrap`, templates that deploy
those zips, the contract's schema, a CycloneDX SBOM of the crates linked
in, image archives for each CPU), and the quick start from it runs in
LocalStack with no `cargo`, `rustc`, `zig` or SAM CLI on the PATH:
docs/release.md's deploy (the AWS CLI alone) into a queue made
beforehand, the stack setting up its database as a master that is no
superuser, against the stacks' PostgreSQL that takes only passwords over
TLS; the queue drains into `user_logins`. Last, a stack deleted and
deployed again keeps its masking key (deploy.sh finds the retained
secrets), its database's roles and their secrets, and goes on storing.

Run by `make test-dist` (after `make dist`; CI: `make dist-check`), with
LocalStack running. Every stack, queue, secret and database made here is
removed at the end, also on failure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "localstack"))
import pg_cluster  # noqa: E402
import stack  # noqa: E402

DIST = Path(os.environ.get("DIST_DIR", ROOT / "dist"))
VERSION = re.search(r'^version = "(.+)"$', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
RUN = f"dist{os.getpid()}"
# ELF e_machine: x86-64 and AArch64.
MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7, "arm64": 0xB7}
NO_RUST = ("cargo", "rustc", "rustup", "zig", "cargo-lambda", "sam")
HOST_BINARY = DIST / f"login-etl-{VERSION}-x86_64-linux"
# LocalStack models no VPC: the deploy block's network parameters are
# counted, not given (its CloudFormation fails on them).
NOT_IN_LOCALSTACK = ("SubnetIds=", "SecurityGroupIds=")
# LocalStack's timings (as tests/test_localstack_e2e.py deploys), and an
# explicit MaxReceiveCount: its CloudFormation cannot join the number the
# template's mapping derives by default.
LOCAL_PARAMETERS = [f"VisibilityTimeoutSeconds={stack.LOCAL_VISIBILITY_TIMEOUT}", "MaximumBatchingWindowInSeconds=1",
                    "MaxReceiveCount=5"]  # fmt: skip


def elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF executable"
    return int.from_bytes(data[18:20], "little")


def elf_is_static(path: Path) -> bool:
    """No program interpreter (PT_INTERP): runs on any Linux, Lambda's too."""
    out = subprocess.run(["readelf", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    return "Requesting program interpreter" not in out


def cfn_yaml(text: str) -> dict:
    """CloudFormation YAML with its intrinsic tags kept as plain values."""
    loader = type("CfnLoader", (yaml.SafeLoader,), {})
    loader.add_multi_constructor("!", lambda load, tag, node: None)
    return yaml.load(text, Loader=loader)


def test_the_checksums_verify_and_list_every_file():
    listed = {}
    for line in (DIST / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    present = {p.name for p in DIST.iterdir() if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == present, "SHA256SUMS lists every file, and only those"
    for name, digest in listed.items():
        assert hashlib.sha256((DIST / name).read_bytes()).hexdigest() == digest, name
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=DIST, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_each_binary_is_static_for_its_cpu(arch):
    binary = DIST / f"login-etl-{VERSION}-{arch}-linux"
    assert elf_machine(binary.read_bytes()[:64]) == MACHINE[arch]
    assert elf_is_static(binary), f"{binary.name} needs a dynamic loader"
    assert binary.stat().st_mode & 0o111, "executable"


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_each_zip_holds_one_executable_bootstrap_and_the_one_template_pins_it(arch):
    name = f"login-etl-lambda-{VERSION}-{arch}.zip"
    with zipfile.ZipFile(DIST / name) as z:
        (entry,) = z.infolist()
        assert entry.filename == "bootstrap"
        assert (entry.external_attr >> 16) & 0o777 == 0o755, oct(entry.external_attr >> 16)
        assert elf_machine(z.read(entry)[:64]) == MACHINE[arch]
    root = (DIST / "template.yaml").read_text()
    assert len(root.encode()) <= 51_200, "over CloudFormation's inline limit"
    assert name in root and hashlib.sha256((DIST / name).read_bytes()).hexdigest() in root
    nested = cfn_yaml((DIST / f"login-etl-{VERSION}-stack.yaml").read_text())
    source = cfn_yaml((ROOT / "template.yaml").read_text())
    for function in ("LoginEtlFunction", "MaintenanceFunction", "SetupFunction"):
        assert "Metadata" not in nested["Resources"][function], "nothing to build"
    # Everything else is template.yaml's: the same parameters and resources.
    assert set(nested["Parameters"]) - set(source["Parameters"]) == {"RootStackName", "ReleaseBucket", "ReleaseCodeKey"}
    assert set(nested["Resources"]) == set(source["Resources"])
    assert set(cfn_yaml(root)["Parameters"]) == set(source["Parameters"]) | {"ReleaseUrl"}


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_each_binary_carries_the_certificates_docs_lists_and_no_other(arch):
    """The RDS CAs and Amazon Trust Services' roots compiled into the
    released binary are the ones docs/ca-certificates.md lists by SHA-256
    fingerprint: what a deploy with no CA file trusts is what is listed."""
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    data = (DIST / f"login-etl-{VERSION}-{arch}-linux").read_bytes()
    pems = re.findall(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----", data)
    with warnings.catch_warnings():  # Starfield's root has a negative serial number
        warnings.simplefilter("ignore")
        inside = {x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex().upper() for pem in pems}
    page = (ROOT / "docs" / "ca-certificates.md").read_text()
    listed = set(re.findall(r"^\| \d{4}-\d\d-\d\d \| [^|]+? \| RDS(?: Proxy)? \| `([0-9A-F]{64})` \|$", page, re.M))
    assert listed and inside == listed, {"inside, not listed": inside - listed, "listed, not inside": listed - inside}


def test_the_schema_is_the_binarys_contract_and_the_sbom_lists_what_is_linked_in():
    host = DIST / f"login-etl-{VERSION}-x86_64-linux"
    printed = subprocess.run([str(host), "schema"], capture_output=True, text=True, check=True).stdout
    assert json.loads((DIST / f"login-etl-{VERSION}.schema.json").read_text()) == json.loads(printed)
    sbom = json.loads((DIST / f"login-etl-{VERSION}.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    assert sbom["metadata"]["component"]["name"] == "login-etl"
    names = {c["name"] for c in sbom["components"]}
    # The database driver, the runtime and the OpenSSL sources inside the binary.
    assert {"tokio-postgres", "lambda_runtime", "openssl-src", "aws-sdk-secretsmanager"} <= names, names
    assert not {"criterion", "proptest", "moto"} & names, "no dev-dependency"


@pytest.mark.parametrize("platform", ["amd64", "arm64"])
def test_each_image_archive_is_an_oci_image_for_its_cpu(platform):
    archive = DIST / f"login-etl-{VERSION}-image-{platform}.oci.tar"
    if not archive.exists():
        pytest.skip("make dist IMAGES=0: no image archives")
    with tarfile.open(archive) as tar:
        blob = lambda digest: tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}").read()  # noqa: E731
        index = json.loads(tar.extractfile("index.json").read())
        (manifest_ref,) = index["manifests"]
        manifest = json.loads(blob(manifest_ref["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
    assert config["architecture"] == platform and config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/login-etl", "poll"]
    assert config["config"]["User"] == "65532:65532"


# --- the quick start from the release, in LocalStack, without Rust --------


def block(page: str, marker: str) -> str:
    text = (ROOT / page).read_text()
    return text.split(marker, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]


def deploy_parameters(command: str) -> list[str]:
    """The Name=Value words of docs/release.md's deploy block."""
    return [w for w in shlex.split(command.replace("\\\n", " ")) if "=" in w and not w.startswith("-")]


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served():
    """A local HTTP server standing in for the release's download URL
    (https://github.com/<owner>/login-etl/releases/download/vV/): dist/
    at /vV/, and at /tampered/ a copy whose x86_64 zip has one more byte."""
    site = ROOT / "target" / "dist-site"
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(DIST, site / f"v{VERSION}", ignore=shutil.ignore_patterns("*.oci.tar"))
    shutil.copytree(site / f"v{VERSION}", site / "tampered")
    with (site / "tampered" / f"login-etl-lambda-{VERSION}-x86_64.zip").open("ab") as f:
        f.write(b"\0")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(site, ignore_errors=True)


def load_templates():
    spec = importlib.util.spec_from_file_location("release_templates", ROOT / "release" / "templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def test_build(served):
    """The release as a test build: its x86_64 zip's bootstrap with the
    throwaway server's CA where the RDS CAs sit (the same bytes otherwise,
    the bundle's length kept), and a template.yaml pinning that zip, at
    /test-build/. The server's certificate names pg_cluster.RDS_HOST, a
    direct RDS endpoint's name: the function trusts it with no CA given."""
    site = ROOT / "target" / "dist-site"
    build = site / "test-build"
    shutil.copytree(site / f"v{VERSION}", build)
    name = f"login-etl-lambda-{VERSION}-x86_64.zip"
    with zipfile.ZipFile(build / name) as z:
        (entry,) = z.infolist()
        bootstrap = z.read(entry)
    rds = (ROOT / "src" / "database" / "ca" / "rds-global-bundle.pem").read_bytes()
    test_ca = Path(stack.ca_bundle_file()).read_bytes()
    assert bootstrap.count(rds) == 1, "the RDS CAs are not in the bootstrap as one block"
    assert len(test_ca) < len(rds)
    bootstrap = bootstrap.replace(rds, test_ca + b"\n" * (len(rds) - len(test_ca)))
    with zipfile.ZipFile(build / name, "w") as z:
        z.writestr(entry, bootstrap)
    # The templates as make dist writes them, pinning the patched zip.
    load_templates().main([str(build), VERSION, f"{served}/test-build/"])
    sums = "".join(f"{hashlib.sha256((build / f).read_bytes()).hexdigest()}  {f}\n" for f in sorted(os.listdir(build)) if f != "SHA256SUMS")
    (build / "SHA256SUMS").write_text(sums)
    return f"{served}/test-build"


@pytest.fixture(scope="module")
def release(tmp_path_factory, served):
    """An operator's machine: a PATH with no Rust toolchain or SAM CLI (the
    AWS CLI, curl and the system's directories), an empty folder, and the
    released binary installed as docs/release.md's operators do, for the
    setup block's commands. Returns that folder, its environment and the
    release's URL."""
    if not stack.localstack_running():
        pytest.fail("LocalStack is not running: make test-dist starts it (localstack/up.sh)")
    home = tmp_path_factory.mktemp("operator")
    tools = home / "bin"
    tools.mkdir()
    (tools / "aws").symlink_to(ROOT / ".venv-localstack" / "bin" / "aws")
    system = [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if Path(d).is_dir()]
    path = os.pathsep.join([str(home / ".local" / "bin"), str(tools), *system])
    for tool in NO_RUST:
        assert shutil.which(tool, path=path) is None, f"{tool} is on the operator's PATH: this test needs it gone"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL", "DB_", "CARGO", "RUST", "VIRTUAL_ENV"))}
    env |= {**stack.LOCAL_ENV, "AWS_REGION": stack.REGION, "HOME": str(home), "PATH": path}
    binary = home / ".local" / "bin" / "login-etl"
    binary.parent.mkdir(parents=True)
    shutil.copyfile(HOST_BINARY, binary)
    binary.chmod(0o755)
    return home, env, f"{served}/v{VERSION}"


def on_this_server(command: str, url: str) -> str:
    """A docs command with GitHub's release URL replaced by `url`."""
    github = "https://github.com/<owner>/login-etl/releases/download/vV"
    assert github in command, command
    return command.replace(github, url)


def download(folder: Path, env: dict, url: str) -> None:
    """docs/release.md's steps 1 and 2 (the checksum), run as written in
    an empty folder, from `url`."""
    folder.mkdir()
    for marker in ("<!-- release-download -->", "<!-- release-verify -->"):
        command = on_this_server(block("docs/release.md", marker), url) if "download" in marker else block("docs/release.md", marker)
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{marker}: {done.stdout}{done.stderr}"
    assert (folder / "template.yaml").is_file()


def setup_database(dbname: str, env: dict[str, str], profile: str = "masking") -> None:
    """README's setup block, as written, run with the released binary."""
    stack.drop_database(dbname)
    stack.create_database(dbname)
    stack.prepare_database(dbname, profile, env=env)


def stack_set_up(dbname: str) -> dict[str, str]:
    """The deploy block's database placeholders for a stack that sets
    `dbname` up itself, as master_secret's master (its roles `<dbname>_*`)."""
    stack.drop_database(dbname)
    stack.create_database(dbname)
    admin = stack.admin_env(dbname)
    return {"'<the RDS master secret ARN>'": f"{stack.master_secret(dbname)} DbPort={admin['PGPORT']} DbRolePrefix={dbname}",
            "mydb.xxxx.us-east-1.rds.amazonaws.com": admin["PGHOST"], "DbName=analytics": f"DbName={dbname}"}  # fmt: skip


def local_parameters(name: str, url: str) -> list[str]:
    """What LocalStack needs beyond the docs' block: its timings, the host's
    CPU, the local server for GitHub, and the throwaway server's CA (no
    RDS endpoint: its CA is given as a server of one's own needs), in a
    secret named after the stack."""
    sm = stack.client("secretsmanager")
    ca_name = f"{name}-test-ca"
    try:
        arn = sm.describe_secret(SecretId=ca_name)["ARN"]
    except sm.exceptions.ResourceNotFoundException:
        arn = sm.create_secret(Name=ca_name, SecretString=Path(stack.ca_bundle_file()).read_text())["ARN"]
    return [*LOCAL_PARAMETERS, "Architecture=x86_64", f"ReleaseUrl={url}", f"DbCaBundleSecretArn={arn}"]


# An `aws` in front of the real one: each `cloudformation deploy` leaves
# its template and its arguments in $CAPTURE (numbered), and is sent on to
# LocalStack unless $CAPTURE_ONLY is set.
CAPTURING_AWS = """#!/usr/bin/env bash
if [ "$1 $2" = "cloudformation deploy" ]; then
  n=$(find "$CAPTURE" -name 'args-*' | wc -l)
  prev=""; for a in "$@"; do
    if [ "$prev" = --template-file ]; then cp "$a" "$CAPTURE/template-$n"; echo "(the template)"; else printf '%s\\n' "$a"; fi
    prev=$a
  done > "$CAPTURE/args-$n"
  [ -n "${CAPTURE_ONLY:-}" ] && exit 0
fi
exec "$REAL_AWS" "$@"
"""


def run_deploy(folder: Path, env: dict, name: str, command: str, capture: Path | None = None, send: bool = True,
               expect_failure: bool = False) -> str:  # fmt: skip
    """`command` run in `folder`. With `capture`, what it asks
    CloudFormation to deploy is kept there (CAPTURING_AWS); `send=False`
    asks nothing."""
    if capture is not None:
        capture.mkdir(parents=True, exist_ok=True)
        shim = capture / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "aws").write_text(CAPTURING_AWS)
        (shim / "aws").chmod(0o755)
        real = shutil.which("aws", path=env["PATH"])
        assert real, "no aws on the operator's PATH"
        env = {**env, "PATH": f"{shim}{os.pathsep}{env['PATH']}", "CAPTURE": str(capture), "REAL_AWS": str(real)}
        if not send:
            env["CAPTURE_ONLY"] = "1"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = ROOT / "target" / "e2e-logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(command + done.stdout + done.stderr)
    if expect_failure:
        assert done.returncode != 0, f"the deploy succeeded (all of it: {log})"
    else:
        assert done.returncode == 0, f"the deploy failed (all of it: {log}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def docs_deploy(name: str, values: dict[str, str], extra: list[str]) -> str:
    """docs/release.md's deploy block as written: its placeholders replaced
    by `values`, the stack named `name`, `extra` parameters after its own."""
    command = block("docs/release.md", "<!-- release-deploy -->").replace("--stack-name login-etl ", f"--stack-name {name} ", 1)
    for placeholder, value in values.items():
        command = command.replace(placeholder, value)
    words = [w for w in shlex.split(command.replace("\\\n", " ")) if not w.startswith(NOT_IN_LOCALSTACK)]
    # Its parameters come last: `extra` joins them.
    assert all("=" in w for w in words[words.index("--parameter-overrides") + 1 :]), words
    return shlex.join([*words, *extra])


def stored(dbname: str) -> set[str]:
    return {r[0] for r in stack.psql(stack.db_url(dbname), "SELECT message_id FROM user_logins")}


def test_the_quick_start_from_the_release_drains_a_queue_made_beforehand_with_no_rust_on_the_path(release, test_build):
    """The quick start as written, from the test build: one template, no
    CA given, verify-full to the server by its RDS endpoint's name."""
    home, env, _ = release
    url = test_build
    name, dbname = f"login-etl-{RUN}-q", f"login_etl_{RUN}_q"
    deploy_block = block("docs/release.md", "<!-- release-deploy -->")
    given = deploy_parameters(deploy_block)
    # One template, the first parameter group and no more, no bucket, no zip, no CA file.
    assert len(given) <= 8 and deploy_block.count("--template-file template.yaml") == 1, given
    assert not re.search(r"s3-bucket|\.zip|\.pem|ca-bundle|DbCaBundle", deploy_block), deploy_block
    queues = stack.make_queues(f"{name}-producers", dbname, visibility=stack.LOCAL_VISIBILITY_TIMEOUT, max_receive=5)
    sqs = stack.client("sqs")
    arn = lambda q: sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]  # noqa: E731
    try:
        database = stack_set_up(dbname)
        values = {
            "arn:aws:sqs:us-east-1:123456789012:logins-dlq": arn(queues.dlq_url),
            "arn:aws:sqs:us-east-1:123456789012:logins": arn(queues.queue_url),
            **database,
        }  # fmt: skip
        values["mydb.xxxx.us-east-1.rds.amazonaws.com"] = pg_cluster.RDS_HOST  # the server by its RDS name
        # LocalStack's timings and CPU, and the local server for GitHub: no CA.
        extra = [*LOCAL_PARAMETERS, "Architecture=x86_64", f"ReleaseUrl={url}"]
        messages = stack.generate(40, 8, seed=6401, binary=HOST_BINARY)
        stack.send(queues, messages)  # producers were there first
        valid = [m for m in messages if m.valid]
        started = time.monotonic()
        folder = home / name
        download(folder, env, url)
        asked = ROOT / "target" / "e2e-logs" / f"{name}-asked"
        shutil.rmtree(asked, ignore_errors=True)
        run_deploy(folder, env, name, docs_deploy(name, values, extra), capture=asked)
        deadline = time.monotonic() + 180
        while not stored(dbname):  # the first row (a state, not a delay)
            assert time.monotonic() < deadline, "no row within 180 s of the deploy"
            time.sleep(0.5)
        print(f"\nthe quick start, from its first command to the first row: {time.monotonic() - started:.0f} s")
        stack.wait_drained(queues, len(valid), len(messages) - len(valid), timeout=180)
        assert stored(dbname) == {m.message_id for m in valid}
        assert_masked(dbname, valid)
        out = stack.outputs(name)
        code = stack.client("lambda").get_function(FunctionName=out["FunctionName"])["Configuration"]
        assert code["Architectures"] == ["x86_64"]
        # verify-full, and no CA of the throwaway server's given: the built-in (test build's) RDS CAs.
        function_env = code["Environment"]["Variables"]
        assert function_env["DB_SSLMODE"] == "verify-full" and not function_env.get("DB_CA_BUNDLE_SECRET_ID"), function_env
        # The setup named the roles after the stack deployed, not the nested one.
        assert stack.client("secretsmanager").describe_secret(SecretId=f"{name}/ingest")["Name"] == f"{name}/ingest"
        # The scheduled maintenance, as the maintain role the setup made: clean.
        resp = stack.client("lambda").invoke(FunctionName=out["MaintenanceFunctionName"], Payload=b"{}")
        assert "FunctionError" not in resp, resp["Payload"].read()

        # The same deploy again is a no-op: it asks CloudFormation for the
        # same template with the same parameters, an empty change set,
        # which AWS answers "No changes to deploy" (and
        # --no-fail-on-empty-changeset exits 0): no resource, so not the
        # setup, is touched. LocalStack 4.13 cannot model an update of this
        # template (Fn::FindInMap keyed by a Ref: CreateChangeSet 501), so
        # the second request is compared, not sent.
        run_deploy(folder, env, name, docs_deploy(name, values, extra), capture=asked, send=False)
        assert (asked / "template-1").read_bytes() == (asked / "template-0").read_bytes(), "another template"
        assert (asked / "args-1").read_text() == (asked / "args-0").read_text(), "other parameters"

        # README's block, run after the deploy as the server's admin (the
        # roles' secrets the stack's own), then the function goes on storing.
        stack.prepare_database(dbname, "masking", env=env, secrets_prefix=name, host=pg_cluster.RDS_HOST)
        more = stack.generate(10, 0, seed=6404, binary=HOST_BINARY)
        stack.send(queues, more)
        stack.wait_drained(queues, len(valid) + len(more), len(messages) - len(valid), timeout=180)
        assert stored(dbname) == {m.message_id for m in valid + more}
    finally:
        teardown(name, dbname, queues)


def test_a_zip_whose_bytes_are_not_the_pinned_ones_is_refused_and_nothing_runs_it(release, served):
    home, env, _ = release
    name = f"login-etl-{RUN}-t"
    folder = home / name
    download(folder, env, release[2])
    tampered = f"{served}/tampered"
    command = shlex.join(["aws", "cloudformation", "deploy", "--template-file", "template.yaml", "--stack-name", name,
                          "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND", "--parameter-overrides",
                          "DbSecretArn=arn:aws:secretsmanager:us-east-1:000000000000:secret:x-AbCdEf", "DbHost=db",
                          "MaintainDbSecretArn=arn:aws:secretsmanager:us-east-1:000000000000:secret:y-AbCdEf",
                          "Architecture=x86_64", f"ReleaseUrl={tampered}"])  # fmt: skip
    try:
        run_deploy(folder, env, name, command, expect_failure=True)
        events = stack.client("cloudformation").describe_stack_events(StackName=name)["StackEvents"]
        reasons = " ".join(e.get("ResourceStatusReason", "") for e in events if e["LogicalResourceId"] == "ReleaseFiles")
        pinned = hashlib.sha256((DIST / f"login-etl-lambda-{VERSION}-x86_64.zip").read_bytes()).hexdigest()
        assert pinned in reasons and "not the file of the release" in reasons and "ReleaseUrl" in reasons, reasons
        kinds = {r["ResourceType"] for r in stack.client("cloudformation").describe_stack_resources(StackName=name)["StackResources"]
                 if r["ResourceStatus"].endswith("COMPLETE") and "DELETE" not in r["ResourceStatus"]}  # fmt: skip
        assert "AWS::CloudFormation::Stack" not in kinds, "the nested stack was made"
    finally:
        stack.delete_stack_or_its_mappings(name)


def assert_masked(dbname: str, logins: list) -> None:
    """Every stored row's ip and device id a 64-hex token, and no sent
    value, raw, anywhere in the table."""
    rows = stack.psql(stack.db_url(dbname), "SELECT masked_ip, masked_device_id, row_to_json(u)::text FROM user_logins u")
    tokens = [t for r in rows for t in r[:2] if t]
    assert tokens and all(re.fullmatch(r"[0-9a-f]{64}", t) for t in tokens), tokens[:4]
    table = "\n".join(r[2] for r in rows)
    for m in logins:
        sent = json.loads(m.body)
        for field in ("ip", "device_id"):
            value = sent.get(field)
            if isinstance(value, str) and len(value) > 6:
                assert value not in table, f"a raw {field} is stored"


def test_a_stack_deleted_and_deployed_again_keeps_its_key_and_goes_on_storing(release):
    home, env, url = release
    name, dbname = f"login-etl-{RUN}-r", f"login_etl_{RUN}_r"
    secrets = stack.client("secretsmanager")
    first_keys = []
    try:
        # The full profile: LocalStack 4.13 cannot delete a masking-only
        # stack (a condition leaves PiiRevealRole out: "Unresolved resource
        # dependencies"), AWS can; the keys are the same in both.
        database = stack_set_up(dbname)
        folder = home / name
        download(folder, env, url)
        shutil.copyfile(DIST / "deploy.sh", folder / "deploy.sh")  # downloaded beside template.yaml
        words = shlex.split(docs_deploy(name, {"ExistingQueueArn=arn:aws:sqs:us-east-1:123456789012:logins ": "",
                                               "ExistingDlqArn=arn:aws:sqs:us-east-1:123456789012:logins-dlq ": "",
                                               **database}, []))  # fmt: skip
        params = words[words.index("--parameter-overrides") + 1 :]
        extra = [*local_parameters(name, url), "Profile=full", "RevealTrustedPrincipalArn=arn:aws:iam::000000000000:role/investigators",
                 "DlqOperatorTrustedPrincipalArn=arn:aws:iam::000000000000:role/dlq-operators"]  # fmt: skip
        # docs/release.md's "Delete, then deploy again": deploy.sh, the same parameters.
        deploy = lambda: run_deploy(folder, env, name, shlex.join(["bash", "deploy.sh", "--stack-name", name, *params, *extra]))  # noqa: E731
        said = deploy()
        assert "reusing" not in said, "nothing retained yet"
        first = stack.outputs(name)
        first_keys = [first["MaskingKeySecretArn"], first["ErasureKeySecretArn"]]
        batch = stack.generate(20, 0, seed=6402, binary=HOST_BINARY)
        queues = stack_queues(first, dbname)
        stack.send(queues, batch)
        stack.wait_drained(queues, len(batch), 0, timeout=180)

        kept = [(secrets.describe_secret(SecretId=arn), secrets.get_secret_value(SecretId=arn)["SecretString"]) for arn in first_keys]
        stack.delete_stack(name)
        # AWS keeps them (DeletionPolicy: Retain; tests/test_template.py
        # asserts it); LocalStack 4.13 deletes them with the stack, so they
        # are put back as AWS would have kept them: name, value and tags.
        for i, (described, value) in enumerate(kept):
            try:
                secrets.describe_secret(SecretId=described["ARN"])
            except secrets.exceptions.ResourceNotFoundException:
                first_keys[i] = secrets.create_secret(Name=described["Name"], SecretString=value,
                                                      Tags=described["Tags"])["ARN"]  # fmt: skip
        # The new stack's setup finds the roles' secrets the first made
        # (a stack delete drops nothing) and names its new roles in them.
        said = deploy()
        assert "reusing the key secrets" in said, said
        again = stack.outputs(name)
        assert [again["MaskingKeySecretArn"], again["ErasureKeySecretArn"]] == first_keys
        stack.wait_function_active(again["FunctionName"])
        more = stack.generate(20, 0, seed=6403, binary=HOST_BINARY)
        queues = stack_queues(again, dbname)
        stack.send(queues, more)
        stack.wait_drained(queues, len(batch) + len(more), 0, timeout=180)
        assert stored(dbname) == {m.message_id for m in batch + more}, "stored under the same key, none refused"
    finally:
        teardown(name, dbname, None)
        for arn in first_keys:
            forget_secret(arn)


def stack_queues(out: dict[str, str], dbname: str) -> stack.Stack:
    return stack.Stack(name="", dbname=dbname, queue_url=out["QueueUrl"], dlq_url=out["DeadLetterQueueUrl"],
                       function_name=out["FunctionName"], masking_key_secret_arn=out["MaskingKeySecretArn"],
                       max_receive_count=5, fifo=False, log_level="WARN")  # fmt: skip


def forget_secret(arn: str) -> None:
    """Deleted now, whether or not it is there still."""
    secrets = stack.client("secretsmanager")
    try:
        secrets.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    except secrets.exceptions.ResourceNotFoundException:
        pass


def teardown(name: str, dbname: str, queues: stack.Stack | None) -> None:
    try:
        made = stack.delete_stack_or_its_mappings(name)
        # The retained key secrets of a stack that made them.
        for key in ("MaskingKeySecretArn", "ErasureKeySecretArn"):
            if made.get(key):
                forget_secret(made[key])
    finally:
        if queues is not None:
            stack.delete_queues(queues)
        stack.drop_database(dbname)
        stack.forget_stack_setup(name, dbname)


def test_the_previous_release_is_refused_on_the_schema_this_release_migrates_to_as_upgrade_md_says(release):
    """Rolling the function back past the narrow row (docs/upgrade.md): the
    schema this release's setup block made (its `migrate`), then the
    previous release's binary (make previous-release) as the ingest role,
    polling a queue: it refuses with the words docs/upgrade.md quotes, and
    writes nothing; the messages stay for a function that can store them."""
    previous = Path(os.environ.get("PREVIOUS_LOGIN_ETL", ""))
    if not previous.is_file():
        unavailable = previous.parent / "unavailable"
        if unavailable.is_file():
            pytest.skip(unavailable.read_text().strip())
        pytest.fail("PREVIOUS_LOGIN_ETL names no binary: make test-dist builds it (make previous-release)")
    _, env, _ = release
    dbname = f"login_etl_{RUN}_p"
    queues = stack.make_queues(f"login-etl-{RUN}-p", dbname, visibility=stack.LOCAL_VISIBILITY_TIMEOUT, max_receive=5)
    key = os.urandom(32)
    consumer = None
    quoted = re.search(r'0\.2\.0\'s own words,\s+"([^"]+)"', (ROOT / "docs" / "upgrade.md").read_text())
    assert quoted, "docs/upgrade.md quotes what 0.2.0 says on schema 23"
    refusal = " ".join(quoted.group(1).split())
    try:
        setup_database(dbname, env)
        # As the ingest role, with the password its secret now holds.
        consumer = stack.Consumer(queues, key.hex(), ROOT / "target" / "e2e-logs" / f"{RUN}-previous.log",
                                  env={"DLQ_URL": queues.dlq_url}, binary=previous)  # fmt: skip
        # The release it says it is (PREVIOUS_VERSION: Cargo.toml's at
        # PREVIOUS_RELEASE), not this checkout's build.
        was = subprocess.run([str(previous), "--version"], capture_output=True, text=True, check=True).stdout
        assert os.environ.get("PREVIOUS_VERSION") and was.split()[-1] == os.environ["PREVIOUS_VERSION"], was
        assert not previous.samefile(DIST / f"login-etl-{VERSION}-x86_64-linux")
        consumer.start()
        messages = stack.generate(10, 8, seed=6404, binary=HOST_BINARY)
        stack.send(queues, messages)
        # Until its log says why it refused (a state, not a time).
        deadline = time.monotonic() + 180
        while not any(refusal in line for line in consumer.lines()):
            assert time.monotonic() < deadline, "\n".join(consumer.lines()[-20:])
            time.sleep(0.5)
        rows = stack.psql(stack.db_url(dbname), "SELECT count(*) FROM user_logins")
        assert int(rows[0][0]) == 0, rows
    finally:
        if consumer is not None:
            consumer.kill()
        stack.delete_queues(queues)
        stack.drop_database(dbname)
