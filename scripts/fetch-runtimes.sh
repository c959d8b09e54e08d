#!/usr/bin/env bash
# The runtimes newer than Debian 12 ships, unpacked into build/runtimes/ (never into the
# system): containerd 2.x and the reference CNI plugins 1.9 from Debian's sid suite, and
# Multus 4.3 (a static binary no registry here serves).  Idempotent: a second run only
# checks that the unpacked trees are there.
#
# Where they come from, in order:
#   1. $WEFT_SHARED_DIR (default: ../shared beside this checkout, then /work/shared):
#      debs/ with SHA256SUMS, bin/multus -- the versions the project was first tested with;
#   2. for the two .debs only: `apt-get download` from sid under a private apt
#      configuration (its own sources list, lists and cache; the system's sources untouched).
# Multus has no second source: without it this script warns, naming the path it wants, and
# the tests that need Multus fail with the same words (lab/runtimes.py).
#
# Result (paths the tests and the bench read, see lab/runtimes.py):
#   build/runtimes/containerd2/usr/bin/{containerd,containerd-shim-runc-v2,ctr}
#   build/runtimes/cni-plugins/usr/lib/cni/{bridge,host-local,portmap,...}
#   build/runtimes/multus/multus
#   build/runtimes/VERSIONS      one "name version source" line per component
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
dest=$top/build/runtimes
mkdir -p "$dest"

shared_dir() {
  local candidate
  for candidate in "${WEFT_SHARED_DIR:-}" "$top/../shared" /work/shared; do
    [ -n "$candidate" ] && [ -d "$candidate" ] && { (cd "$candidate" && pwd); return 0; }
  done
  return 1
}
shared=$(shared_dir || true)

# deb_from_shared PACKAGE -> path of the pinned .deb, checked against SHA256SUMS
deb_from_shared() {
  local pkg=$1 deb
  [ -n "$shared" ] && [ -f "$shared/debs/SHA256SUMS" ] || return 1
  deb=$(ls "$shared"/debs/"${pkg}"_*_amd64.deb 2>/dev/null | head -n 1)
  [ -n "$deb" ] || return 1
  (cd "$shared/debs" && grep " $(basename "$deb")\$" SHA256SUMS | sha256sum -c --quiet -) >&2 \
    || { echo "fetch-runtimes: $deb does not match $shared/debs/SHA256SUMS" >&2; exit 1; }
  echo "$deb"
}

# deb_from_sid PACKAGE -> path of sid's current .deb, downloaded under a private apt config
deb_from_sid() {
  local pkg=$1 apt="$dest/apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/download"
  echo "deb http://deb.debian.org/debian sid main" > "$apt/sources.list"
  local opts=(-o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache"
              -o APT::Sandbox::User=root)
  if [ ! -f "$apt/updated" ]; then
    apt-get "${opts[@]}" update -qq >&2 && touch "$apt/updated"
  fi
  (cd "$apt/download" && apt-get "${opts[@]}" download -qq "$pkg" >&2)
  ls -t "$apt/download/${pkg}"_*_amd64.deb | head -n 1
}

# unpack NAME PACKAGE: build/runtimes/NAME holds the package's files
unpack() {
  local name=$1 pkg=$2 deb source version
  if [ -f "$dest/$name/.unpacked" ]; then return 0; fi
  if deb=$(deb_from_shared "$pkg"); then source=$shared/debs; else
    echo "fetch-runtimes: no pinned $pkg under ${shared:-../shared}/debs; fetching it from Debian sid" >&2
    deb=$(deb_from_sid "$pkg"); source=sid
  fi
  version=$(dpkg-deb -f "$deb" Version)
  rm -rf "$dest/$name.tmp" && mkdir -p "$dest/$name.tmp"
  dpkg -x "$deb" "$dest/$name.tmp"
  echo "$version $source" > "$dest/$name.tmp/.unpacked"
  rm -rf "${dest:?}/$name" && mv "$dest/$name.tmp" "$dest/$name"
  echo "fetch-runtimes: $pkg $version from $source -> build/runtimes/$name" >&2
}

unpack containerd2 containerd
unpack cni-plugins containernetworking-plugins

if [ ! -x "$dest/multus/multus" ] && { [ -z "$shared" ] || [ ! -x "$shared/bin/multus" ]; }; then
  echo "fetch-runtimes: warning: no Multus; the Multus tests need it at \$WEFT_SHARED_DIR/bin/multus" \
       "(default ../shared/bin/multus or /work/shared/bin/multus); no registry serves it" >&2
elif [ ! -x "$dest/multus/multus" ]; then
  mkdir -p "$dest/multus"
  cp "$shared/bin/multus" "$dest/multus/multus.tmp" && chmod 0755 "$dest/multus/multus.tmp"
  mv "$dest/multus/multus.tmp" "$dest/multus/multus"
fi

{
  echo "containerd2 $(cat "$dest/containerd2/.unpacked")"
  echo "cni-plugins $(cat "$dest/cni-plugins/.unpacked")"
  if [ -x "$dest/multus/multus" ]; then
    echo "multus $(sha256sum "$dest/multus/multus" | cut -c1-16) ${shared:-?}/bin"
  fi
} > "$dest/VERSIONS"
