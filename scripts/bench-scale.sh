#!/usr/bin/env bash
# Benchmark: fruits at 10^5 and 10^6 images on one machine (`make bench-scale`).
#
# The model is a cheap real ONNX model with MobileNetV2's input and output
# (scripts/make-scale-model.py: channel means and a fixed projection to 1280 features), so the
# figures are what fruits itself costs: listing, planning, reading, decoding, writing,
# committing and the PCA. The inputs are the sample linked N times over (symlinks under the
# cache, labels kept). For each size a fresh loopback cluster (one fruits-scheduler, two
# fruits-executors, pinned to cores 0 and 1: one task slot and one session each) runs one `fruits run`;
# the script prints per-stage seconds from summary.json, the largest image-scan plan a task
# received, every process's peak RSS (VmHWM), images/s, then the same run again with nothing
# new (an incremental run: its seconds and client RSS), and the ratios between the sizes. The PCA
# is distributed at every size (`auto` would fit 10^5 rows in the client's memory and 10^6 not),
# so that the sizes compare the same work.
#
# Then the S3 listing: S3_OBJECTS of the linked images (default 100000; 0 skips it) uploaded to a
# local Garage (scripts/local-s3.sh), and listed by `fruits sql "SELECT count(*) FROM images"`,
# which lists and reads nothing else (the count is the listing's).
#
# Usage: scripts/bench-scale.sh INPUT [SIZE ...]      (default sizes: 100000 1000000)
set -euo pipefail

input="${1:?usage: bench-scale.sh INPUT [SIZE ...]}"
shift
sizes=("$@")
[[ ${#sizes[@]} -gt 0 ]] || sizes=(100000 1000000)
bin="${CARGO_TARGET_DIR:-target}/release"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "${bin}/fruits-executor" ]] || { echo "error: ${bin}/fruits-executor not found: run make build" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "error: /usr/bin/time not found (Debian package: time)" >&2; exit 1; }
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}/bench-scale"
mkdir -p "${cache}"

# The cheap model, made once with the onnx package in a venv of the cache.
model="${cache}/cheap-features.onnx"
if [[ ! -f "${model}" ]]; then
  [[ -x "${cache}/venv/bin/python" ]] || python3 -m venv "${cache}/venv"
  "${cache}/venv/bin/pip" install --quiet "onnx>=1.16,<2"
  "${cache}/venv/bin/python" "${root}/scripts/make-scale-model.py" "${model}"
fi

s3_objects="${S3_OBJECTS:-100000}"
linked=("${sizes[@]}")
[[ "${s3_objects}" -gt 0 ]] && linked+=("${s3_objects}")

# Copy i of every image is `<label>/r<i>-<file>`: the labels of the sample, N files.
for n in "${linked[@]}"; do
  images="${cache}/images-${n}"
  [[ -f "${images}/.complete" ]] && continue
  echo "linking ${n} images into ${images} ..."
  rm -rf "${images}"
  python3 - "${input}" "${images}" "${n}" <<'PY'
import os, sys
source, target, n = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
images = sorted(os.path.join(d, f) for d, _, fs in os.walk(source) for f in fs if f.lower().endswith((".jpg", ".jpeg", ".png")))
for label in {os.path.basename(os.path.dirname(p)) for p in images}:
    os.makedirs(os.path.join(target, label), exist_ok=True)
for i in range(n):
    path = images[i % len(images)]
    os.symlink(path, os.path.join(target, os.path.basename(os.path.dirname(path)), f"r{i // len(images)}-{os.path.basename(path)}"))
PY
  touch "${images}/.complete"
done

work="$(mktemp -d)"
# shellcheck source=loopback-cluster.sh
source "${root}/scripts/loopback-cluster.sh"
trap 'stop_cluster; rm -rf "${work}"' EXIT
peak_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

for n in "${sizes[@]}"; do
  mkdir -p "${work}/cluster-${n}"
  RUST_LOG="${RUST_LOG:-warn,fruits_udfs=debug}" start_cluster "${model}" "${work}/cluster-${n}" 0 1
  echo "running ${n} images ..."
  /usr/bin/time -f '%e %M' -o "${work}/client-${n}.time" \
    "${bin}/fruits" run --quiet --json --pca-mode distributed --scheduler "df://127.0.0.1:${scheduler_port}" \
    --input "${cache}/images-${n}" --output "${work}/out-${n}" >"${work}/summary-${n}.json"
  echo "$(peak_kb "${cluster_pids[0]}") $(peak_kb "${cluster_pids[1]}") $(peak_kb "${cluster_pids[2]}")" >"${work}/peaks-${n}"
  echo "re-running ${n} images with nothing new ..."
  /usr/bin/time -f '%e %M' -o "${work}/rerun-${n}.time" \
    "${bin}/fruits" run --quiet --json --pca-mode distributed --scheduler "df://127.0.0.1:${scheduler_port}" \
    --input "${cache}/images-${n}" --output "${work}/out-${n}" >"${work}/rerun-${n}.json"
  stop_cluster
  plan_bytes="$(grep -ho 'image scan plan: [0-9]* bytes' "${work}/cluster-${n}"/executor-*.log | awk '{print $4}' | sort -n | tail -1)"
  echo "${plan_bytes:-0}" >"${work}/plan-${n}"
done

if [[ "${s3_objects}" -gt 0 ]]; then
  S3_PORT="$(free_port)" "${root}/scripts/local-s3.sh" start "${work}/s3" >/dev/null
  trap 'stop_cluster; "${root}/scripts/local-s3.sh" stop "${work}/s3" >/dev/null; rm -rf "${work}"' EXIT
  (
    # shellcheck source=/dev/null
    . "${work}/s3/env"
    echo "uploading ${s3_objects} images to Garage ..."
    "${bin}/fruits" upload --quiet --from "${cache}/images-${s3_objects}" --to "s3://fruits/images-${s3_objects}"
    echo "listing them ..."
    /usr/bin/time -f '%e %M' -o "${work}/s3-list.time" "${bin}/fruits" sql --quiet --model "${model}" \
      --input "s3://fruits/images-${s3_objects}" "SELECT count(*) AS n FROM images" >"${work}/s3-list.out"
  )
fi

python3 - "${work}" "${s3_objects}" "${sizes[@]}" <<'PY'
import json, re, sys
work, s3_objects, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rows = {}
for n in sizes:
    summary = json.loads(open(f"{work}/summary-{n}.json").read().strip().splitlines()[-1])
    wall, client_kb = open(f"{work}/client-{n}.time").read().split()
    scheduler_kb, *executor_kb = map(int, open(f"{work}/peaks-{n}").read().split())
    stages = summary["stages"]
    rows[n] = {
        "wall s": float(wall),
        "listing s": stages["listing"],
        "featurize s": stages["featurize"],
        "commit s": stages["commit"],
        "PCA s": (summary.get("pca") or {}).get("seconds", 0.0),
        "images/s": summary["images_per_second"],
        "plan bytes/task": int(open(f"{work}/plan-{n}").read()),
        "client MB": int(client_kb) / 1024,
        "scheduler MB": scheduler_kb / 1024,
        "executor MB": max(executor_kb) / 1024,
    }
    rerun_wall, rerun_kb = open(f"{work}/rerun-{n}.time").read().split()
    rerun = json.loads(open(f"{work}/rerun-{n}.json").read().strip().splitlines()[-1])
    assert rerun["featurized_this_run"] == 0, f"the re-run of {n} featurized {rerun['featurized_this_run']} images"
    rows[n]["re-run s"] = float(rerun_wall)
    rows[n]["re-run client MB"] = int(rerun_kb) / 1024
print(f"{'':<18}" + "".join(f"{int(n):>14,}" for n in sizes) + ("      ratio" if len(sizes) > 1 else ""))
for key in next(iter(rows.values())):
    values = [rows[n][key] for n in sizes]
    ratio = f"{values[-1] / values[0]:11.2f}" if len(sizes) > 1 and values[0] else ""
    print(f"{key:<18}" + "".join(f"{v:14.1f}" for v in values) + ratio)
if s3_objects:
    seconds, kb = open(f"{work}/s3-list.time").read().split()
    counted = re.findall(r"\b\d+\b", open(f"{work}/s3-list.out").read())
    assert str(s3_objects) in counted, f"the S3 listing counted {counted}, not {s3_objects}"
    print(f"S3 listing, {s3_objects:,} objects in Garage: {float(seconds):.1f} s "
          f"({s3_objects / float(seconds):,.0f} objects/s, whole process), client {int(kb) / 1024:.1f} MB")
PY
