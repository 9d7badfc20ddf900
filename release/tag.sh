#!/usr/bin/env bash
# release/tag.sh TAG [ROOT]: a release's tag, checked before anything is
# built (the release workflow's first step): TAG must be v<Cargo.toml's
# version>, and CHANGELOG.md must have that version's section, dated
# (`## [0.3.0] - 2026-12-01`; "unreleased" is refused). Prints the
# section's text, the release's notes. Exit 1, with what to change, when
# either does not hold.
set -euo pipefail
tag=${1:?usage: release/tag.sh TAG [ROOT]  (TAG: v<version>, e.g. v0.3.0)}
root=${2:-$(dirname "$0")/..}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
if [ "$tag" != "v$version" ]; then
  echo "release/tag.sh: tag $tag is not v$version, Cargo.toml's version: tag the commit whose Cargo.toml says it (or change Cargo.toml, CHANGELOG.md and tag again)" >&2
  exit 1
fi
escaped=$(printf '%s' "$version" | sed 's/[.]/\\./g')
heading=$(grep -m1 "^## \[$escaped\]" "$root/CHANGELOG.md" || true)
if ! printf '%s' "$heading" | grep -Eq "^## \[$escaped\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$"; then
  echo "release/tag.sh: CHANGELOG.md has no dated section for $version (found: '${heading:-none}'): give it the release's date, '## [$version] - YYYY-MM-DD', commit, and tag again" >&2
  exit 1
fi
# The section: from its heading to the next version's.
awk -v h="$heading" '$0 == h {on = 1; next} on && /^## \[/ {exit} on' "$root/CHANGELOG.md"
