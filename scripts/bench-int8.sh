#!/usr/bin/env bash
# Benchmark: the fp32 model against its int8 copy, in one session on this machine.
#
# Quantizes MODEL first with `fruits quantize` (200 calibration images from INPUT, into a
# scratch folder; not timed) unless INT8 names an int8 model already. Then, ROUNDS times
# (default 1), alternating fp32 and int8 so that both see the same machine:
#   - `fruits bench`: Python onnxruntime and fruits' sessions on ready tensors (the limit),
#     decode + resize + scale, the featurize job, and its share of the limit;
#   - the whole job, `fruits run --full` (list, featurize, write, commit, PCA) into its own
#     scratch output.
# Prints every figure, the best of each, and int8 / fp32. Needs the release binaries
# (`make build`) and the quantize venv (`make setup-quantize`); `make bench-int8` does both.
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
    echo "round ${round}: ${name} ..." >&2
    "${bin}/fruits" --json bench --input "${input}" --model "${path}" | tail -n 1 >"${scratch}/bench-${name}-${round}.json"
    "${bin}/fruits" run --json --full --input "${input}" --output "${scratch}/out-${name}" --model "${path}" \
      | tail -n 1 >"${scratch}/run-${name}-${round}.json"
  done
done

python3 - "${scratch}" "${rounds}" <<'PY'
import json, sys
scratch, rounds = sys.argv[1], int(sys.argv[2])
load = lambda kind, name, r: json.load(open(f"{scratch}/{kind}-{name}-{r}.json"))
rows = [
    ("python onnxruntime, ready tensors", lambda b, s: b["python"].get("images_per_second")),
    ("fruits' onnxruntime, ready tensors", lambda b, s: b["raw_images_per_second"]),
    ("decode + resize + scale", lambda b, s: b["preprocess_images_per_second"]),
    ("featurize job (fruits bench)", lambda b, s: b["job_images_per_second"]),
    ("whole job (fruits run --full)", lambda b, s: s["images_per_second"]),
]
best = {}
for r in range(1, rounds + 1):
    for name in ("fp32", "int8"):
        b, s = load("bench", name, r), load("run", name, r)
        print(f"round {r} {name}: " + ", ".join(
            f"{label} {f(b, s):.1f}" for label, f in rows if f(b, s) is not None)
            + f"; job / limit {b['job_of_limit']:.3f}; whole job {s['seconds']:.2f} s")
        for label, f in rows:
            if f(b, s) is not None:
                best[(name, label)] = max(best.get((name, label), 0.0), f(b, s))
        best[(name, "share")] = max(best.get((name, "share"), 0.0), b["job_of_limit"])
print(f"\nbest of {rounds}, images/s        {'fp32':>9} {'int8':>9} {'int8/fp32':>10}")
for label, _ in rows:
    if (label_fp32 := best.get(("fp32", label))) and (label_int8 := best.get(("int8", label))):
        print(f"  {label:<36} {label_fp32:>9.1f} {label_int8:>9.1f} {label_int8 / label_fp32:>9.2f}x")
print(f"  {'featurize job / limit':<36} {best[('fp32', 'share')]:>9.3f} {best[('int8', 'share')]:>9.3f}")
PY
