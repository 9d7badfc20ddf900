#!/usr/bin/env bash
# make bench-scale: ingest, forget and retention as user_logins grows to
# 20 M and 100 M rows (BENCH_SCALE_ROWS), then maintain's vault retention
# at 2 M and 20 M entries (BENCH_VAULT_ENTRIES): about an hour and 45 GB
# of disk.
set -euo pipefail
: "${PG_ADMIN_URL:?}"
cd "$(dirname "$0")/.."
scripts/pg-reachable.sh "$PG_ADMIN_URL"
export LOGIN_ETL_TEST_PG=$PG_ADMIN_URL
quiet_json() { grep --line-buffered -v '^{'; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB; PostgreSQL $(psql "$PG_ADMIN_URL" -Atc 'SHOW server_version'), shared_buffers $(psql "$PG_ADMIN_URL" -Atc 'SHOW shared_buffers')"
echo "== [1/2] ingest, forget and retention as user_logins grows"
cargo bench --quiet --bench scale 2> >(quiet_json >&2) | quiet_json
echo "== [2/2] maintain's vault retention as the vault grows"
cargo bench --quiet --bench vault_purge 2> >(quiet_json >&2) | quiet_json
