# A loopback fruits cluster for the benchmarks, sourced by scripts/bench-*.sh (needs `bin`).
#
#   start_cluster MODEL VCORES LOG_DIR   one fruits-scheduler and two fruits-executors (VCORES task
#                                        slots and one inference thread each), on free loopback
#                                        ports; returns once both executors have registered.
#                                        Sets scheduler_port and cluster_pids (scheduler first).
#   stop_cluster                         kills them.
#
# Executors log at RUST_LOG (default warn).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cluster_pids=()

start_cluster() {
  local model="$1" vcores="$2" logs="$3" i
  scheduler_port="$(free_port)"
  "${bin}/fruits-scheduler" --bind-host 127.0.0.1 --external-host 127.0.0.1 --bind-port "${scheduler_port}" \
    >"${logs}/scheduler.log" 2>&1 &
  cluster_pids=($!)
  for i in 1 2; do
    mkdir -p "${logs}/executor-${i}"
    "${bin}/fruits-executor" --bind-host 127.0.0.1 --external-host 127.0.0.1 \
      --bind-port "$(free_port)" --bind-grpc-port "$(free_port)" --bind-health-port "$(free_port)" \
      --scheduler-host 127.0.0.1 --scheduler-port "${scheduler_port}" --scheduler-connect-timeout-seconds 30 \
      --vcores "${vcores}" --inference-threads 1 --work-dir "${logs}/executor-${i}" --model "${model}" \
      >"${logs}/executor-${i}.log" 2>&1 &
    cluster_pids+=($!)
  done
  python3 - "${scheduler_port}" <<'PY'
import json, sys, time, urllib.request
deadline = time.time() + 60
while time.time() < deadline:
    try:
        if len(json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/executors", timeout=2))) == 2:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit("the executors did not register with the scheduler within 60 s")
PY
}

stop_cluster() {
  local pid
  for pid in "${cluster_pids[@]}"; do kill "${pid}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  cluster_pids=()
}
