#!/usr/bin/env bash
# Stops a target that needs PostgreSQL with what to do, before anything
# connects: PG_ADMIN_URL (the Makefile's) must answer.
set -euo pipefail
pg_isready -d "${PG_ADMIN_URL:?}" -q || {
  echo "PostgreSQL is not reachable at $PG_ADMIN_URL: start it (Debian: pg_ctlcluster <version> main start) or set PG_ADMIN_URL"
  exit 1
}
