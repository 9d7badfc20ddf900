#!/usr/bin/env bash
# make dist: a release's artifacts in dist/, built on this machine with the
# project's own tools (cargo lambda and its zig, podman, cargo-cyclonedx):
#
#   login-etl-V-x86_64-linux, login-etl-V-aarch64-linux   static binaries (musl, OpenSSL inside)
#   login-etl-lambda-V-x86_64.zip, …-arm64.zip            the function: bootstrap for provided.al2023
#   template.yaml                                          the one file to deploy: it fetches a zip and
#                                                          the stack from RELEASE_URL, each SHA-256 pinned
#   login-etl-V-stack.yaml                                 the stack (template.yaml's nested stack)
#   deploy.sh                                              a deploy of template.yaml, reusing retained keys
#   preflight.sh                                           the network a deploy needs, checked first
#   deployer-policy.json                                   the least IAM policy that deploys the stack
#   login-etl-V-image-amd64.oci.tar, …-arm64.oci.tar      `login-etl poll` as a container image (OCI archive)
#   login-etl-V.schema.json                                the message contract (login-etl schema)
#   login-etl-V.cdx.json                                   the SBOM (CycloneDX 1.5, the crates linked in)
#   SHA256SUMS                                             every file above
#
# One static binary per CPU serves all three uses: the Lambda's bootstrap,
# the operator's commands (README's setup block) and the image's entry.
# Reproducible from one commit on one machine: file times are the commit's
# (SOURCE_DATE_EPOCH), the SBOM's serial number and time are dropped, the
# crate's own paths in the binary are relative. Not across machines: the
# image's CA bundle is the build machine's, and the dependencies' paths
# are under the builder's CARGO_HOME.
#
# The images: release/images.sh, with the engine named.
#
# Environment (the Makefile sets them): DIST_DIR, DIST_TARGET_DIR,
# DIST_CARGO_ENV (CI's cheaper profile), DIST_STABLE_TOOLS (a target
# directory shared by clones: see below), IMAGES=0 (no podman: no images),
# CYCLONEDX (the cargo-cyclonedx binary), CONTAINER_ENGINE, PODMAN_ENV.
# RELEASE_URL (the release workflow's: its download URL) is template.yaml's
# default ReleaseUrl; unset, a deploy must give it.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${DIST_DIR:-dist}
target_dir=${DIST_TARGET_DIR:-target/dist}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2> /dev/null || date +%s)}
# The compilers get the time the dependencies last changed instead: the C
# builds (vendored OpenSSL, ring) put SOURCE_DATE_EPOCH in their build
# scripts' fingerprints, so the commit's time rebuilt them for every commit
# in CI's kept target directory (about ten minutes of CPU for both CPUs).
# Still one value per commit: reproducible as before.
build_epoch=$(git log -1 --format=%ct -- Cargo.lock 2> /dev/null || true)
build_epoch=${build_epoch:-$SOURCE_DATE_EPOCH}
export TZ=UTC
engine=${CONTAINER_ENGINE:?set CONTAINER_ENGINE: podman or docker (the Makefile says podman)}
say() { echo "==> $*"; }

rm -rf "$out" && mkdir -p "$out" && out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# CI keeps the target directory between clones (make dist-check sets
# DIST_STABLE_TOOLS): cargo lambda's zig wrappers name cargo-lambda's own
# path, which is in every crate's fingerprint, so it runs from a copy kept
# in that directory, or each clone's .venv would build every dependency
# again (make sam-check does the same). login-etl's own artifacts go first:
# cargo judges a path package fresh by mtimes, and another clone's build
# could look newer than this clone's files.
if [ -n "${DIST_STABLE_TOOLS:-}" ]; then
  tools="$target_dir/bin"; mkdir -p "$tools"
  found=$(command -v cargo-lambda)
  cmp -s "$found" "$tools/cargo-lambda" || { cp "$found" "$tools/.cargo-lambda" && mv "$tools/.cargo-lambda" "$tools/cargo-lambda"; }
  export PATH="$tools:$PATH"
fi

# Static, through zig (the C compiler cargo lambda brings): vendored
# OpenSSL for either CPU without a cross toolchain.
for arch in x86_64 aarch64; do
  triple=$arch-unknown-linux-musl
  rustup target list --installed | grep -q "^$triple\$" || rustup target add "$triple"
  if [ -n "${DIST_STABLE_TOOLS:-}" ]; then
    CARGO_TARGET_DIR="$target_dir" cargo clean --quiet --release --target "$triple" -p login-etl
  fi
  say "cargo lambda build --release --target $triple (the first build compiles every dependency and OpenSSL: several minutes)"
  env SOURCE_DATE_EPOCH="$build_epoch" OPENSSL_NO_VENDOR=0 CARGO_TARGET_DIR="$target_dir" ${DIST_CARGO_ENV:-} \
    cargo lambda build --quiet --release --locked --target "$triple" --bin login-etl
  # cargo lambda moves the binary there, whatever the target.
  binary="$target_dir/lambda/login-etl/bootstrap"
  # ELF with no interpreter (PT_INTERP): runs on any Linux, Lambda's included.
  if readelf -l "$binary" | grep -q 'Requesting program interpreter'; then
    echo "$binary is dynamically linked: a musl build should not be" >&2; exit 1
  fi
  install -m 0755 "$binary" "$out/login-etl-$version-$arch-linux"
  lambda_arch=$arch; [ "$arch" = aarch64 ] && lambda_arch=arm64
  mkdir -p "$stage/$lambda_arch"
  install -m 0755 "$binary" "$stage/$lambda_arch/bootstrap"
  touch -d "@$SOURCE_DATE_EPOCH" "$stage/$lambda_arch/bootstrap"
  (cd "$stage/$lambda_arch" && zip -q -X -D "$out/login-etl-lambda-$version-$lambda_arch.zip" bootstrap)
done

say "template.yaml (from ${RELEASE_URL:-a ReleaseUrl the deploy gives}) and the stack it nests, deploy.sh"
python3 release/templates.py "$out" "$version"
install -m 0755 release/deploy.sh "$out/deploy.sh"
install -m 0755 release/preflight.sh "$out/preflight.sh"
install -m 0644 release/deployer-policy.json "$out/deployer-policy.json"

say "the contract's JSON Schema"
"$out/login-etl-$version-x86_64-linux" schema > "$out/login-etl-$version.schema.json"

say "the SBOM (cargo-cyclonedx)"
cyclonedx=${CYCLONEDX:-cargo-cyclonedx}
# Build dependencies kept: openssl-src is one, and its OpenSSL is in the binary.
"$cyclonedx" cyclonedx --quiet --format json --spec-version 1.5 --describe binaries --target x86_64-unknown-linux-musl
# Its serial number and timestamp change every run; the rest is the graph.
python3 - "$out/login-etl-$version.cdx.json" << 'PY'
import json, sys
from pathlib import Path
made = Path("login-etl_bin.cdx.json")
sbom = json.loads(made.read_text())
sbom.pop("serialNumber", None)
sbom.get("metadata", {}).pop("timestamp", None)
Path(sys.argv[1]).write_text(json.dumps(sbom, indent=2, sort_keys=True) + "\n")
made.unlink()
PY

if [ "${IMAGES:-1}" = 1 ]; then
  CONTAINER_ENGINE=$engine release/images.sh "$out" "$version" "$stage"
fi

(cd "$out" && find . -maxdepth 1 -type f ! -name SHA256SUMS -printf '%f\n' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
say "dist/: $(ls "$out" | wc -l) files, checked with: (cd $out && sha256sum -c SHA256SUMS)"
(cd "$out" && sha256sum --quiet -c SHA256SUMS && ls -l)
