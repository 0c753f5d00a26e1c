#!/usr/bin/env bash
# Benchmark: the whole job (`fruits run`: list, featurize, write, commit, PCA) with the fp32
# model and with its int8 copy, in one session on this machine, and their ratio.
#
# Quantizes MODEL first with `fruits quantize` (200 calibration images from INPUT, into a
# scratch folder; not timed) unless INT8 names an int8 model already. Then runs the job ROUNDS
# times (default 1) with each model, alternating fp32 and int8 so that both see the same
# machine, each a full run into its own scratch output. Prints every run and the best rate of
# each model. Needs the release binaries (`make build`) and the quantize venv
# (`make setup-quantize`); `make bench-int8` does both.
#
# Usage: scripts/bench-int8.sh INPUT MODEL [INT8]
set -euo pipefail

input="${1:?usage: bench-int8.sh INPUT MODEL [INT8]}"
model="${2:?usage: bench-int8.sh INPUT MODEL [INT8]}"
int8="${3:-}"
rounds="${ROUNDS:-1}"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ -x "${bin}/fruits" ]] || { echo "error: ${bin}/fruits not found: run make build" >&2; exit 1; }
scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT

if [[ -z "${int8}" ]]; then
  int8="${scratch}/int8.onnx"
  "${bin}/fruits" quantize --model "${model}" --calibrate "${input}" --output "${int8}"
fi

for round in $(seq 1 "${rounds}"); do
  for name in fp32 int8; do
    path="${model}"; [[ "${name}" == int8 ]] && path="${int8}"
    "${bin}/fruits" run --json --full --input "${input}" --output "${scratch}/out-${name}" --model "${path}" \
      | tail -n 1 >"${scratch}/${name}-${round}.json"
  done
done

python3 - "${scratch}" "${rounds}" <<'PY'
import json, sys
scratch, rounds = sys.argv[1], int(sys.argv[2])
best = {}
print(f"{'model':<6} {'round':>5} {'images':>7} {'seconds':>8} {'images/s':>9}")
for r in range(1, rounds + 1):
    for name in ("fp32", "int8"):
        s = json.load(open(f"{scratch}/{name}-{r}.json"))
        rate = s["images_per_second"]
        best[name] = max(best.get(name, 0.0), rate)
        print(f"{name:<6} {r:>5} {s['featurized_this_run']:>7} {s['seconds']:>8.2f} {rate:>9.1f}")
print(f"whole job, best of {rounds}: fp32 {best['fp32']:.1f} images/s, int8 {best['int8']:.1f} images/s, "
      f"int8 / fp32 = {best['int8'] / best['fp32']:.2f}x")
PY
