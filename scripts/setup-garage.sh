#!/usr/bin/env bash
# Installs Garage, the S3-compatible object store that the cluster tests and a local cluster use.
#
# Garage is built from its crates.io release with `cargo install`: no other download is needed.
# The binary goes to $FRUITS_CACHE_DIR/tools/bin/garage, where the tests look for it, and is reused
# while it reports the pinned version. The server only serves tests and a local cluster, so it is
# built at opt-level 1 without debug info, which shortens the build (about 12 minutes on 2 cores
# even so). Its target dir is kept under the cache, so an interrupted build resumes where it stopped.
set -euo pipefail

version=2.5.0

cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}"
root="${cache}/tools"
bin="${root}/bin/garage"

# `garage --version` prints e.g. `garage cargo:2.5.0 [features: bundled-libs, k2v, ...]`.
installed_version_ok() {
  [[ -x "${bin}" ]] && "${bin}" --version 2>/dev/null | grep -Eq "(^|[^0-9.])${version//./\\.}([^0-9.]|$)"
}

if installed_version_ok; then
  echo "garage ${version}: ${bin}"
  exit 0
fi
command -v cargo >/dev/null || { echo "error: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

echo "building garage ${version} from crates.io (about 12 minutes on 2 cores; once per machine)"
# --force: a binary that is there but reports another version is replaced.
CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
CARGO_PROFILE_RELEASE_DEBUG=0 \
CARGO_TARGET_DIR="${cache}/garage-build" \
  cargo install garage --version "${version}" --locked --force --root "${root}"

installed_version_ok || {
  echo "error: ${bin} does not report version ${version}: $("${bin}" --version 2>&1 || true)" >&2
  exit 1
}
echo "garage ${version}: ${bin}"
