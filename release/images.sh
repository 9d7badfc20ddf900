#!/usr/bin/env bash
# The release's `login-etl poll` images as OCI archives (make dist, through
# release/dist.sh), built with the engine CONTAINER_ENGINE names, podman
# or docker, each with flags it takes:
#
#   podman: build --timestamp (the image's times are the commit's), then
#           save --format oci-archive;
#   docker: buildx build --output type=oci,…,rewrite-timestamp=true (the
#           layers' times from SOURCE_DATE_EPOCH): BuildKit writes the
#           archive itself; docker save has no OCI format.
#
#   release/images.sh OUT VERSION STAGE
#
# OUT holds login-etl-VERSION-{x86_64,aarch64}-linux; STAGE is a scratch
# folder. FROM scratch, COPY only: either CPU's image builds without
# emulation. tests/test_workflows.py runs it with both engines (stand-ins
# that refuse a flag the engine lacks).
set -euo pipefail
out=$1 version=$2 stage=$3
engine=${CONTAINER_ENGINE:?set CONTAINER_ENGINE: podman or docker}
: "${SOURCE_DATE_EPOCH:?}"
case $engine in
  podman | docker) ;;
  *) echo "CONTAINER_ENGINE=$engine: podman or docker (each one's flags are written here)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

for arch in x86_64 aarch64; do
  platform=amd64; [ "$arch" = aarch64 ] && platform=arm64
  ctx="$stage/image-$platform"
  mkdir -p "$ctx"
  install -m 0755 "$out/login-etl-$version-$arch-linux" "$ctx/login-etl"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  tag="localhost/login-etl:$version-$platform"
  archive="$out/login-etl-$version-image-$platform.oci.tar"
  echo "==> $engine: $tag as $(basename "$archive") (FROM scratch: COPY only, no emulation)"
  case $engine in
    podman)
      env ${PODMAN_ENV:-} podman build --quiet --platform "linux/$platform" --timestamp "$SOURCE_DATE_EPOCH" \
        -f examples/container/Containerfile -t "$tag" "$ctx" > /dev/null
      env ${PODMAN_ENV:-} podman save --quiet --format oci-archive -o "$archive" "$tag"
      ;;
    docker)
      docker buildx build --quiet --platform "linux/$platform" -f examples/container/Containerfile -t "$tag" \
        --output "type=oci,dest=$archive,rewrite-timestamp=true" "$ctx" > /dev/null
      ;;
  esac
  [ -s "$archive" ] || { echo "$engine wrote no $archive" >&2; exit 1; }
done
