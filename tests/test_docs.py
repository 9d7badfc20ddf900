"""The docs as a newcomer follows them: every relative link in the README
and docs/ resolves (the file, and the heading it names), every
`docs/<page>.md, "Title"` that an error message, comment or template names
is a heading of that page, and no docs page outgrows what an operator
reads at once. Source files are cut where concepts are, not by a count
(docs/development.md, "Code layout")."""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = sorted(
    [ROOT / "README.md", ROOT / "SECURITY.md"] + list((ROOT / "docs").rglob("*.md"))
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# docs/x.md, "Title" or docs/x.md "Title" (the hints in error messages).
NAMED = re.compile(r'(docs/[\w/-]+\.md),? \\?"([^"\\]+)\\?"')
MAX_PAGE_LINES = 300


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    t = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return t.replace(" ", "-")


def headings(path: pathlib.Path) -> list[str]:
    """The page's headings, outside fenced code."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(path):
        s = slug(h)
        n = seen.get(s, 0)
        out.add(s if n == 0 else f"{s}-{n}")
        seen[s] = n + 1
    return out


def links(path: pathlib.Path):
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # https:, mailto: ...
            yield number, target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_a_heading(page):
    broken = []
    for number, target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such file)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{page.relative_to(ROOT)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def named_sections():
    # The repository's files (git's list: no build output, venv or LocalStack state).
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    files = [ROOT / f for f in tracked if pathlib.Path(f).suffix in {".rs", ".py", ".yaml", ".md", ".toml", ".sh"}]
    for path in files:
        rel = path.relative_to(ROOT)
        if not path.is_file() or rel.parts[0] == "fuzz":
            continue
        if path == pathlib.Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        for m in NAMED.finditer(text):
            # A title wrapped over comment lines: without the markers.
            title = re.sub(r"\s+", " ", re.sub(r"//[!/]?|#", " ", m.group(2))).strip()
            yield rel, m.group(1), title


def test_every_section_named_in_the_code_is_a_heading_of_its_page():
    found, wrong = 0, []
    for where, page, title in named_sections():
        found += 1
        target = ROOT / page
        if not target.exists():
            wrong.append(f'{where}: {page} does not exist ("{title}")')
        elif not any(h == title or h.startswith(title + " (") for h in headings(target)):
            wrong.append(f'{where}: {page} has no heading "{title}"')
    assert found > 10, "the pattern finds the hints at all"
    assert not wrong, "\n".join(wrong)


def test_no_docs_page_is_over_its_room():
    long = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in PAGES
        if (n := len(p.read_text().splitlines())) > MAX_PAGE_LINES
    ]
    assert not long, f"pages over {MAX_PAGE_LINES} lines (split them by what an operator comes for):\n" + "\n".join(long)


def test_the_changelog_has_the_version_the_binary_reports():
    """CHANGELOG.md has a section for Cargo.toml's version, and the binary
    reports that version with the schema it writes; the repository carries
    its licence."""
    import os
    import subprocess

    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert re.search(rf"^## \[{re.escape(version)}\]", (ROOT / "CHANGELOG.md").read_text(), re.M), version
    binary = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "login-etl"
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    schema = re.search(r"macro_rules! schema_version \{\s*\(\) => \{\s*(\d+)", (ROOT / "src/table/schema/mod.rs").read_text())
    assert out.strip() == f"login-etl {version} (schema {schema.group(1)})"
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert 'license = "MIT"' in (ROOT / "Cargo.toml").read_text()


def test_nothing_refers_outside_the_repository():
    """No file of the repository sends its reader to a path outside it."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    outside = []
    for name in tracked:
        path = ROOT / name
        if not path.is_file() or path.suffix in (".json", ".lock"):
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        if "../" + "shared/" in text:
            outside.append(name)
    assert not outside, outside


def _cli_flags() -> set[str]:
    """Every `--flag` of the binary's commands (clap's `#[arg(long ...)]`
    fields in src/cli/mod.rs)."""
    src = (ROOT / "src" / "cli" / "mod.rs").read_text()
    flags = set()
    for m in re.finditer(r"#\[arg\(", src):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(src[i], 0)
            i += 1
        attr = src[m.end() : i - 1]
        field = re.match(r"\]\s*(?:#\[[^\n]*\]\s*)*(?:///[^\n]*\s*)*pub (\w+):", src[i:])
        if re.search(r"\blong\b", attr) and field:
            flags.add("--" + field.group(1).replace("_", "-"))
    return flags


def test_the_reference_lists_every_variable_flag_and_exit_code_the_binary_knows():
    """configuration.md (and poll.md for `poll`'s flags) names every
    environment variable the code reads, every flag of every command, and
    every exit code: a setting added without its line fails here."""
    reference = (ROOT / "docs" / "configuration.md").read_text() + (ROOT / "docs" / "poll.md").read_text()
    code = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    read = set(re.findall(r'(?:get|env::var)\("([A-Z][A-Z0-9_]+)"\)|env = "([A-Z][A-Z0-9_]+)"', code))
    variables = {a or b for a, b in read} - {"CARGO_PKG_VERSION", "LAMBDA_TASK_ROOT"}
    assert len(variables) > 20, variables
    missing = sorted(v for v in variables if f"`{v}`" not in reference)
    assert not missing, f"variables the code reads that configuration.md does not name: {missing}"
    flags = _cli_flags()
    assert {"--profile", "--queue-url", "--default-move-limit", "--schema"} <= flags, flags
    missing = sorted(f for f in flags if f not in reference)
    assert not missing, f"flags no reference page names: {missing}"
    exits = {int(v) for v in re.findall(r"pub const EXIT_\w+: u8 = (\d+);", (ROOT / "src" / "cli" / "mod.rs").read_text())}
    said = (ROOT / "docs" / "configuration.md").read_text().split("Exit\ncodes:", 1)[1].split("\n\n", 1)[0]
    assert exits and all(re.search(rf"\b{e}\b", said) for e in exits), (exits, said)
