#!/usr/bin/env bash
# Benchmark: how the featurize job scales with executors, on loopback clusters of real
# fruits-scheduler and fruits-executor processes, one after the other on the same images:
#
#   one executor on core 0                       the unit of scaling
#   two executors, on cores 0 and 1              should be close to twice that (target >= 1.8x)
#   two executors sharing all cores, defaults    each sees every core: the default must not
#                                                oversubscribe the host into a collapse
#   the embedded engine, defaults                for reference
#
# Executors run with their defaults (a task slot and a one-thread inference session per core
# they may use). Prints images/s of each (from summary.json) and the ratios. Needs 2 or more
# cores and the release binaries (`make build`).
#
# Usage: scripts/bench-cluster.sh INPUT MODEL
set -euo pipefail

input="${1:?usage: bench-cluster.sh INPUT MODEL}"
model="${2:?usage: bench-cluster.sh INPUT MODEL}"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ -x "${bin}/fruits-executor" ]] || { echo "error: ${bin}/fruits-executor not found: run make build" >&2; exit 1; }
cores="$(nproc)"
[[ "${cores}" -ge 2 ]] || { echo "error: the cluster bench needs 2 cores or more (this machine has ${cores})" >&2; exit 1; }
work="$(mktemp -d)"
# shellcheck source=loopback-cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/loopback-cluster.sh"
trap 'stop_cluster; rm -rf "${work}"' EXIT

rate() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.1f %d %.1f" % (s["images_per_second"], s["rows_in"], s["seconds"]))' "$1"; }

# Runs the job on a fresh cluster of the given executors; prints "images/s images seconds".
on_cluster() {
  local name="$1"
  shift
  mkdir -p "${work}/${name}"
  start_cluster "${model}" "${work}/${name}" "$@"
  "${bin}/fruits" run --quiet --input "${input}" --output "${work}/${name}/out" --scheduler "df://127.0.0.1:${scheduler_port}"
  stop_cluster
  rate "${work}/${name}/out/summary.json"
}

echo "fruits cluster bench: ${cores} cores, $(basename "${model}")"
read -r one images one_s < <(on_cluster one 0)
read -r two _ two_s < <(on_cluster two 0 1)
read -r shared _ shared_s < <(on_cluster shared shared shared)
"${bin}/fruits" run --quiet --input "${input}" --output "${work}/embedded" --model "${model}"
read -r embedded _ embedded_s < <(rate "${work}/embedded/summary.json")

printf '  images                                 %8d\n' "${images}"
printf '  1 executor, core 0                     %8.1f images/s  (%s s)\n' "${one}" "${one_s}"
printf '  2 executors, cores 0 and 1             %8.1f images/s  (%s s)\n' "${two}" "${two_s}"
printf '  2 executors sharing %d cores, defaults  %8.1f images/s  (%s s)\n' "${cores}" "${shared}" "${shared_s}"
printf '  embedded engine, defaults              %8.1f images/s  (%s s)\n' "${embedded}" "${embedded_s}"
python3 - "${one}" "${two}" "${shared}" "${embedded}" <<'PY'
import sys
one, two, shared, embedded = map(float, sys.argv[1:])
print(f"  2 executors / 1 executor (target >= 1.8)   {two / one:6.2f}x")
print(f"  shared defaults / pinned                   {shared / two:6.2f}x")
print(f"  2 pinned executors / embedded              {two / embedded:6.2f}x")
PY
