#!/usr/bin/env bash
# Stop the LocalStack started by up.sh, by PID: SIGTERM, then SIGKILL after a
# timeout. Function processes it started (bootstraps run by the host executor)
# are stopped too, and the stacks' PostgreSQL. Safe to run when nothing runs.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${LOCALSTACK_STATE:-.localstack}
pidfile=$state/localstack.pid
grace=${LOCALSTACK_STOP_TIMEOUT:-20}

# The stacks' PostgreSQL that up.sh started, whatever LocalStack's state.
trap 'python3 localstack/pg_cluster.py stop --state "$state/pg-cluster.json"' EXIT

if [[ ! -f $pidfile ]]; then echo "LocalStack is not running (no $pidfile)"; exit 0; fi
pid=$(cat "$pidfile")
if ! kill -0 "$pid" 2>/dev/null; then echo "LocalStack (pid $pid) already stopped"; rm -f "$pidfile"; exit 0; fi

# The bootstraps are LocalStack's children, in sessions of their own.
children=$(pgrep -P "$pid" || true)
kill -TERM "$pid"
for _ in $(seq 1 "$grace"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
if kill -0 "$pid" 2>/dev/null; then
  echo "LocalStack (pid $pid) still running after ${grace}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
fi
for c in $children; do kill -KILL "$c" 2>/dev/null || true; done
rm -f "$pidfile"
echo "LocalStack stopped (pid $pid)"
