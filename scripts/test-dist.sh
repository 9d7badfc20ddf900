#!/usr/bin/env bash
# make test-dist: tests/test_dist.py over the release in DIST_DIR (its
# checksums, its artifacts, the quick start and a redeploy in LocalStack
# with no Rust on the PATH, and the previous release's binary, in
# PREVIOUS_DIR, ingesting against the schema this one migrates to), then,
# when the release holds the amd64 image archive, that image's poll check
# (make test-container).
set -euo pipefail
: "${VENV:?}" "${DIST_DIR:?}" "${PREVIOUS_DIR:?}" "${PREVIOUS_RELEASE:?}" "${CONTAINER_ENGINE:?}"
cd "$(dirname "$0")/.."
dist=$(realpath "$DIST_DIR")
previous=$(git show "$PREVIOUS_RELEASE:Cargo.toml" 2> /dev/null | sed -n 's/^version = "\(.*\)"$/\1/p' | head -n 1)
# LOGIN_ETL_DB_ADDRESS: the functions reach the throwaway server's RDS name
# (localstack/pg_cluster.py's RDS_HOST) at 127.0.0.1, as a VPC's DNS would.
DIST_DIR="$dist" PREVIOUS_LOGIN_ETL="$PREVIOUS_DIR/login-etl" PREVIOUS_VERSION="$previous" LOGIN_ETL_DB_ADDRESS=127.0.0.1 \
  scripts/with-localstack.sh "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rP tests/test_dist.py
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
archive=$dist/login-etl-$version-image-amd64.oci.tar
if [ -f "$archive" ]; then
  # shellcheck disable=SC2086 # PODMAN_ENV is NAME=value words, or none
  env ${PODMAN_ENV:-} "$CONTAINER_ENGINE" load --quiet -i "$archive"
  make --no-print-directory test-container IMAGE="localhost/login-etl:$version-amd64"
fi
