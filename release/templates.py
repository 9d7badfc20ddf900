#!/usr/bin/env python3
"""template.yaml for a release: each function's code is the release's zip
for one CPU, so `sam deploy` (or `aws cloudformation package` and
`deploy`) needs no build and no Rust.

    python3 release/templates.py OUT_DIR VERSION

writes OUT_DIR/template-x86_64.yaml and OUT_DIR/template-arm64.yaml. What
changes from template.yaml: the functions' CodeUri (the zip beside the
template) and their build metadata (gone), and the Architecture parameter
(the zip's CPU, the only value allowed). Everything else is template.yaml's.
"""

from __future__ import annotations

import sys
from pathlib import Path

from samcli.yamlhelper import yaml_dump, yaml_parse  # the SAM CLI's own CloudFormation YAML (intrinsic tags)

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ("LoginEtlFunction", "MaintenanceFunction", "SetupFunction")


def release_template(source: dict, zip_name: str, arch: str) -> dict:
    template = yaml_parse(yaml_dump(source))  # a deep copy
    for name in FUNCTIONS:
        function = template["Resources"][name]
        if function["Properties"].get("CodeUri") != ".":
            raise SystemExit(f"template.yaml: {name}'s CodeUri is no longer '.'; update release/templates.py")
        function.pop("Metadata", None)
        function["Properties"]["CodeUri"] = zip_name
    parameter = template["Parameters"]["Architecture"]
    parameter["Default"] = arch
    parameter["AllowedValues"] = [arch]
    parameter["Description"] = f"CPU of the function: this template deploys the {arch} zip ({zip_name})."
    return template


def main() -> None:
    out, version = Path(sys.argv[1]), sys.argv[2]
    source = yaml_parse((ROOT / "template.yaml").read_text())
    for arch in ("x86_64", "arm64"):
        zip_name = f"login-etl-lambda-{version}-{arch}.zip"
        if not (out / zip_name).is_file():
            raise SystemExit(f"{out / zip_name} is missing: the templates are written after the zips")
        (out / f"template-{arch}.yaml").write_text(yaml_dump(release_template(source, zip_name, arch)))


if __name__ == "__main__":
    main()
