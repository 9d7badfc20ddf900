#!/usr/bin/env bash
# make container-tools: what make image needs. musl-tools (the static
# binary's C compiler), and podman with runc where no docker engine answers
# (crun refuses this project's build machines' hybrid cgroups): Debian
# packages, installed as root. Then Rust's musl target.
set -euo pipefail
: "${CONTAINER_ENGINE:?}" "${IMAGE_TRIPLE:?}"
cd "$(dirname "$0")/.."
need=""
command -v musl-gcc > /dev/null || need="$need musl-tools"
if [ "$CONTAINER_ENGINE" != docker ]; then
  command -v podman > /dev/null || need="$need podman"
  command -v runc > /dev/null || [ -x /usr/sbin/runc ] || need="$need runc"
fi
if [ -n "$need" ]; then
  [ "$(id -u)" = 0 ] || { echo "make image needs the Debian packages$need: sudo apt-get install$need (or run make as root)"; exit 1; }
  echo "==> installing$need (Debian packages)"
  # shellcheck disable=SC2086 # one word a package
  scripts/apt-install.sh --no-install-recommends $need
fi
rustup target list --installed | grep -q "^$IMAGE_TRIPLE\$" || rustup target add "$IMAGE_TRIPLE"
