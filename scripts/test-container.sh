#!/usr/bin/env bash
# make test-container: tests/test_container.py against the image IMAGE
# (make image first), then the figures it measured.
set -euo pipefail
: "${VENV:?}" "${PG_ADMIN_URL:?}" "${IMAGE:?}" "${CONTAINER_ENGINE:?}"
cd "$(dirname "$0")/.."
scripts/pg-reachable.sh "$PG_ADMIN_URL"
LOGIN_ETL_IMAGE=$IMAGE "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_container.py
echo "==> the container's figures ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs):"
sed 's/^/    /' target/container-figures.txt
