#!/usr/bin/env bash
# make image: the consumer's container image (login-etl poll), a static
# binary (musl, OpenSSL vendored) and the build machine's CA bundle FROM
# IMAGE_BASE (scratch: no registry needed), built from
# examples/container/Containerfile and tagged IMAGE; prints its size.
# IMAGE_CARGO_ENV is added to cargo's environment (make container-check:
# no optimizer).
set -euo pipefail
: "${IMAGE:?}" "${IMAGE_BASE:?}" "${IMAGE_TRIPLE:?}" "${IMAGE_TARGET_DIR:?}" "${CONTAINER_ENGINE:?}"
cd "$(dirname "$0")/.."
[ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "/etc/ssl/certs/ca-certificates.crt is missing: install the ca-certificates package (the image's CA bundle is the build machine's)"; exit 1; }
echo "==> cargo build --release --target $IMAGE_TRIPLE (static; the first build compiles every dependency and OpenSSL: several minutes)"
# shellcheck disable=SC2086 # IMAGE_CARGO_ENV is NAME=value words
env OPENSSL_NO_VENDOR=0 OPENSSL_STATIC=1 CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TARGET_DIR="$IMAGE_TARGET_DIR" ${IMAGE_CARGO_ENV:-} \
  cargo build --release --locked --target "$IMAGE_TRIPLE" --bin login-etl
ctx=$IMAGE_TARGET_DIR/image-context
rm -rf "$ctx" && mkdir -p "$ctx"
# Modes set, not copied: under a umask of 077 the image's user could
# neither run the binary nor read the bundle.
install -m 0755 "$IMAGE_TARGET_DIR/$IMAGE_TRIPLE/release/login-etl" "$ctx/login-etl"
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
echo "==> $CONTAINER_ENGINE build -t $IMAGE (FROM $IMAGE_BASE)"
# shellcheck disable=SC2086 # PODMAN_ENV is NAME=value words, or none
env ${PODMAN_ENV:-} "$CONTAINER_ENGINE" build --quiet --build-arg BASE="$IMAGE_BASE" -f examples/container/Containerfile -t "$IMAGE" "$ctx" > /dev/null
# shellcheck disable=SC2086
bytes=$(env ${PODMAN_ENV:-} "$CONTAINER_ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "==> $IMAGE: $((bytes / 1024 / 1024)) MiB ($bytes bytes): the binary and the CA bundle"
