#!/usr/bin/env bash
# make previous-release: the previous release's binary (PREVIOUS_RELEASE, a
# commit of this clone's history), built once into PREVIOUS_DIR (in
# CI_CACHE), for tests/test_dist.py's rollback check. A shallow clone
# cannot hold it: that is said in a file test_dist.py reads (its rollback
# check is skipped with that reason), never silently.
set -euo pipefail
: "${PREVIOUS_RELEASE:?}" "${PREVIOUS_DIR:?}"
cd "$(dirname "$0")/.."
[ -x "$PREVIOUS_DIR/login-etl" ] && exit 0
if ! git cat-file -e "$PREVIOUS_RELEASE^{commit}" 2> /dev/null; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    mkdir -p "$PREVIOUS_DIR"
    echo "this clone is shallow and lacks $PREVIOUS_RELEASE: git fetch --unshallow" | tee "$PREVIOUS_DIR/unavailable"
    exit 0
  fi
  echo "commit $PREVIOUS_RELEASE (the previous release) is not in this clone"; exit 1
fi
echo "==> building the previous release ($(git show -s --format='%h %ad' --date=short "$PREVIOUS_RELEASE")) into $PREVIOUS_DIR (a few minutes, once)"
rm -rf "$PREVIOUS_DIR/src" && mkdir -p "$PREVIOUS_DIR/src"
git archive "$PREVIOUS_RELEASE" | tar -x -C "$PREVIOUS_DIR/src"
CARGO_TARGET_DIR="$PREVIOUS_DIR/target" cargo build --quiet --locked --manifest-path "$PREVIOUS_DIR/src/Cargo.toml" --bin login-etl
install -m 0755 "$PREVIOUS_DIR/target/debug/login-etl" "$PREVIOUS_DIR/login-etl"
rm -rf "$PREVIOUS_DIR/target"
