#!/usr/bin/env bash
# Builds the container images of fruits from the host's release build (`make build`):
#
#   fruits-garage     the S3 server (Garage) and its init script
#   fruits-scheduler  fruits-scheduler
#   fruits-executor   fruits-executor
#   fruits-client     fruits and fruits-job
#
# tagged $FRUITS_IMAGE_TAG (latest). The binaries are copied, not compiled, into the images: the
# host is Debian bookworm like the base, so they run there as built. The build context is staged
# in a temporary folder holding only what the images take (docker/Dockerfile says what).
#
# Settings (environment):
#   BASE_IMAGE         image the others start from; default fruits-base:bookworm, which
#                      scripts/docker-base.sh builds here without pulling if it is missing.
#                      Where Docker Hub can be reached, BASE_IMAGE=debian:bookworm-slim works too.
#   FRUITS_BIN_DIR     folder of the release binaries (${CARGO_TARGET_DIR:-target}/release)
#   FRUITS_ORT_LIBRARY ONNX Runtime library (.runtime/onnxruntime/libonnxruntime.so.1.31.1, from
#                      scripts/setup-onnxruntime.sh)
#   FRUITS_GARAGE      garage binary (the one scripts/setup-garage.sh installs)
#   FRUITS_IMAGE_TAG   tag of the images (latest)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"

cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}"
default_base=fruits-base:bookworm
base="${BASE_IMAGE:-${default_base}}"
bin_dir="${FRUITS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
ort="${FRUITS_ORT_LIBRARY:-${repo}/.runtime/onnxruntime/libonnxruntime.so.1.31.1}"
garage="${FRUITS_GARAGE:-${cache}/tools/bin/garage}"
tag="${FRUITS_IMAGE_TAG:-latest}"

fail() { echo "error: $*" >&2; exit 1; }
command -v docker >/dev/null || fail "docker not found"
docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (docker info fails)"
for binary in fruits fruits-scheduler fruits-executor; do
  [[ -x "${bin_dir}/${binary}" ]] || fail "${bin_dir}/${binary} not found: run make build (or set FRUITS_BIN_DIR)"
done
[[ -f "${ort}" ]] || fail "${ort} not found: run make setup (scripts/setup-onnxruntime.sh) or set FRUITS_ORT_LIBRARY"
[[ -x "${garage}" ]] || fail "${garage} not found: run make setup-s3 (scripts/setup-garage.sh) or set FRUITS_GARAGE"

if [[ "${base}" == "${default_base}" ]]; then
  FRUITS_BASE_IMAGE="${base}" scripts/docker-base.sh
elif ! docker image inspect "${base}" >/dev/null 2>&1; then
  echo "base image ${base} is not here: docker build will try to pull it"
fi

# Staged next to the cache so that hard links (instant, no copy) usually work; copied otherwise.
mkdir -p "${cache}/docker"
context="$(mktemp -d "${cache}/docker/context.XXXXXX")"
trap 'rm -rf "${context}"' EXIT
stage() { mkdir -p "$(dirname "$2")"; ln -f "$1" "$2" 2>/dev/null || cp -f "$1" "$2"; }
# The release profile keeps line tables for backtraces: 0.8-0.9 GB per binary. The images take
# them without debug information (symbols stay, so a backtrace still names the functions).
mkdir -p "${context}/bin"
for binary in fruits fruits-scheduler fruits-executor; do
  if command -v strip >/dev/null; then
    strip --strip-debug -o "${context}/bin/${binary}" "${bin_dir}/${binary}"
  else
    echo "warning: strip (binutils) not found: ${binary} goes into its image with its debug information" >&2
    stage "${bin_dir}/${binary}" "${context}/bin/${binary}"
  fi
done
stage "${ort}" "${context}/onnxruntime/libonnxruntime.so.1.31.1"
stage "${garage}" "${context}/garage"
mkdir -p "${context}/docker"
cp docker/Dockerfile docker/*.sh docker/*.toml "${context}/docker/"

for target in garage scheduler executor client; do
  image="fruits-${target}:${tag}"
  log="${context}/build-${target}.log"
  started=${SECONDS}
  if ! docker build --target "${target}" --build-arg BASE_IMAGE="${base}" --tag "${image}" \
    --file "${context}/docker/Dockerfile" "${context}" >"${log}" 2>&1; then
    tail -n 40 "${log}" >&2
    fail "docker build of ${image} failed (above: the end of its log)"
  fi
  echo "built ${image} in $((SECONDS - started)) s"
done

echo "images (size includes the shared base layers):"
for target in garage scheduler executor client; do
  docker image inspect -f '{{.Size}}' "fruits-${target}:${tag}" |
    awk -v name="fruits-${target}:${tag}" '{ printf "  %-26s %6.1f MB\n", name, $1 / 1e6 }'
done
