#!/usr/bin/env bash
# Runs a command against this project's LocalStack (make e2e, make
# test-dist): started here unless it runs already (make demo leaves it
# running), and then stopped here, by PID, on failure or Ctrl-C too.
# up.sh also starts the stacks' PostgreSQL, which takes only passwords
# over TLS, as RDS does (localstack/pg_cluster.py; idempotent); down.sh
# stops it. Usage: scripts/with-localstack.sh COMMAND...
set -euo pipefail
cd "$(dirname "$0")/.."
state=${LOCALSTACK_STATE:-.localstack}
if [ -f "$state/localstack.pid" ] && kill -0 "$(cat "$state/localstack.pid")" 2> /dev/null; then ours=0; else ours=1; fi
trap '[ $ours = 1 ] && localstack/down.sh' EXIT
trap 'exit 130' INT TERM
if [ $ours = 0 ]; then python3 localstack/pg_cluster.py start --state "$state/pg-cluster.json"; else localstack/up.sh; fi
"$@"
