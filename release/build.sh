#!/usr/bin/env bash
# The release workflow's build steps, as CI here runs them too (.ci/run),
# so that a step that cannot run fails here first:
#
#   release/build.sh dist         the release, optimized (the workflow)
#   release/build.sh dist-check   the same without the optimizer (CI)
#   release/build.sh test-dist    its checks: the quick start in LocalStack
#
# The container engine is chosen, never guessed (GitHub's runner answers
# `docker info` as well as podman's): CONTAINER_ENGINE, podman unless set
# (make dist installs it where it may: scripts/container-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?release/build.sh dist, dist-check or test-dist}
case $step in
  dist | dist-check | test-dist) ;;
  *) echo "release/build.sh: no step $step (dist, dist-check, test-dist)" >&2; exit 2 ;;
esac
export CONTAINER_ENGINE=${CONTAINER_ENGINE:-podman}
case $CONTAINER_ENGINE in
  podman | docker) ;;
  *) echo "CONTAINER_ENGINE=$CONTAINER_ENGINE: podman or docker" >&2; exit 2 ;;
esac
echo "==> release/build.sh $step (CONTAINER_ENGINE=$CONTAINER_ENGINE)"
exec make --no-print-directory "$step"
