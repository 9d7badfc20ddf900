#!/usr/bin/env bash
# make lint-replay, after CI's make test: CI builds make test with
# clippy-driver as RUSTC_WORKSPACE_WRAPPER (.ci/run). These are that
# build's cargo commands again, under make's environment (OPENSSL_NO_VENDOR,
# which openssl-sys's fingerprint watches): cargo compiles what no earlier
# step did (the binary and the examples in test mode), replays each crate's
# stored diagnostics, and .ci/lint-report fails on any warning or error in
# our code.
set -euo pipefail
cd "$(dirname "$0")/.."
err=$(mktemp)
trap 'rm -f "$err"' EXIT
( cargo build --bin login-etl --examples --message-format=json; a=$?
  cargo test --all-targets --no-run --message-format=json; b=$?
  exit $(( a | b )) ) 2> "$err" | .ci/lint-report || {
  grep -Ev '^ *(Finished|Executable) ' "$err" | tail -n 20
  exit 1
}
