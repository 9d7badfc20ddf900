#!/usr/bin/env bash
# make rust-tools: what building and testing the Rust code need beside the
# toolchain itself:
# - clippy and rustfmt, and the arm64 target (the Lambda artifact);
# - cargo-nextest, the tests' runner: the machine's if at least
#   NEXTEST_VERSION, else that version from crates.io into NEXTEST_ROOT;
# - the system OpenSSL's headers, for host builds (OPENSSL_NO_VENDOR);
# - PgBouncer (transaction mode, as RDS Proxy pools), for
#   tests/it/pooler.rs and make bench.
set -euo pipefail
: "${NEXTEST_VERSION:?}" "${NEXTEST_ROOT:?}"
cd "$(dirname "$0")/.."

rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
have=$( { cargo nextest --version 2> /dev/null || true; } | awk '/^cargo-nextest/ {print $2}')
if [ -z "$have" ] || [ "$(printf '%s\n' "$NEXTEST_VERSION" "$have" | sort -V | head -n 1)" != "$NEXTEST_VERSION" ]; then
  if [ ! -x "$NEXTEST_ROOT/bin/cargo-nextest" ]; then
    echo "==> installing cargo-nextest $NEXTEST_VERSION from crates.io into $NEXTEST_ROOT (a few minutes, once)"
    cargo install --locked --quiet cargo-nextest --version "$NEXTEST_VERSION" --root "$NEXTEST_ROOT"
  fi
fi
pkg-config --exists openssl 2> /dev/null || { echo "==> installing libssl-dev and pkg-config (Debian packages)"; scripts/apt-install.sh libssl-dev pkg-config; }
command -v pgbouncer > /dev/null || [ -x /usr/sbin/pgbouncer ] || { echo "==> installing pgbouncer (Debian package)"; scripts/apt-install.sh pgbouncer; }
rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
