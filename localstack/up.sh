#!/usr/bin/env bash
# Start LocalStack on this host (no Docker engine needed), bound to 127.0.0.1,
# with Lambda functions run as host processes by the `host` runtime executor
# (localstack/host_executor). Waits for health with a bounded timeout.
# Idempotent: if our LocalStack already runs, it says so and returns.
# Also starts the stacks' PostgreSQL (passwords over TLS: pg_cluster.py).
#
#   LOCALSTACK_VENV           venv holding localstack-core (default .venv-localstack)
#   LOCALSTACK_STATE          pid file, log and LocalStack's filesystem (default .localstack)
#   LOCALSTACK_PORT           gateway port on 127.0.0.1 (default 4566)
#   LOCALSTACK_START_TIMEOUT  seconds to wait for health (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${LOCALSTACK_VENV:-.venv-localstack}
state=${LOCALSTACK_STATE:-.localstack}
port=${LOCALSTACK_PORT:-4566}
timeout=${LOCALSTACK_START_TIMEOUT:-90}
pidfile=$state/localstack.pid
log=$state/localstack.log
health=http://127.0.0.1:$port/_localstack/health

# The stacks' PostgreSQL: a throwaway server that, as RDS, takes only
# passwords over TLS (localstack/pg_cluster.py; down.sh stops it).
mkdir -p "$state"
python3 localstack/pg_cluster.py start --state "$state/pg-cluster.json"

if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "LocalStack already running (pid $(cat "$pidfile"), $health)"
  exit 0
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "error: 127.0.0.1:$port is taken by another process (not ours: no $pidfile)." >&2
  echo "       Stop it, or use another port: LOCALSTACK_PORT=4567 make demo" >&2
  exit 1
fi
[[ -x $venv/bin/python ]] || { echo "error: no LocalStack venv at $venv: run make localstack-tools" >&2; exit 1; }

mkdir -p "$state/fs"
# The event-source mapping's poller: back off at most 1 s on an empty queue
# (so tests drain quickly) and on a failed invocation. LocalStack's default
# for the latter (up to 60 s) hides what AWS does: its SQS pollers keep
# receiving, and SQS redelivers a failed batch after its visibility timeout,
# counting each receive (the outage test in tests/test_localstack_e2e.py
# depends on it).
echo "==> starting LocalStack on 127.0.0.1:$port (log: $log)"
# docs/development.md ("LocalStack's settings") says why each setting below is
# set, and ("Without Docker") what the host executor is.
env OVERRIDE_IN_DOCKER=0 \
  FILESYSTEM_ROOT="$PWD/$state/fs" \
  GATEWAY_LISTEN="127.0.0.1:$port" \
  GATEWAY_SERVER=hypercorn \
  LOCALSTACK_HOST="127.0.0.1:$port" \
  SQS_ENDPOINT_STRATEGY=path \
  DNS_ADDRESS=0 \
  SKIP_SSL_CERT_DOWNLOAD=1 \
  DISABLE_EVENTS=1 \
  SERVICES=sqs,secretsmanager,lambda,cloudformation,iam,sts,logs,s3,cloudwatch,kms,events,sns \
  LAMBDA_RUNTIME_EXECUTOR=host \
  LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_EMPTY_POLL_SEC=1 \
  LAMBDA_EVENT_SOURCE_MAPPING_MAX_BACKOFF_ON_ERROR_SEC=1 \
  setsid "$venv/bin/python" -m localstack.runtime.main > "$log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pidfile"

deadline=$((SECONDS + timeout))
until curl -fsS "$health" > /dev/null 2>&1; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo; echo "error: LocalStack exited during start; the end of $log:" >&2
    tail -n 30 "$log" >&2; rm -f "$pidfile"; exit 1
  fi
  if (( SECONDS >= deadline )); then
    echo; echo "error: LocalStack not healthy after ${timeout}s; the end of $log:" >&2
    tail -n 30 "$log" >&2
    "$(dirname "$0")/down.sh" >&2 || true
    exit 1
  fi
  printf '.'; sleep 1
done
echo "LocalStack is up (pid $pid): $health"
