#!/usr/bin/env bash
# Benchmark: the PCA stage in memory and distributed at 50,000 rows (the sample replicated).
#
# Featurizes ROWS images once (symlinks to the sample, each under its own label folder, made
# under the cache), then runs `fruits pca` on the committed features in each mode under
# /usr/bin/time and prints the PCA time, the wall time and the peak memory of the process, and
# the ratios distributed / memory. Needs the release binaries (`make build`).
#
# Usage: scripts/bench-pca.sh INPUT MODEL [ROWS]
set -euo pipefail

input="${1:?usage: bench-pca.sh INPUT MODEL [ROWS]}"
model="${2:?usage: bench-pca.sh INPUT MODEL [ROWS]}"
rows="${3:-50000}"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ -x "${bin}/fruits" ]] || { echo "error: ${bin}/fruits not found: run make build" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time not found (Debian package: time)" >&2; exit 1; }
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}/bench-pca"
replicated="${cache}/images-${rows}"
output="${cache}/out-${rows}"

# The replicated input: copy i of every image is `<label>/r<i>-<file>`, so labels are kept.
if [[ ! -f "${replicated}/.complete" ]]; then
  rm -rf "${replicated}"
  python3 - "${input}" "${replicated}" "${rows}" <<'PY'
import os, sys
source, target, rows = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
images = sorted(
    os.path.join(d, f) for d, _, files in os.walk(source) for f in files
    if f.lower().endswith((".jpg", ".jpeg", ".png"))
)
for n in range(rows):
    path = images[n % len(images)]
    label = os.path.basename(os.path.dirname(path))
    os.makedirs(os.path.join(target, label), exist_ok=True)
    os.symlink(path, os.path.join(target, label, f"r{n // len(images)}-{os.path.basename(path)}"))
PY
  touch "${replicated}/.complete"
fi

if [[ ! -f "${output}/features/_SUCCESS" ]]; then
  echo "featurizing ${rows} images once (a few minutes) ..."
  "${bin}/fruits" run --quiet --no-pca --input "${replicated}" --output "${output}" --model "${model}"
fi

measure() {
  local mode="$1"
  /usr/bin/time -f '%e %M' -o "${cache}/time-${mode}" \
    "${bin}/fruits" pca --json --features "${output}/features" --pca-mode "${mode}" >"${cache}/summary-${mode}.json"
  python3 - "${cache}/summary-${mode}.json" "${cache}/time-${mode}" "${mode}" <<'PY'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["pca"]
wall, peak_kb = open(sys.argv[2]).read().split()[-2:]
print(f"{sys.argv[3]:>12}: PCA {summary['seconds']:.2f} s, process {float(wall):.2f} s, "
      f"peak RSS {int(peak_kb) / 1024:.0f} MB, rows {summary['rows']}, "
      f"explained variance {', '.join(f'{r:.6f}' for r in summary['explained_variance_ratio'])}")
PY
}

echo "PCA of ${rows} x 1280 features ($(nproc) cores)"
measure memory
measure distributed
python3 - "${cache}" <<'PY'
import sys
cache = sys.argv[1]
wall = {m: [float(x) for x in open(f"{cache}/time-{m}").read().split()[-2:]] for m in ("memory", "distributed")}
print(f"distributed / memory: time {wall['distributed'][0] / wall['memory'][0]:.2f}, "
      f"peak memory {wall['distributed'][1] / wall['memory'][1]:.2f}")
PY
