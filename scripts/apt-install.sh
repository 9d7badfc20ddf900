#!/usr/bin/env bash
# Installs Debian packages, quietly: the package lists are refreshed only
# when the install fails without them (a new machine's may be empty).
# Usage: scripts/apt-install.sh [--no-install-recommends] PACKAGE...
set -euo pipefail
apt-get install -y -qq "$@" > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "$@"; }
