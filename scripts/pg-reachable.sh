#!/usr/bin/env bash
# Stops a target that needs PostgreSQL with what to do, before anything
# connects: the server at URL (the Makefile's PG_ADMIN_URL) must answer.
# Usage: scripts/pg-reachable.sh URL
set -euo pipefail
url=${1:?usage: scripts/pg-reachable.sh URL}
pg_isready -d "$url" -q || {
  echo "PostgreSQL is not reachable at $url: start it (Debian: pg_ctlcluster <version> main start) or set PG_ADMIN_URL"
  exit 1
}
