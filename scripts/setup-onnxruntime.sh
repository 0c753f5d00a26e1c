#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that `fruits` loads at run time.
#
# ONNX Runtime's own download CDN is not reachable from every build machine, so the library is
# taken from the official PyPI wheel (a zip), pinned by file name and sha256, and unpacked into
# `.runtime/onnxruntime/` of this checkout, where the binaries look for it without any
# environment variable. The wheel is cached under $FRUITS_CACHE_DIR so later runs need no network.
set -euo pipefail

version=1.31.1
wheel="onnxruntime-${version}-cp311-cp311-manylinux_2_28_x86_64.whl"
sha256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
lib="libonnxruntime.so.${version}"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest="${root}/.runtime/onnxruntime"
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}/wheels"

if [[ -f "${dest}/${lib}" ]]; then
  echo "onnxruntime ${version}: ${dest}/${lib}"
  exit 0
fi
if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  echo "error: the pinned ONNX Runtime wheel is for Linux x86_64; on $(uname -s)-$(uname -m) put" >&2
  echo "       libonnxruntime ${version} somewhere and pass --ort-library or set FRUITS_ORT_LIBRARY" >&2
  exit 1
fi

mkdir -p "${cache}" "${dest}"
if [[ ! -f "${cache}/${wheel}" ]] || ! echo "${sha256}  ${cache}/${wheel}" | sha256sum -c --quiet - 2>/dev/null; then
  echo "downloading ${wheel} from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
    "onnxruntime==${version}" -d "${cache}"
fi
echo "${sha256}  ${cache}/${wheel}" | sha256sum -c --quiet - || {
  echo "error: ${cache}/${wheel} does not have the pinned sha256 ${sha256}" >&2
  exit 1
}

python3 - "${cache}/${wheel}" "${dest}" "${lib}" <<'PY'
import sys, zipfile, shutil, os
wheel, dest, lib = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"onnxruntime/capi/{lib}") as src:
    tmp = os.path.join(dest, lib + ".part")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, os.path.join(dest, lib))
PY
echo "onnxruntime ${version}: ${dest}/${lib}"
