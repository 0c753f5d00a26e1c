#!/usr/bin/env bash
# Benchmark: what a re-run costs against the full run, in one session on this machine.
#
# Copies the sample into a scratch input (hard links: the same files, no extra disk), then
# times four `fruits run`s into one output: the full run, a re-run with nothing new, a re-run
# after adding 1 % new images, and `--full` over the same input. Prints wall seconds, the
# images featurized each time, and the ratios against the first full run. Needs the release
# binaries (`make build`).
#
# Usage: scripts/bench-incremental.sh INPUT MODEL
set -euo pipefail

input="${1:?usage: bench-incremental.sh INPUT MODEL}"
model="${2:?usage: bench-incremental.sh INPUT MODEL}"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ -x "${bin}/fruits" ]] || { echo "error: ${bin}/fruits not found: run make build" >&2; exit 1; }
scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT
cp -al "$(realpath "${input}")" "${scratch}/input"

run() {
  local name="$1"; shift
  local started ended
  started="$(date +%s.%N)"
  "${bin}/fruits" run --json --input "${scratch}/input" --output "${scratch}/out" --model "${model}" "$@" \
    >"${scratch}/${name}.json"
  ended="$(date +%s.%N)"
  echo "${name} $(python3 -c "print(${ended} - ${started})")" >>"${scratch}/times"
}

run full
run nothing-new
# 1 % new images: copies of the first images of the listing, under new names, labels kept.
python3 - "${scratch}/input" <<'PY'
import os, shutil, sys
root = sys.argv[1]
images = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith((".jpg", ".png")))
for path in images[: max(1, len(images) // 100)]:
    shutil.copyfile(path, os.path.join(os.path.dirname(path), "new-" + os.path.basename(path)))
PY
run one-percent-new
run full-again --full

python3 - "${scratch}" <<'PY'
import json, sys
scratch = sys.argv[1]
times = dict(line.split() for line in open(f"{scratch}/times"))
base = float(times["full"])
print(f"{'run':<18} {'seconds':>8} {'featurized':>11} {'vs full':>8}")
for name, seconds in times.items():
    summary = json.loads(open(f"{scratch}/{name}.json").read().strip().splitlines()[-1])
    print(f"{name:<18} {float(seconds):8.2f} {summary['featurized_this_run']:>11} {float(seconds) / base:8.3f}")
PY
