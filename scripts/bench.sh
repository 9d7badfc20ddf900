#!/usr/bin/env bash
# make bench: every benchmark, in seven steps (about 45 minutes, 12 GB of
# disk at the default sizes), each printing its figures beside the floor
# it is judged against; docs/performance.md holds the results.
set -euo pipefail
: "${VENV:?}" "${PG_ADMIN_URL:?}"
cd "$(dirname "$0")/.."
scripts/pg-reachable.sh "$PG_ADMIN_URL"
export LOGIN_ETL_TEST_PG=$PG_ADMIN_URL
# The benches print JSON lines for the scripts that chart them: not here.
quiet_json() { grep --line-buffered -v '^{'; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== [1/7] per-record transform, one core (criterion)"
cargo bench --quiet --bench transform -- --warm-up-time 2 --measurement-time 5 2> /dev/null | grep -E '^per_(record|batch)|thrpt|^ +time:' || true
echo "== [2/7] batch into PostgreSQL vs COPY; the write against fixed floors (a plain table of the same columns, the upstream DDL's) and bytes per row"
cargo bench --quiet --bench batch_pg 2> /dev/null
cargo bench --quiet --bench floor 2> /dev/null
echo "== [3/7] the release binary (host build) under a Runtime API: cold start, peak RSS, warm invocations of 10 / 1,000 / 10,000 records beside their floor"
cargo bench --quiet --bench lambda_process 2> /dev/null
echo "== [4/7] arm64 release binary for Lambda"
OPENSSL_NO_VENDOR=0 cargo lambda build --quiet --release --arm64 --bin login-etl
stat -c %s target/lambda/login-etl/bootstrap | awk '{printf "target/lambda/login-etl/bootstrap: %d bytes (%.2f MB, %.2f MiB); goal <= 10 MB\n", $1, $1/1e6, $1/1048576}'
echo "== [5/7] login-etl poll: messages/s at concurrency 1, 2, 4 against LocalStack, beside the emulator alone"
"$VENV/bin/python" benches/poll_throughput.py
echo "== [6/7] login-etl rotate-key: rows re-keyed per second in 1 job and in 2 (--jobs), ingest stopped then beside it, CPU per row on each side, on ${BENCH_REKEY_ROWS:-20000000} rows (about 35 min, 12 GB of disk)"
cargo bench --quiet --bench rekey 2> >(quiet_json >&2) | quiet_json
echo "== [7/7] the longest write beside rotate-key's switch (${BENCH_STALLS_VAULT:-4000000} vault entries) and beside maintain draining ${BENCH_STALLS_DAY:-10000000} of today's rows from the DEFAULT partition (about 5 min)"
cargo bench --quiet --bench stalls 2> >(quiet_json >&2) | quiet_json
