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


# -- Docs that cannot drift ---------------------------------------------------


def unnamed_sources(layout: str, sources: list[str]) -> list[str]:
    """The files of `sources` (paths under src/) that docs/development.md's
    layout (`layout`) does not name. A file is named by its path, or by its
    path below the bold heading of its folder (`field.rs` under
    "`src/contract/`"); a folder row (`src/database/`, `forget/`) names
    every file in it; a heading names its folder's `mod.rs`; a `tests.rs`
    is its module's unit tests."""
    section, named, folders, headed = None, set(), set(), set()
    for line in layout.splitlines():
        heading = re.match(r"\*\*[^*]*`(src/[\w/]+/)`", line)
        if heading:
            section = heading.group(1)
            headed.add(section)
            continue
        if line.startswith("**"):
            section = None
        for token in (t for span in re.findall(r"`([^`]+)`", line) for t in re.split(r"[,\s]+", span)):
            full = token if token.startswith("src/") or section is None else section + token
            if token.endswith(".rs"):
                named.add(full)
            elif token.endswith("/") and full.startswith("src/") and full != "src/":
                folders.add(full)
    return [
        p for p in sources
        if not p.endswith("/tests.rs") and p not in named
        and not any(p.startswith(f) for f in folders if f not in headed)
        and not (p.endswith("/mod.rs") and p[: -len("mod.rs")] in headed)
    ]  # fmt: skip


def test_every_source_file_is_named_in_the_code_layout():
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.rs"))
    layout = (ROOT / "docs" / "development.md").read_text()
    assert len(sources) > 100
    missing = unnamed_sources(layout, sources)
    assert not missing, f"docs/development.md's \"Code layout\" names no row for: {missing}"
    # A file planted, and one named only by a folder heading: both caught.
    assert unnamed_sources(layout, [*sources, "src/ingest/planted.rs", "src/table/stray.rs"]) == [
        "src/ingest/planted.rs", "src/table/stray.rs"]  # fmt: skip


# Paths the repository generates or that name something not a file of it.
NOT_FILES = {
    "docs/x.md",  # this file's own example of a hint
    "examples/profile_transform",  # the example's binary
    "fuzz/artifacts", "fuzz/artifacts/parse_body",  # what a fuzz run leaves
    "localstack/host_executor/build",  # pip's build folder
    "localstack/localstack", "localstack/packages/api.py",  # inside LocalStack's own package
    "migrations/00NN_", "migrations/0",  # a migration's name, as a pattern
}  # fmt: skip
POINTER = re.compile(
    r"(?<![\w/.-])((?:src|migrations|docs|tests|benches|examples|localstack|release|fuzz|scripts)/[\w./-]*\w)"
)


def stale_pointers(texts: dict[str, str], exists) -> dict[str, list[str]]:
    """Paths the texts name (`migrations/0008`, `src/privacy/vault.rs`)
    that name no file: a number names the file of that folder it begins."""
    stale: dict[str, list[str]] = {}
    for name, text in texts.items():
        for m in POINTER.finditer(text):
            path = m.group(1).rstrip(".")
            if path in NOT_FILES or exists(path):
                continue
            folder, _, stem = path.rpartition("/")
            if re.fullmatch(r"\d{4}", stem) and exists(folder, stem):
                continue
            stale.setdefault(path, []).append(name)
    return stale


# A pointer that says what the file holds: "`user_logins_locks`
# (migrations/0022)", "`name` in src/x.rs,", "src/x.rs's `name`".
PATH = r"((?:src|migrations|docs|tests|benches|examples|localstack|release|fuzz|scripts)/[\w./-]*\w)"
NAMED_IN = re.compile(
    rf"`(?P<before>[\w:]+)(?:\(\))?`,? (?:\(|in )`?(?P<path1>{PATH[1:-1]})`?(?:[),;:]|\.(?:\s|$))"
    rf"|(?<![\w/.-])(?P<path2>{PATH[1:-1]})`?'s `(?P<after>[\w:]+)"
)


def pointers_to_what_the_file_lacks(texts: dict[str, str], holds) -> list[str]:
    """Where a text names an item beside a pointer and the file (the
    folder's files, or the migration of that number) does not hold it."""
    lacking = []
    for name, text in texts.items():
        for m in NAMED_IN.finditer(text):
            path = (m.group("path1") or m.group("path2")).rstrip(".")
            item = (m.group("before") or m.group("after")).rpartition("::")[2]
            if path not in NOT_FILES and not holds(path, item):
                lacking.append(f"{name}: {item} is not in {path}")
    return lacking


def test_every_path_a_doc_or_comment_names_is_a_file_of_the_repository():
    files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    texts = {f: (ROOT / f).read_text(errors="replace") for f in files if f != "tests/test_docs.py"
             and (f.endswith((".rs", ".md", ".py", ".sql", ".sh", ".yaml", ".toml")) or f == "Makefile")}  # fmt: skip

    def exists(path: str, prefix: str | None = None) -> bool:
        if prefix is None:
            return (ROOT / path).exists()
        folder = ROOT / path
        return folder.is_dir() and any(p.name.startswith(prefix + "_") for p in folder.iterdir())

    def holds(path: str, item: str) -> bool:
        target = ROOT / path
        folder, _, stem = path.rpartition("/")
        if not target.exists() and re.fullmatch(r"\d{4}", stem):
            target = next((p for p in (ROOT / folder).glob(stem + "_*")), target)
        files = [f for f in target.rglob("*") if f.is_file()] if target.is_dir() else [target]
        return any(f.exists() and re.search(rf"\b{re.escape(item)}\b", f.read_text(errors="replace")) for f in files)

    lacking = pointers_to_what_the_file_lacks(texts, holds)
    assert not lacking, "\n".join(lacking)
    planted = {"docs/x.md": "`user_logins_locks` (migrations/0001) and src/lib.rs's `no_such_item`, `main` in src/main.rs;"}
    assert pointers_to_what_the_file_lacks(planted, holds) == [
        "docs/x.md: user_logins_locks is not in migrations/0001", "docs/x.md: no_such_item is not in src/lib.rs"]
    stale = stale_pointers(texts, exists)
    assert not stale, "\n".join(f"{p}: named in {', '.join(sorted(set(n)))}" for p, n in sorted(stale.items()))
    planted = {"src/x.rs": "// see migrations/0099 and src/privacy/vaults.rs, (migrations/0008)."}
    assert sorted(stale_pointers(planted, exists)) == ["migrations/0099", "src/privacy/vaults.rs"]
    # A design document the project never held is named nowhere.
    outside = [f for f, t in texts.items() if re.search(r"(?<![\w/])design\.md", t)]
    assert not outside, f"design.md is not in the repository: {outside}"


def reexports(module: str) -> dict[str, str]:
    """What a module's `pub use` lines re-export: item name -> the module
    path (from the crate root) that defines it."""
    path = ROOT / "src" / (module.replace("::", "/") + "/mod.rs" if module else "lib.rs")
    base = f"{module}::" if module else ""
    found: dict[str, str] = {}
    for m in re.finditer(r"^pub use ([\w:]+?)::(\{[^}]*\}|\w+);", path.read_text(), re.M):
        for name in m.group(2).strip("{}").split(","):
            if name.strip():
                found[name.strip()] = base + m.group(1)
    return found


def second_names(texts: dict[str, str], prefix: str, items: dict[str, str]) -> list[str]:
    """Where the texts name an item by a path other than its one path:
    `prefix::defining::module::Item`, alone or in a `use` group."""
    found = []
    for name, text in texts.items():
        for item, module in items.items():
            spelled = re.escape(f"{prefix}::{module}::")
            if re.search(spelled + rf"(?:{item}\b|\{{[^}}]*\b{item}\b)", text):
                found.append(f"{name}: {item}")
    return found


def test_each_item_is_named_one_way():
    """An item the crate re-exports has one path: outside the crate (tests,
    benches, examples, main.rs) the surface's `login_etl::Item`, and a
    contract item `contract::Item`, its room's door, everywhere; the crate's
    own code names a surface item where it is defined, never `crate::Item`."""
    surface, door = reexports(""), reexports("contract")
    assert {"BatchHandler", "Profile"} <= surface.keys() and {"LoginEvent", "Rejection"} <= door.keys()
    outside = {str(p.relative_to(ROOT)): p.read_text() for d in ("tests", "benches", "examples", "fuzz")
               for p in (ROOT / d).rglob("*.rs") if "target" not in p.parts}  # fmt: skip
    outside["src/main.rs"] = (ROOT / "src" / "main.rs").read_text()
    inside = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "src").rglob("*.rs")
              if p.name not in ("lib.rs", "main.rs")}  # fmt: skip
    crate_root = [f"{n}: {i}" for n, t in inside.items() for i in surface if re.search(rf"\bcrate::{i}\b", t)]
    assert not crate_root, f"the crate's own code names these by the surface's path: {crate_root}"
    twice = second_names(outside, "login_etl", surface) + second_names(outside | inside, "crate", door) \
        + second_names(outside, "login_etl", door)  # fmt: skip
    assert not twice, f"named by a second path: {twice}"
    planted = {"tests/x.rs": "use login_etl::ingest::handler::{Deadline, BatchHandler};\nlogin_etl::profile::Profile::Full"}
    assert sorted(second_names(planted, "login_etl", surface)) == [
        "tests/x.rs: BatchHandler", "tests/x.rs: Deadline", "tests/x.rs: Profile"]  # fmt: skip


def test_the_built_in_certificates_are_the_ones_listed():
    """docs/ca-certificates.md lists every certificate compiled into the
    binary (src/database/ca/*.pem: the RDS CAs, Amazon Trust Services'
    roots) by its SHA-256 fingerprint and expiry, none else; the RDS
    bundle holds each region's three G1 roots and nothing expired."""
    import datetime
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    rows = set()
    for name, kind in (("rds-global-bundle.pem", "RDS"), ("amazon-trust-services.pem", "RDS Proxy")):
        with warnings.catch_warnings():  # Starfield's root has a negative serial number
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates((ROOT / "src/database/ca" / name).read_bytes())
        for c in certs:
            cn = c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
            assert c.not_valid_after_utc > datetime.datetime.now(datetime.UTC), f"{cn} has expired"
            rows.add((c.not_valid_after_utc.date().isoformat(), cn, kind, c.fingerprint(hashes.SHA256()).hex().upper()))
        if kind == "RDS":
            kinds = {cn.rsplit(" Root CA ", 1)[1] for _, cn, k, _ in rows if k == "RDS"}
            assert kinds == {"RSA2048 G1", "RSA4096 G1", "ECC384 G1"} and len(certs) % 3 == 0, kinds
    # doctor names each file's first to expire (src/database/tls.rs's constants).
    tls = (ROOT / "src/database/tls.rs").read_text()
    for const, kind in (("RDS_CA_FIRST_EXPIRING", "RDS"), ("AMAZON_TRUST_FIRST_EXPIRING", "RDS Proxy")):
        date, cn = min((d, c) for d, c, k, _ in rows if k == kind)
        named = re.search(const + r': \(&str, &str\) =\s*\("([^"]+)", "([^"]+)"\)', tls)
        assert named and named.groups() == (cn, date), (const, named and named.groups(), (cn, date))
    page = (ROOT / "docs" / "ca-certificates.md").read_text()
    listed = set(re.findall(r"^\| (\d{4}-\d\d-\d\d) \| ([^|]+?) \| (RDS(?: Proxy)?) \| `([0-9A-F]{64})` \|$", page, re.M))
    assert listed == rows, {"listed, not built in": listed - rows, "built in, not listed": rows - listed}
