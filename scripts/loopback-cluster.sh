# A loopback fruits cluster for the benchmarks, sourced by scripts/bench-*.sh (needs `bin`).
#
#   start_cluster MODEL LOG_DIR EXECUTOR...   one fruits-scheduler, and one fruits-executor per
#                                             EXECUTOR, on free loopback ports; returns once all
#                                             executors have registered. EXECUTOR is a CPU list
#                                             (`0`, `1`, `2-3`): the executor runs on those cores
#                                             only (taskset) and, by its defaults, has a task slot
#                                             and a one-thread inference session per core; or
#                                             `shared`: not pinned, all defaults (a slot per core
#                                             of the machine). Sets scheduler_port and
#                                             cluster_pids (scheduler first).
#   stop_cluster                              kills them.
#
# Executors log at RUST_LOG (default warn).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cluster_pids=()

start_cluster() {
  local model="$1" logs="$2" cpus i=0
  shift 2
  scheduler_port="$(free_port)"
  "${bin}/fruits-scheduler" --bind-host 127.0.0.1 --external-host 127.0.0.1 --bind-port "${scheduler_port}" \
    >"${logs}/scheduler.log" 2>&1 &
  cluster_pids=($!)
  for cpus in "$@"; do
    i=$((i + 1))
    mkdir -p "${logs}/executor-${i}"
    local pin=()
    [[ "${cpus}" == shared ]] || pin=(taskset -c "${cpus}")
    "${pin[@]}" "${bin}/fruits-executor" --bind-host 127.0.0.1 --external-host 127.0.0.1 \
      --bind-port "$(free_port)" --bind-grpc-port "$(free_port)" --bind-health-port "$(free_port)" \
      --scheduler-host 127.0.0.1 --scheduler-port "${scheduler_port}" --scheduler-connect-timeout-seconds 30 \
      --work-dir "${logs}/executor-${i}" --model "${model}" \
      >"${logs}/executor-${i}.log" 2>&1 &
    cluster_pids+=($!)
  done
  python3 - "${scheduler_port}" "$#" <<'PY'
import json, sys, time, urllib.request
port, wanted = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 60
while time.time() < deadline:
    try:
        if len(json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/executors", timeout=2))) == wanted:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(f"the {wanted} executors did not register with the scheduler within 60 s")
PY
}

stop_cluster() {
  local pid
  for pid in "${cluster_pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cluster_pids=()
}
