#!/usr/bin/env bash
# make package-ca-bundle (and make deploy when DB_CA_BUNDLE is given): the
# RDS CA bundle DB_CA_BUNDLE copied beside bootstrap in each function sam
# built into SAM_BUILD_DIR; the stack's DbCaBundleFile names it.
set -euo pipefail
: "${SAM_BUILD_DIR:?}"
cd "$(dirname "$0")/.."
bundle=${DB_CA_BUNDLE:-}
[ -n "$bundle" ] || { echo "give the bundle: make package-ca-bundle DB_CA_BUNDLE=global-bundle.pem" >&2; exit 2; }
grep -qs 'BEGIN CERTIFICATE' "$bundle" || { echo "DB_CA_BUNDLE=$bundle is no PEM file of certificates: download the RDS bundle, https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem (docs/connecting.md, TLS to the database)" >&2; exit 2; }
n=0
for dir in "$SAM_BUILD_DIR"/*/; do
  if [ -f "$dir/bootstrap" ]; then cp "$bundle" "$dir"; n=$((n + 1)); fi
done
[ $n -gt 0 ] || { echo "no function built in $SAM_BUILD_DIR: run make sam-build first" >&2; exit 2; }
echo "==> $(basename "$bundle") packaged beside bootstrap in $n function(s): the stack's DbCaBundleFile must be $(basename "$bundle")"
