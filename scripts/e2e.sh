#!/usr/bin/env bash
# make e2e: LocalStack end to end. The host executor's own tests (a
# scripted bootstrap) first, then the whole flow: tests/test_localstack_e2e.py
# and tests/test_poll_localstack.py in E2E_WORKERS pytest-xdist workers
# (they wait mostly on queues, timers and LocalStack), one stack's tests in
# one worker (--dist loadgroup), all against one LocalStack
# (scripts/with-localstack.sh).
set -euo pipefail
: "${VENV:?}" "${LS_VENV:?}" "${E2E_WORKERS:?}"
cd "$(dirname "$0")/.."
started=$(date +%s)
ls_python=$(realpath "$LS_VENV")/bin/python
(cd localstack/host_executor && "$ls_python" -m pytest -q -p no:cacheprovider test_host_executor.py)
# -rP: the figures the tests print (drain times, receives, outages).
scripts/with-localstack.sh "$VENV/bin/python" -m pytest -q -n "$E2E_WORKERS" --dist loadgroup -rP --durations 8 \
  tests/test_localstack_e2e.py tests/test_poll_localstack.py
echo "make e2e: $(( $(date +%s) - started )) s wall"
