#!/usr/bin/env bash
# Builds the release tarball the EMR bootstrap action installs, from the release build
# (`make build`) and the ONNX Runtime library (`make setup`):
#
#   deploy/emr/package.sh [OUT_DIR]     -> OUT_DIR/fruits-linux-x86_64.tar.gz (default dist/)
#
#   fruits-<version>/
#     VERSION
#     bin/fruits  bin/fruits-scheduler  bin/fruits-executor
#     lib/libonnxruntime.so.1.31.1          found by the binaries in ../lib
#     share/fruits/systemd/*.service        the units bootstrap.sh installs
#
# The binaries are copied without their debug information (line tables: 900 MB -> 170 MB each).
# EMR 7 runs Amazon Linux 2023, whose glibc is 2.34; built on Debian bookworm (2.36) the binaries
# need GLIBC_2.35 for hypot and hypotf only, which glibc-compat.py points back at the versions
# glibc has exported since 2.2.5 (see there). The package is refused if anything still needs a
# glibc newer than FRUITS_MAX_GLIBC, so that this is caught here rather than on the cluster.
# The archive is reproducible (sorted, owner root, fixed dates): the same inputs give the same bytes.
#
# Settings: FRUITS_BIN_DIR (${CARGO_TARGET_DIR:-target}/release), FRUITS_ORT_LIBRARY
# (.runtime/onnxruntime/libonnxruntime.so.1.31.1), FRUITS_MAX_GLIBC (2.34).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
cd "${repo}"

fail() { echo "package.sh: error: $*" >&2; exit 1; }

out_dir="${1:-dist}"
bin_dir="${FRUITS_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
ort="${FRUITS_ORT_LIBRARY:-${repo}/.runtime/onnxruntime/libonnxruntime.so.1.31.1}"
max_glibc="${FRUITS_MAX_GLIBC:-2.34}"
binaries=(fruits fruits-scheduler fruits-executor)

for binary in "${binaries[@]}"; do
  [[ -x "${bin_dir}/${binary}" ]] || fail "${bin_dir}/${binary} not found: run make build (or set FRUITS_BIN_DIR)"
done
[[ -f "${ort}" ]] || fail "${ort} not found: run make setup (scripts/setup-onnxruntime.sh) or set FRUITS_ORT_LIBRARY"
for tool in objdump objcopy python3; do
  command -v "${tool}" >/dev/null || fail "${tool} not found (objdump, objcopy: package binutils; python3 runs glibc-compat.py)"
done

# The workspace version, from [workspace.package] in Cargo.toml.
version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)"
[[ -n "${version}" ]] || fail "cannot read the version from [workspace.package] in Cargo.toml"

stage="$(mktemp -d)"
trap 'rm -rf "${stage}"' EXIT
root="${stage}/fruits-${version}"
mkdir -p "${root}/bin" "${root}/lib" "${root}/share/fruits/systemd"
for binary in "${binaries[@]}"; do
  objcopy --strip-debug "${bin_dir}/${binary}" "${root}/bin/${binary}"
  chmod 0755 "${root}/bin/${binary}"
  python3 "${here}/glibc-compat.py" "${root}/bin/${binary}" "${max_glibc}" >/dev/null ||
    fail "${binary} cannot be made to run with glibc ${max_glibc} (above)"
done
install -m 0644 "${ort}" "${root}/lib/libonnxruntime.so.1.31.1"

# The newest GLIBC_x.y symbol version each file links against must exist on the target.
for file in "${root}"/bin/* "${root}/lib/libonnxruntime.so.1.31.1"; do
  needed="$(objdump -T "${file}" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
  if [[ "$(printf '%s\n' "${needed}" "${max_glibc}" | sort -V | tail -n 1)" != "${max_glibc}" ]]; then
    fail "$(basename "${file}") needs glibc ${needed}, newer than ${max_glibc} (Amazon Linux 2023, EMR 7): build on an older system"
  fi
  # And it still loads and runs here, with the rewritten version needs.
  if [[ "${file}" == */bin/* ]]; then
    "${file}" --help >/dev/null || fail "$(basename "${file}") does not run after packaging"
  fi
  echo "$(basename "${file}"): needs glibc ${needed} or newer (Amazon Linux 2023 has ${max_glibc})"
done
install -m 0644 "${here}/fruits-scheduler.service" "${here}/fruits-executor.service" "${root}/share/fruits/systemd/"
echo "fruits ${version} ($(git -C "${repo}" describe --always --dirty 2>/dev/null || echo "no git"))" >"${root}/VERSION"

mkdir -p "${out_dir}"
tarball="${out_dir}/fruits-linux-x86_64.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "${stage}" -cf - "fruits-${version}" |
  gzip -n >"${tarball}.part"
mv "${tarball}.part" "${tarball}"
echo "${tarball}: $(cat "${root}/VERSION"), $(du -h "${tarball}" | cut -f1)"
