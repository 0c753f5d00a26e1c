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
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${work}"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rate() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.1f %d %.1f" % (s["images_per_second"], s["rows_in"], s["seconds"]))' "$1"; }

scheduler_port="$(free_port)"
"${bin}/fruits-scheduler" --bind-host 127.0.0.1 --external-host 127.0.0.1 --bind-port "${scheduler_port}" \
  >"${work}/scheduler.log" 2>&1 &
pids+=($!)
for i in 1 2; do
  mkdir -p "${work}/executor-${i}"
  "${bin}/fruits-executor" --bind-host 127.0.0.1 --external-host 127.0.0.1 \
    --bind-port "$(free_port)" --bind-grpc-port "$(free_port)" --bind-health-port "$(free_port)" \
    --scheduler-host 127.0.0.1 --scheduler-port "${scheduler_port}" --scheduler-connect-timeout-seconds 30 \
    --vcores "${per_executor}" --inference-threads 1 --work-dir "${work}/executor-${i}" --model "${model}" \
    >"${work}/executor-${i}.log" 2>&1 &
  pids+=($!)
done

echo "fruits cluster bench: ${cores} cores; embedded with ${cores} task slots, cluster of 2 executors x ${per_executor}"
"${bin}/fruits" run --quiet --input "${input}" --output "${work}/embedded" --model "${model}" --parallelism "${cores}"
read -r embedded images embedded_s < <(rate "${work}/embedded/summary.json")
"${bin}/fruits" run --quiet --input "${input}" --output "${work}/cluster" --scheduler "df://127.0.0.1:${scheduler_port}"
read -r cluster _ cluster_s < <(rate "${work}/cluster/summary.json")
printf '  images                      %8d\n' "${images}"
printf '  embedded (standalone)       %8.1f images/s  (%s s)\n' "${embedded}" "${embedded_s}"
printf '  loopback cluster, 2 execs   %8.1f images/s  (%s s)\n' "${cluster}" "${cluster_s}"
python3 -c "import sys; print(f'  cluster / embedded          {float(sys.argv[2]) / float(sys.argv[1]):8.3f}')" "${embedded}" "${cluster}"
