#!/usr/bin/env bash
# A simulated EMR cluster in containers, to run deploy/emr/ for real without AWS: a master and two
# core nodes (systemd as PID 1, the hadoop user, the AWS CLI), EMR's node metadata from fixture
# files, and Garage as S3. tests/emr.rs drives it; it also works by hand:
#
#   scripts/emr-sim.sh image            build the node image (or load it from the cache)
#   scripts/emr-sim.sh up DIR           start the cluster, do what a user does before
#                                       create-cluster.sh (package, upload), then what EMR does
#                                       (bootstrap every node); wait until both executors register
#   scripts/emr-sim.sh step DIR [ARG..] run the step create-cluster.sh/add-step.sh define, on the
#                                       master as hadoop, with ARGs appended (e.g. --json)
#   scripts/emr-sim.sh create-cluster-request DIR [VAR=VALUE...]
#                                       the EMR API request create-cluster.sh makes for this
#                                       simulation's uploads (JSON; nothing is sent anywhere)
#   scripts/emr-sim.sh down DIR         remove every container and the network of the simulation
#
# DIR keeps the simulation's state (names, keys, logs); `up` makes it. `up` removes what it
# started if it fails (KEEP=1 keeps it for a look: `docker exec -it <name>-master bash`).
#
# What EMR does and the simulation does the same way: the metadata files at /mnt/var/lib/info
# (deploy/emr/sim/info/: job-flow.json on every node, instance-master.json or instance-core.json as
# instance.json), the master's private DNS name (ip-10-0-0-10.ec2.internal, the master container's
# hostname, resolved by Docker's DNS as the VPC's resolver would), the bootstrap fetched from S3 and
# run as hadoop on all nodes at once, systemd, the step's command on the master as hadoop.
# What differs: Debian bookworm instead of Amazon Linux 2023; Garage with static keys instead of S3
# with the instance profile (so the AWS_* settings are passed to the bootstrap); core-2 fetches with
# curl's SigV4 (FRUITS_FETCH=curl) so both fetch paths of the bootstrap run, the others with the
# AWS CLI as on EMR; executors get 1 vcore and 1 inference thread each, for a 2-core host.
#
# Settings: FRUITS_BIN_DIR, FRUITS_ORT_LIBRARY (as for deploy/emr/package.sh), FRUITS_MODEL_FILE
# (../shared/models/mobilenetv2_features.onnx), FRUITS_SAMPLE (../shared/data/fruits-360),
# FRUITS_GARAGE (the garage binary of scripts/setup-garage.sh), FRUITS_BASE_IMAGE
# (fruits-base:bookworm, made by scripts/docker-base.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
# shellcheck source=../deploy/emr/common.sh
. deploy/emr/common.sh

cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}"
base_image="${FRUITS_BASE_IMAGE:-fruits-base:bookworm}"
model_file="${FRUITS_MODEL_FILE:-${repo}/../shared/models/mobilenetv2_features.onnx}"
sample="${FRUITS_SAMPLE:-${repo}/../shared/data/fruits-360}"
garage_bin="${FRUITS_GARAGE:-${cache}/tools/bin/garage}"
label_key=fruits.emr-sim

readonly master_host=ip-10-0-0-10.ec2.internal
readonly core_hosts=(ip-10-0-0-11.ec2.internal ip-10-0-0-12.ec2.internal)
readonly s3_host=s3.sim.internal
readonly bucket=fruits
readonly region=garage

log() { echo "emr-sim: $*" >&2; }
fail() {
  echo "emr-sim: error: $*" >&2
  exit 1
}

# --- The node image ------------------------------------------------------------------------------
# Tagged with a hash of its Dockerfile, so a change builds a new one. Built images are also saved
# in the cache: `docker load` takes seconds where the build (apt-get inside) takes a minute or two.
node_image() {
  local hash
  hash="$(cat deploy/emr/sim/Dockerfile | sha256sum | cut -c1-12)"
  echo "fruits-emr-node:${hash}"
}

build_image() {
  local image saved log
  image="$(node_image)"
  if docker image inspect "${image}" >/dev/null 2>&1; then
    log "node image ${image}: present"
    return
  fi
  saved="${cache}/docker/emr-node-${image#*:}.tar.gz"
  if [[ -s "${saved}" ]] && gzip -dc "${saved}" | docker load >/dev/null 2>&1; then
    log "node image ${image}: loaded from ${saved}"
    return
  fi
  FRUITS_BASE_IMAGE="${base_image}" scripts/docker-base.sh >&2
  log "building node image ${image} (apt-get inside: a minute or two, once per machine)"
  log="$(mktemp)"
  # The daemon talks to the Debian mirror while building; --network host lets it use the host's
  # resolver and routes even where the default bridge has no way out.
  if ! docker build --network host --build-arg BASE_IMAGE="${base_image}" --tag "${image}" deploy/emr/sim >"${log}" 2>&1; then
    tail -n 40 "${log}" >&2
    rm -f "${log}"
    fail "docker build of ${image} failed (above: the end of its log)"
  fi
  rm -f "${log}"
  mkdir -p "${cache}/docker"
  docker save "${image}" | gzip -1 >"${saved}.part" && mv "${saved}.part" "${saved}"
  log "node image ${image}: built, saved to ${saved}"
}

# --- State ---------------------------------------------------------------------------------------
state_dir() {
  [[ -n "${1:-}" ]] || fail "missing DIR (the simulation's state folder)"
  mkdir -p "$1"
  cd "$1" && pwd
}

load_state() {
  [[ -f "$1/state" ]] || fail "$1/state not found: not a simulation made by emr-sim.sh up"
  # shellcheck source=/dev/null
  . "$1/state"
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# The environment S3 clients inside the network use: Garage at its network alias.
inner_s3_env() {
  printf '%s\n' -e "AWS_ENDPOINT_URL=http://${s3_host}:3900" -e "AWS_REGION=${region}" \
    -e "AWS_ACCESS_KEY_ID=${key_id}" -e "AWS_SECRET_ACCESS_KEY=${secret}" -e AWS_ALLOW_HTTP=true
}

# --- up ------------------------------------------------------------------------------------------
up() {
  local dir image project
  dir="$(state_dir "$1")"
  command -v docker >/dev/null || fail "docker not found"
  docker info >/dev/null 2>&1 || fail "cannot reach the Docker engine (docker info fails)"
  [[ -x "${garage_bin}" ]] || fail "${garage_bin} not found: run make setup-s3 (scripts/setup-garage.sh) or set FRUITS_GARAGE"
  [[ -f "${model_file}" ]] || fail "${model_file} not found: set FRUITS_MODEL_FILE"
  [[ -d "${sample}" ]] || fail "${sample} not found: set FRUITS_SAMPLE"
  build_image
  image="$(node_image)"

  # What a user does first (README, "Deploy on AWS EMR"): package the release.
  deploy/emr/package.sh "${dir}/dist" >"${dir}/package.log" 2>&1 ||
    { cat "${dir}/package.log" >&2; fail "deploy/emr/package.sh failed (above)"; }
  log "$(tail -n 1 "${dir}/package.log")"

  project="fruits-emr-$(random_hex 4)"
  key_id="GK$(random_hex 12)"
  secret="$(random_hex 32)"
  cat >"${dir}/state" <<EOF
project=${project}
key_id=${key_id}
secret=${secret}
image=${image}
EOF
  if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'status=$?; if [[ ${status} != 0 ]]; then log "up failed: removing the simulation (KEEP=1 keeps it)"; down "'"${dir}"'"; fi' EXIT
  fi

  docker network create --label "${label_key}=${project}" "${project}" >/dev/null

  # Garage, from the node image with the host's garage binary; its data lives and dies with the
  # container. The S3 port is also published on a loopback port, for the test to read results.
  cat >"${dir}/garage.toml" <<EOF
metadata_dir = "/var/lib/garage/meta"
data_dir = "/var/lib/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "0.0.0.0:3901"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "${region}"
api_bind_addr = "0.0.0.0:3900"
EOF
  docker run -d --name "${project}-s3" --hostname "${s3_host}" --network "${project}" --network-alias "${s3_host}" \
    --label "${label_key}=${project}" -p 127.0.0.1::3900 \
    -v "${garage_bin}:/usr/local/bin/garage:ro" -v "${dir}/garage.toml:/etc/garage.toml:ro" \
    "${image}" garage server >/dev/null
  local s3="docker exec ${project}-s3 garage" node_id
  for _ in $(seq 60); do ${s3} status >/dev/null 2>&1 && break; sleep 0.5; done
  ${s3} status >/dev/null 2>&1 || { docker logs --tail 30 "${project}-s3" >&2; fail "garage did not start (above: its log)"; }
  node_id="$(${s3} node id -q 2>/dev/null)"
  ${s3} layout assign -z dc1 -c 10G "${node_id%%@*}" >/dev/null
  ${s3} layout apply --version 1 >/dev/null
  ${s3} key import --yes -n fruits "${key_id}" "${secret}" >/dev/null
  ${s3} bucket create "${bucket}" >/dev/null
  ${s3} bucket allow --read --write --owner --key "${key_id}" "${bucket}" >/dev/null
  local s3_port
  s3_port="$(docker port "${project}-s3" 3900/tcp | head -n 1)"
  s3_port="${s3_port##*:}"
  cat >>"${dir}/state" <<EOF
s3_port=${s3_port}
EOF
  # For the host: the same bucket through the published port.
  cat >"${dir}/env" <<EOF
export AWS_ENDPOINT_URL=http://127.0.0.1:${s3_port}
export AWS_REGION=${region}
export AWS_ACCESS_KEY_ID=${key_id}
export AWS_SECRET_ACCESS_KEY=${secret}
export AWS_ALLOW_HTTP=true
export FRUITS_SIM_BUCKET=${bucket}
EOF
  log "S3: garage at http://${s3_host}:3900 (host: 127.0.0.1:${s3_port}), bucket ${bucket}"

  # The nodes: systemd as PID 1 needs CAP_SYS_ADMIN (it mounts), its own cgroup namespace (it
  # manages the cgroups of its units) and tmpfs on /run; nothing else of --privileged.
  local names=(master core-1 core-2) hosts=("${master_host}" "${core_hosts[@]}") i
  for i in 0 1 2; do
    local instance=instance-core.json
    [[ "${names[i]}" == master ]] && instance=instance-master.json
    docker run -d --name "${project}-${names[i]}" --hostname "${hosts[i]}" \
      --network "${project}" --network-alias "${hosts[i]}" --label "${label_key}=${project}" \
      --cap-add SYS_ADMIN --cgroupns=private --tmpfs /run --tmpfs /run/lock \
      -v "${repo}/deploy/emr/sim/info/job-flow.json:/mnt/var/lib/info/job-flow.json:ro" \
      -v "${repo}/deploy/emr/sim/info/${instance}:/mnt/var/lib/info/instance.json:ro" \
      "${image}" >/dev/null
  done
  for i in 0 1 2; do
    # Until systemd has opened its socket, systemctl cannot even ask ("Failed to connect to bus").
    local state="" tries
    for tries in $(seq 60); do
      state="$(docker exec "${project}-${names[i]}" timeout 60 systemctl is-system-running --wait 2>&1 || true)"
      [[ "${state}" == running || "${state}" == degraded ]] && break
      sleep 1
    done
    case "${state}" in
      running | degraded) ;;
      *) docker exec "${project}-${names[i]}" systemctl --failed --no-pager >&2 || true
        fail "systemd in ${project}-${names[i]} did not come up within ${tries} s (state: ${state:-none})" ;;
    esac
  done
  log "nodes: ${project}-master (${master_host}), ${project}-core-1, ${project}-core-2, systemd running"

  # What the user does before create-cluster.sh: upload.sh (bootstrap, release, model), and the
  # images, both with the AWS CLI, from a throwaway "workstation" container on the network.
  local deploy="s3://${bucket}/deploy"
  docker run --rm --network "${project}" --label "${label_key}=${project}" $(inner_s3_env) \
    -e FRUITS_DEPLOY="${deploy}" -e FRUITS_REGION="${region}" \
    -e FRUITS_RELEASE=/dist/"${FRUITS_RELEASE_OBJECT}" -e FRUITS_MODEL_FILE="/model/$(basename "${model_file}")" \
    -v "${repo}/deploy/emr:/deploy:ro" -v "${dir}/dist:/dist:ro" -v "${model_file}:/model/$(basename "${model_file}"):ro" \
    -v "${sample}:/sample:ro" \
    "${image}" bash -c 'set -euo pipefail
      bash /deploy/upload.sh
      aws s3 sync --only-show-errors --endpoint-url "${AWS_ENDPOINT_URL}" /sample "s3://'"${bucket}"'/Test"
      echo "uploaded $(find /sample -type f | wc -l) files to s3://'"${bucket}"'/Test"' >"${dir}/upload.log" 2>&1 ||
    { cat "${dir}/upload.log" >&2; fail "the upload failed (above)"; }
  log "$(tr '\n' ';' <"${dir}/upload.log")"

  # What EMR does: fetch the bootstrap action from S3 and run it as hadoop, on every node at once.
  local args
  mapfile -t args < <(FRUITS_DEPLOY="${deploy}" FRUITS_REGION="${region}" FRUITS_EXECUTOR_VCORES=1 \
    FRUITS_INFERENCE_THREADS=1 fruits_bootstrap_args)
  printf '%s\n' "${deploy}/${FRUITS_BOOTSTRAP_OBJECT}" "${args[@]}" >"${dir}/bootstrap-action"
  local pids=()
  for i in 0 1 2; do
    local fetch=aws
    [[ "${names[i]}" == core-2 ]] && fetch=curl
    docker exec -u hadoop -w /home/hadoop $(inner_s3_env) -e FRUITS_FETCH="${fetch}" "${project}-${names[i]}" \
      bash -c 'set -euo pipefail
        aws s3 cp --only-show-errors --endpoint-url "${AWS_ENDPOINT_URL}" "$0" bootstrap.sh
        bash bootstrap.sh "$@"' "${deploy}/${FRUITS_BOOTSTRAP_OBJECT}" "${args[@]}" \
      >"${dir}/bootstrap-${names[i]}.log" 2>&1 &
    pids+=($!)
  done
  local failed=()
  for i in 0 1 2; do
    wait "${pids[i]}" || failed+=("${names[i]}")
  done
  for name in "${failed[@]}"; do
    echo "--- bootstrap on ${name}:" >&2
    tail -n 40 "${dir}/bootstrap-${name}.log" >&2
  done
  ((${#failed[@]} == 0)) || fail "the bootstrap action failed on ${failed[*]} (above: its output)"
  log "bootstrap done on every node (logs: ${dir}/bootstrap-*.log)"

  # Ready when both executors have registered with the scheduler.
  local executors=0
  for _ in $(seq 120); do
    # The REST API wants the cluster secret as the bearer token: curl reads it as a header file,
    # so that it is on no command line.
    executors="$(docker exec "${project}-master" bash -c 'curl -fsS -m 2 \
      -H @<(printf "Authorization: Bearer %s\n" "$(cat /etc/fruits/cluster.secret)") \
      http://localhost:50050/api/executors' 2>/dev/null | grep -o '"host"' | wc -l || true)"
    ((executors >= 2)) && break
    sleep 1
  done
  ((executors >= 2)) || fail "only ${executors} of 2 executors registered with the scheduler within 120 s"
  log "cluster up: 2 executors registered with the scheduler on ${master_host}:50050"
  trap - EXIT
}

# --- step ----------------------------------------------------------------------------------------
step() {
  local dir args
  dir="$(state_dir "$1")"
  shift
  load_state "${dir}"
  mapfile -t args < <(FRUITS_INPUT="s3://${bucket}/Test" FRUITS_OUTPUT="s3://${bucket}/out" FRUITS_REGION="${region}" \
    fruits_step_args)
  printf '%s\n' "${args[@]}" >"${dir}/step-args"
  # As command-runner.jar does on the master: the command as hadoop. The S3 settings are the
  # simulation's (on EMR the instance profile gives the credentials).
  docker exec -u hadoop -w /home/hadoop $(inner_s3_env) "${project}-master" "${args[@]}" "$@"
}

# --- create-cluster-request ----------------------------------------------------------------------
# The RunJobFlow request deploy/emr/create-cluster.sh makes for this simulation's deploy prefix,
# executor sizing and step, as JSON. The AWS CLI builds and validates the request against the EMR
# API model, then cannot send it (its endpoint is a closed local port); its --debug log has the body.
# The extra arguments are VAR=VALUE settings for create-cluster.sh (TASK_COUNT=2, ...).
create_cluster_request() {
  local dir settings=()
  dir="$(state_dir "$1")"
  shift
  load_state "${dir}"
  for setting in "$@"; do settings+=(-e "${setting}"); done
  docker run --rm --label "${label_key}=${project}" --network none -v "${repo}/deploy/emr:/deploy:ro" \
    -e AWS_ACCESS_KEY_ID=AKIAFRUITSSIMULATION -e AWS_SECRET_ACCESS_KEY=not-used -e FRUITS_REGION="${region}" \
    -e FRUITS_DEPLOY="s3://${bucket}/deploy" -e FRUITS_EXECUTOR_VCORES=1 -e FRUITS_INFERENCE_THREADS=1 \
    -e FRUITS_INPUT="s3://${bucket}/Test" -e FRUITS_OUTPUT="s3://${bucket}/out" "${settings[@]}" \
    "${image}" bash -c 'set -uo pipefail
      mkdir -p /tmp/shim
      printf "#!/bin/sh\nexec /usr/bin/aws \"\$@\" --endpoint-url http://127.0.0.1:9 --cli-connect-timeout 1 --debug\n" >/tmp/shim/aws
      chmod +x /tmp/shim/aws
      PATH="/tmp/shim:${PATH}" bash /deploy/create-cluster.sh >/tmp/out 2>&1
      body="$(sed -n "s/.*OperationModel(name=RunJobFlow) with params: .*'"'"'body'"'"': b'"'"'\(.*\)'"'"', '"'"'url'"'"'.*/\1/p" /tmp/out)"
      if [[ -z "${body}" ]]; then grep -v " - DEBUG - \| - INFO - " /tmp/out | tail -n 20 >&2; exit 1; fi
      printf "%s\n" "${body}"' || fail "create-cluster.sh made no RunJobFlow request (above: its output)"
}

# --- down ----------------------------------------------------------------------------------------
down() {
  local dir containers
  dir="$(state_dir "$1")"
  load_state "${dir}"
  containers="$(docker ps -aq --filter "label=${label_key}=${project}")"
  # -v: the anonymous volumes, if any, go with them.
  [[ -z "${containers}" ]] || docker rm -f -v ${containers} >/dev/null
  if docker network inspect "${project}" >/dev/null 2>&1; then
    docker network rm "${project}" >/dev/null
  fi
  log "removed ${project}"
}

case "${1:-}" in
  image) build_image; node_image ;;
  up) up "${2:-}" ;;
  step) step "${2:-}" "${@:3}" ;;
  create-cluster-request) create_cluster_request "${2:-}" "${@:3}" ;;
  down) down "${2:-}" ;;
  *) echo "usage: emr-sim.sh image | up DIR | step DIR [ARG...] | create-cluster-request DIR [VAR=VALUE...] | down DIR" >&2; exit 2 ;;
esac
