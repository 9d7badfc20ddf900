#!/usr/bin/env bash
# LocalStack (no Docker) and this project's host executor, installed into
# LS_VENV: a venv of its own, its pins conflicting with SAM's. Then STAMP
# (the Makefile's LS_STAMP) is touched, which names the pins and fixes.
# Usage: scripts/localstack-install.sh STAMP
set -euo pipefail
: "${LS_VENV:?}" "${LS_PACKAGES:?}" "${PYTHON:=python3}"
stamp=${1:?usage: scripts/localstack-install.sh STAMP}
cd "$(dirname "$0")/.."

echo "==> installing LocalStack and the host executor into $LS_VENV (about a minute the first time)"
read -ra packages <<< "$LS_PACKAGES"
"$PYTHON" -m venv "$LS_VENV"
# --no-compile: as the Makefile's venv (its comment says why).
"$LS_VENV/bin/pip" install --quiet --no-compile --disable-pip-version-check "${packages[@]}"
# The one fix LocalStack 4.13.1 needs on Python 3.11 (a PEP 604 annotation evaluated at import).
f=$(echo "$LS_VENV"/lib/python3*/site-packages/localstack/packages/api.py)
grep -q '^from __future__ import annotations' "$f" || sed -i '1i from __future__ import annotations' "$f"
# And KMS's CreateKey: uuid5() takes bytes only from Python 3.12 on; the same UUID, computed for 3.11.
k=$(echo "$LS_VENV"/lib/python3*/site-packages/localstack/services/kms/models.py)
sed -i 's/uuid\.uuid5(self\._internal_key_id, key_material)\.hex/uuid.UUID(bytes=__import__("hashlib").sha1(self._internal_key_id.bytes + key_material).digest()[:16], version=5).hex/' "$k"
grep -q '__import__("hashlib").sha1(self._internal_key_id.bytes' "$k" || { echo "the LocalStack KMS fix did not apply to $k"; exit 1; }
"$LS_VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./localstack/host_executor
# setuptools leaves its build tree in the source folder: not ours to keep.
rm -rf localstack/host_executor/build localstack/host_executor/*.egg-info
rm -f "$LS_VENV"/.installed-* && touch "$stamp"
