#!/usr/bin/env bash
# make sam-check, CI's check of the deployable artifact's pipeline: sam
# build runs cargo lambda (zig, the vendored OpenSSL) for the arm64
# bootstrap. For less than a release build:
# - no optimizer and no LTO (RUSTFLAGS also overrides the per-package levels);
# - a target directory kept between runs in CI_CACHE, so that only
#   login-etl compiles again. Cold, the vendored OpenSSL alone is about
#   435 s of CPU through zig (docs/performance.md).
# The directory is per toolchain, cargo-lambda and zig (zig's output is not
# in cargo's fingerprints); it is emptied past SAM_CHECK_MAX_MB, and one
# unused for SAM_CHECK_KEEP_DAYS (an older toolchain's) is removed.
# login-etl's own artifacts are removed first: cargo judges a path package
# fresh by mtimes, and an older clone's files would look older than another
# clone's build. cargo lambda runs from a copy kept there too: the zig
# wrappers it writes for cargo (linker, C compiler: in every crate's
# fingerprint) name its own path, and a clone's .venv would make every
# clone rebuild it all. One run at a time per directory (flock).
set -euo pipefail
: "${VENV:?}" "${CI_CACHE:?}" "${CARGO_LAMBDA:?}" "${SAM_CHECK_MAX_MB:?}" "${SAM_CHECK_KEEP_DAYS:?}"
cd "$(dirname "$0")/.."
key=$( { rustc -vV; "$CARGO_LAMBDA" lambda --version; "$VENV/bin/python" -m ziglang version; } | sha1sum | cut -c1-12)
dir=$CI_CACHE/sam-check-$key
mkdir -p "$CI_CACHE"
for old in "$CI_CACHE"/sam-check-*.lock; do
  [ -e "$old" ] && [ "$old" != "$dir.lock" ] && [ -n "$(find "$old" -mtime +"$SAM_CHECK_KEEP_DAYS")" ] || continue
  ( flock -n 9 && echo "==> removing ${old%.lock} (unused for $SAM_CHECK_KEEP_DAYS days)" && rm -rf "${old%.lock}" "$old" ) 9< "$old" || true
done
# The lock file's mtime is the directory's last use (exec 9> rewrites it).
exec 9> "$dir.lock"
flock -n 9 || { echo "==> waiting for $dir.lock (another sam-check runs; at most an hour)"; flock -w 3600 9; } \
  || { echo "$dir.lock still held after an hour: stop the other make sam-check, or use another CI_CACHE"; exit 1; }
mkdir -p "$dir"
used=$(du -sm "$dir" | cut -f1)
if [ "$used" -gt "$SAM_CHECK_MAX_MB" ]; then echo "==> $dir holds $used MB (> SAM_CHECK_MAX_MB): emptied"; rm -rf "$dir"; mkdir -p "$dir"; fi
echo "==> sam build for arm64, opt-level 0, dependencies in $dir ($(du -sm "$dir" | cut -f1) MB kept; empty: 10 to 14 minutes of CPU)"
mkdir -p "$dir/bin"
cmp -s "$CARGO_LAMBDA" "$dir/bin/cargo-lambda" || { cp "$CARGO_LAMBDA" "$dir/bin/.cargo-lambda" && mv "$dir/bin/.cargo-lambda" "$dir/bin/cargo-lambda"; }
CARGO_TARGET_DIR="$dir" cargo clean --quiet --release --target aarch64-unknown-linux-gnu -p login-etl
OPENSSL_NO_VENDOR=0 RUSTFLAGS="-C opt-level=0" CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_TARGET_DIR="$dir" PATH="$dir/bin:$PATH" sam build --template template.yaml
# ELF e_machine (2 bytes at offset 18) 0xb7: AArch64.
[ "$(od -An -tx1 -j18 -N2 .aws-sam/build/LoginEtlFunction/bootstrap 2> /dev/null | tr -d ' \n')" = b700 ] \
  || { echo "sam build left no arm64 bootstrap in .aws-sam/build/LoginEtlFunction (see its output above)"; exit 1; }
