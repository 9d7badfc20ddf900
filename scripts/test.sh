#!/usr/bin/env bash
# make test: the whole suite, in three streams side by side after one build,
# each line prefixed with its stream, then each step's wall time (printed
# on failure too, so that a slower suite shows in every run):
# - rust: the Rust tests (cargo nextest; they wait mostly on PostgreSQL);
# - py: the template, the documented GRANT blocks, the command line as an
#   operator meets it, the docs and the contract (pytest);
# - e2e: LocalStack end to end (make e2e; it waits mostly on LocalStack).
# TEST_PG is the server the Rust tests and the py stream make their
# databases on (the Makefile's PG_ADMIN_URL); make e2e's stacks have a
# password-only TLS server of their own. What each failed stream said
# failed goes to TEST_FAILURES, printed again
# at the end (and by .ci/run last, where a CI log's tail shows it).
# TEST_SERIAL=1 runs the streams one after another.
set -euo pipefail
: "${VENV:?}" "${TEST_PG:?}" "${CARGO_LAMBDA:?}" "${NEXTEST:?}" "${NEXTEST_THREADS:?}" "${TEST_FAILURES:?}"
cd "$(dirname "$0")/.."

timings=(); pids=(); started=$(date +%s%3N); rm -f "$TEST_FAILURES"
# On any exit (Ctrl-C too) the streams stop with it.
report() {
  for p in "${pids[@]}"; do kill -- -"$p" 2> /dev/null || true; done
  echo; echo "make test: wall time per step"; for t in "${timings[@]}"; do echo "  $t"; done
  printf '  %-78s %7.1f s\n' "total" "$(( $(date +%s%3N) - started ))e-3"
  if [ -s "$TEST_FAILURES" ]; then echo; cat "$TEST_FAILURES"; fi
}
trap report EXIT
trap 'exit 130' INT TERM
timed() {
  local name=$1 t rc=0; t=$(date +%s%3N); shift
  "$@" || rc=$?
  timings+=("$(printf '%-78s %7.1f s%s' "$name" "$(( $(date +%s%3N) - t ))e-3" "$( ((rc)) && echo '  FAILED')")")
  return $rc
}

# The two venvs install while cargo compiles the function (on a fresh
# machine each takes a minute or two; after make demo, nothing to do).
timed "build the function, install the venvs" make --no-print-directory -j3 host-build python-tools localstack-tools
scripts/pg-reachable.sh "$TEST_PG"
# make e2e packages a copy: the test build beside it may replace target/debug/login-etl.
prebuilt=${CARGO_TARGET_DIR:-target}/e2e-login-etl
cp -f "${CARGO_TARGET_DIR:-target}/debug/login-etl" "$prebuilt"

# Each stream in a process group of its own (set -m), which report() stops.
side_dir=$(mktemp -d); set -m
side() {
  local name=$1 tag=$2; shift 2
  ( set +e; t=$(date +%s%3N)
    if [ -n "${TEST_SERIAL:-}" ]; then "$@" 2>&1 | tee "$side_dir/$tag.out"; rc=${PIPESTATUS[0]}
    else "$@" 2>&1 | sed -u "s/^/[$tag] /" | tee "$side_dir/$tag.out"; rc=${PIPESTATUS[0]}; fi
    printf '%-78s %7.1f s%s\n' "$name" "$(( $(date +%s%3N) - t ))e-3" "$( ((rc)) && echo '  FAILED')" > "$side_dir/$tag" ) &
  pids+=($!)
  if [ -n "${TEST_SERIAL:-}" ]; then wait $!; fi
}
# make e2e takes the binary just built (LOGIN_ETL_PREBUILT).
side "LocalStack end to end (make e2e)" e2e env LOGIN_ETL_PREBUILT="$(realpath "$prebuilt")" make --no-print-directory e2e
# make e2e waits mostly on LocalStack, which starves at a lower priority:
# the Rust stream (the tests' build, then the tests) runs beside it at
# nice 10 and fills the gaps. On 2 cores the machine is full either way;
# the other arrangements measured slower (Rust and e2e at the same
# priority: 198 s; e2e niced: 212 s). A failed test build interrupts make e2e
# (SIGINT: its pytest workers start their teardown, which execnet cuts
# short after about 15 s, so a stack or database may be left; make e2e
# stops LocalStack) and waits for it before failing.
timed "build the tests (beside make e2e)" nice -n 10 make --no-print-directory test-build || {
  rc=$?; kill -INT -- -"${pids[0]}" 2> /dev/null; set +m; wait "${pids[@]}" 2> /dev/null; pids=(); exit $rc
}
# Each Rust test in a process of its own, NEXTEST_THREADS at once (most
# wait on PostgreSQL, moto or a timer); each test's moto forked from one
# warm server (tests/moto_forkserver.py).
read -ra nextest <<< "$NEXTEST"
side "Rust tests (cargo nextest, $NEXTEST_THREADS at once)" rust \
  nice -n 10 tests/with-moto-forkserver "$VENV/bin/python" env LOGIN_ETL_TEST_PG="$TEST_PG" CARGO_LAMBDA="$CARGO_LAMBDA" MOTO_SERVER="$(realpath "$VENV")/bin/moto_server" \
  "${nextest[@]}" run --lib --test it --run-ignored all --no-fail-fast --hide-progress-bar -j "$NEXTEST_THREADS"
# make validate's steps (sam's lint includes cfn-lint), with the files that
# need the binary cargo built: two workers, one file each.
side "template; pytest: database roles, command line" py bash -c 'sam validate --lint --template template.yaml &&
  PG_ADMIN_URL="$1" "$0" -m pytest -q -n 2 --dist loadfile tests/test_template.py tests/test_database_roles.py tests/test_libpq_env.py \
    tests/test_iam_token.py tests/test_runbooks.py tests/test_cli.py tests/test_docs.py tests/test_contract.py tests/test_deploy_script.py \
    tests/test_workflows.py tests/test_deployer_policy.py tests/test_preflight.py tests/test_release_template.py' \
  "$VENV/bin/python" "$TEST_PG"
set +m; wait "${pids[@]}" || true; pids=()

failed=0
for f in "$side_dir"/rust "$side_dir"/py "$side_dir"/e2e; do
  if [ -f "$f" ]; then timings+=("$(cat "$f")"); grep -q FAILED "$f" || continue; fi
  failed=1; { echo "== $(basename "$f"): what failed (the whole output is above)"; tests/failure-lines "$f.out"; } >> "$TEST_FAILURES"
done
rm -rf "$side_dir"; exit $failed
