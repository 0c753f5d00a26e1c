#!/usr/bin/env bash
# Sets up the Python that `fruits quantize` runs onnxruntime's static quantization with: a venv
# under $FRUITS_CACHE_DIR/quantize-venv with the pinned packages of quantize-requirements.txt
# (wheels from PyPI, no builds). Only `fruits quantize` uses it; `fruits run` never does.
#
# Made once, then reused: the venv keeps a copy of the requirements it was made from and is made
# again when they change. fruits finds it at that path without any setting
# (or give another Python with --python / FRUITS_QUANTIZE_PYTHON).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
requirements="${root}/scripts/quantize-requirements.txt"
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}"
venv="${cache}/quantize-venv"
stamp="${venv}/fruits-requirements.txt"

if [[ -x "${venv}/bin/python" ]] && cmp -s "${requirements}" "${stamp}"; then
  echo "quantize venv: ${venv}/bin/python"
  exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 not found: it is needed once, to make the quantize venv" >&2; exit 1; }

# Built beside the final place and moved there whole, so an interrupted set-up leaves no half venv.
mkdir -p "${cache}"
building="${venv}.building.$$"
rm -rf "${building}"
trap 'rm -rf "${building}"' EXIT
echo "making the quantize venv (onnxruntime, onnx, numpy from PyPI) in ${venv}"
python3 -m venv "${building}"
"${building}/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
  --no-deps -r "${requirements}"
"${building}/bin/python" -c "from onnxruntime.quantization import quantize_static; from onnxruntime.quantization.shape_inference import quant_pre_process"
cp "${requirements}" "${building}/fruits-requirements.txt"
rm -rf "${venv}"
# A venv's scripts name its folder: rebuild the activation paths by moving and re-running venv.
mv "${building}" "${venv}"
python3 -m venv --upgrade "${venv}" >/dev/null
trap - EXIT
echo "quantize venv: ${venv}/bin/python"
