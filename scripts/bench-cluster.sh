#!/usr/bin/env bash
# Benchmark: the same images on the embedded engine and on a loopback cluster of one
# fruits-scheduler and two fruits-executors (separate processes, the cores split between them).
# Prints images/s for each and their ratio. Needs the release binaries (`make build`).
#
# Usage: scripts/bench-cluster.sh INPUT MODEL
set -euo pipefail

input="${1:?usage: bench-cluster.sh INPUT MODEL}"
model="${2:?usage: bench-cluster.sh INPUT MODEL}"
bin="${CARGO_TARGET_DIR:-target}/release"
[[ -x "${bin}/fruits-executor" ]] || { echo "error: ${bin}/fruits-executor not found: run make build" >&2; exit 1; }
cores="$(nproc)"
per_executor=$(( cores / 2 > 0 ? cores / 2 : 1 ))
work="$(mktemp -d)"
# shellcheck source=loopback-cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/loopback-cluster.sh"
trap 'stop_cluster; rm -rf "${work}"' EXIT

rate() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.1f %d %.1f" % (s["images_per_second"], s["rows_in"], s["seconds"]))' "$1"; }

start_cluster "${model}" "${per_executor}" "${work}"

echo "fruits cluster bench: ${cores} cores; embedded with ${cores} task slots, cluster of 2 executors x ${per_executor}"
"${bin}/fruits" run --quiet --input "${input}" --output "${work}/embedded" --model "${model}" --parallelism "${cores}"
read -r embedded images embedded_s < <(rate "${work}/embedded/summary.json")
"${bin}/fruits" run --quiet --input "${input}" --output "${work}/cluster" --scheduler "df://127.0.0.1:${scheduler_port}"
read -r cluster _ cluster_s < <(rate "${work}/cluster/summary.json")
printf '  images                      %8d\n' "${images}"
printf '  embedded (standalone)       %8.1f images/s  (%s s)\n' "${embedded}" "${embedded_s}"
printf '  loopback cluster, 2 execs   %8.1f images/s  (%s s)\n' "${cluster}" "${cluster_s}"
python3 -c "import sys; print(f'  cluster / embedded          {float(sys.argv[2]) / float(sys.argv[1]):8.3f}')" "${embedded}" "${cluster}"
