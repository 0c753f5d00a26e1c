#!/usr/bin/env bash
# EMR bootstrap action for fruits. EMR runs it on every node (master, core, task) as the user
# hadoop, before any application is installed. It installs the fruits release, ONNX Runtime and the
# model from S3, and starts under systemd:
#   - on the master: fruits-scheduler (port 50050: gRPC, REST /api/..., /healthz);
#   - on core and task nodes: fruits-executor, registered with the master's scheduler.
# The role and the master's address come from the metadata EMR writes on each node.
#
#   bootstrap.sh --release s3://BUCKET/fruits/fruits-linux-x86_64.tar.gz \
#                --model s3://BUCKET/fruits/mobilenetv2_features.onnx \
#                --secret s3://BUCKET/fruits/cluster.secret \
#                [--region REGION] [--executor-vcores N] [--inference-threads N]
#
# --secret             the cluster's shared secret (deploy/emr/upload.sh makes it): installed as
#                      /etc/fruits/cluster.secret, owner fruits, mode 600, and on the master also as
#                      /home/hadoop/.fruits/cluster.secret for the steps, which run as hadoop. The
#                      services listen on every interface and refuse any call without it.
# --region             region of the bucket(s); default AWS_REGION, else the node's own region
#                      (instance metadata service)
# --executor-vcores    task slots of each executor (default: the node's cores)
# --inference-threads  ONNX Runtime threads per task slot (default: 1)
#
# Environment (all optional; EMR sets none of them):
#   EMR_INFO_DIR         where instance.json and job-flow.json are (/mnt/var/lib/info)
#   FRUITS_FETCH         how to read S3: aws (the AWS CLI), curl (curl's SigV4, needs keys in the
#                        environment), auto (default: aws if installed, else curl)
#   FRUITS_EXTERNAL_HOST the name other nodes reach this one by (default: hostname -f)
#   AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
#   FRUITS_S3_PATH_STYLE, RUST_LOG
#                        for an S3-compatible store instead of AWS S3 (the simulation in
#                        scripts/emr-sim.sh): used for the downloads and passed on to the services.
#                        On EMR leave them unset: every process takes its credentials from the
#                        instance profile.
set -euo pipefail

readonly prefix=/opt/fruits
readonly conf_dir=/etc/fruits
readonly scheduler_port=50050
readonly executor_health_port=50053
info_dir="${EMR_INFO_DIR:-/mnt/var/lib/info}"

log() { echo "fruits bootstrap: $*"; }
fail() {
  echo "fruits bootstrap: error: $*" >&2
  exit 1
}

usage() {
  sed -n '/^#   bootstrap.sh/,/^#                \[--region/p' "$0" | sed 's/^# *//' >&2
  exit 2
}

release="" model="" secret_url="" region="${AWS_REGION:-}" vcores="" threads=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --release) release="${2:?--release needs a value}"; shift 2 ;;
    --model) model="${2:?--model needs a value}"; shift 2 ;;
    --secret) secret_url="${2:?--secret needs a value}"; shift 2 ;;
    --region) region="${2:?--region needs a value}"; shift 2 ;;
    --executor-vcores) vcores="${2:?--executor-vcores needs a value}"; shift 2 ;;
    --inference-threads) threads="${2:?--inference-threads needs a value}"; shift 2 ;;
    -h | --help) usage ;;
    *) echo "fruits bootstrap: unknown argument: $1" >&2; usage ;;
  esac
done
[[ "${release}" == s3://?*/?* ]] || fail "--release must be the s3:// URL of the release tarball (deploy/emr/package.sh), got '${release}'"
[[ "${model}" == s3://?*/?* ]] || fail "--model must be the s3:// URL of the ONNX model, got '${model}'"
[[ "${secret_url}" == s3://?*/?* ]] ||
  fail "--secret must be the s3:// URL of the cluster secret (deploy/emr/upload.sh makes it), got '${secret_url}'"
for number in "${vcores}" "${threads}"; do
  [[ -z "${number}" || "${number}" =~ ^[1-9][0-9]*$ ]] || fail "--executor-vcores and --inference-threads take a positive integer, got '${number}'"
done

# Bootstrap actions run as hadoop, which may sudo. Everything below installs system-wide, so the
# script runs itself again as root, keeping the environment (S3 settings of a simulation).
if [[ "$(id -u)" != 0 ]]; then
  exec sudo -E -- bash "$0" --release "${release}" --model "${model}" --secret "${secret_url}" ${region:+--region "${region}"} \
    ${vcores:+--executor-vcores "${vcores}"} ${threads:+--inference-threads "${threads}"}
fi

# --- The node's role, from the metadata EMR writes on every node ------------------------------
# Both files are JSON; the two values needed are read with sed, as neither jq nor Python can be
# assumed this early on every image.
json_value() { # FILE KEY: the string, true/false or number of "KEY" in FILE
  sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" "$1" | head -n 1
}
instance_json="${info_dir}/instance.json"
job_flow_json="${info_dir}/job-flow.json"
[[ -r "${instance_json}" ]] || fail "${instance_json} is missing: this is not an EMR node (or set EMR_INFO_DIR)"
[[ -r "${job_flow_json}" ]] || fail "${job_flow_json} is missing: this is not an EMR node (or set EMR_INFO_DIR)"
is_master="$(json_value "${instance_json}" isMaster)"
master_host="$(json_value "${job_flow_json}" masterPrivateDnsName)"
case "${is_master}" in
  true) role=scheduler ;;
  false) role=executor ;;
  *) fail "cannot read isMaster (true or false) from ${instance_json}" ;;
esac
[[ -n "${master_host}" ]] || fail "cannot read masterPrivateDnsName from ${job_flow_json}"
external_host="${FRUITS_EXTERNAL_HOST:-$(hostname -f)}"
[[ -n "${external_host}" ]] || fail "hostname -f printed nothing: set FRUITS_EXTERNAL_HOST"
log "node ${external_host}: $([[ ${role} == scheduler ]] && echo master, runs fruits-scheduler || echo "core/task, runs fruits-executor for the scheduler on ${master_host}")"

# --- Region ------------------------------------------------------------------------------------
# object_store (in every fruits process) signs for one region and does not follow redirects to
# another, so the region must be right. On EC2 the instance metadata service (IMDSv2) knows it.
if [[ -z "${region}" ]]; then
  if token="$(curl -fsS -m 2 -X PUT http://169.254.169.254/latest/api/token \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' 2>/dev/null)"; then
    region="$(curl -fsS -m 2 -H "X-aws-ec2-metadata-token: ${token}" \
      http://169.254.169.254/latest/meta-data/placement/region 2>/dev/null || true)"
  fi
  [[ -n "${region}" ]] || fail "no region: pass --region (or set AWS_REGION); the instance metadata service did not answer"
fi

# --- Fetching from S3 --------------------------------------------------------------------------
fetch_with="${FRUITS_FETCH:-auto}"
if [[ "${fetch_with}" == auto ]]; then
  if command -v aws >/dev/null; then fetch_with=aws; else fetch_with=curl; fi
fi
case "${fetch_with}" in
  aws) command -v aws >/dev/null || fail "FRUITS_FETCH=aws but the AWS CLI is not installed" ;;
  curl)
    command -v curl >/dev/null || fail "FRUITS_FETCH=curl but curl is not installed"
    # SigV4 signing arrived in curl 7.75.
    curl_version="$(curl --version | awk 'NR == 1 { print $2 }')"
    [[ "$(printf '%s\n' 7.75.0 "${curl_version}" | sort -V | head -n 1)" == 7.75.0 ]] ||
      fail "curl ${curl_version} cannot sign S3 requests (7.75 or newer can): install the AWS CLI"
    [[ -n "${AWS_ACCESS_KEY_ID:-}" && -n "${AWS_SECRET_ACCESS_KEY:-}" ]] ||
      fail "fetching with curl needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on EMR, use the AWS CLI: it reads the instance profile)"
    ;;
  *) fail "FRUITS_FETCH must be aws, curl or auto, not '${fetch_with}'" ;;
esac
log "reading S3 with ${fetch_with} (region ${region}${AWS_ENDPOINT_URL:+, endpoint ${AWS_ENDPOINT_URL}})"

# Percent-encodes an S3 key for a URL path, keeping the slashes.
url_encode_key() {
  local key="$1" out="" char i
  for ((i = 0; i < ${#key}; i++)); do
    char="${key:i:1}"
    case "${char}" in
      [a-zA-Z0-9.~_/-]) out+="${char}" ;;
      *) out+="$(printf '%%%02X' "'${char}")" ;;
    esac
  done
  printf '%s' "${out}"
}

# A curl config value in double quotes (curl's escapes: backslash and double quote).
curl_quote() {
  local value="${1//\\/\\\\}"
  printf '"%s"' "${value//\"/\\\"}"
}

# curl's --config lines with the S3 credentials. They reach curl on its standard input, never on
# its command line, where every user of the node could read them (ps, /proc/PID/cmdline); printf
# is a shell builtin, so printing them starts no process either.
curl_credentials() {
  printf 'user = %s\n' "$(curl_quote "${AWS_ACCESS_KEY_ID}:${AWS_SECRET_ACCESS_KEY}")"
  [[ -z "${AWS_SESSION_TOKEN:-}" ]] || printf 'header = %s\n' "$(curl_quote "x-amz-security-token: ${AWS_SESSION_TOKEN}")"
}

# fetch s3://BUCKET/KEY FILE
fetch() {
  local url="$1" dest="$2" bucket key endpoint
  bucket="${url#s3://}"
  key="${bucket#*/}"
  bucket="${bucket%%/*}"
  if [[ "${fetch_with}" == aws ]]; then
    # The AWS CLI on EMR (v2) and Debian's (2.9) both take --endpoint-url; older ones ignore
    # AWS_ENDPOINT_URL, so it is passed explicitly when set.
    aws s3 cp --only-show-errors --region "${region}" ${AWS_ENDPOINT_URL:+--endpoint-url "${AWS_ENDPOINT_URL}"} \
      "${url}" "${dest}" || fail "cannot download ${url} with the AWS CLI (see above)"
  else
    # Path-style against a custom endpoint (what S3-compatible servers expect), virtual-hosted
    # against AWS.
    if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
      endpoint="${AWS_ENDPOINT_URL%/}/${bucket}"
    else
      endpoint="https://${bucket}.s3.${region}.amazonaws.com"
    fi
    # S3 wants the payload's hash in x-amz-content-sha256 with every SigV4 request (curl signs
    # the x-amz-* headers it is given); a GET sends no payload to hash.
    curl_credentials | curl --config - -fsS --retry 3 --aws-sigv4 "aws:amz:${region}:s3" \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
      -o "${dest}" "${endpoint}/$(url_encode_key "${key}")" || fail "cannot download ${url} with curl (see above)"
  fi
}

# Private (mode 700, as mktemp makes it): the secret passes through it. The umask stays as it
# is: the installed programs must be readable and executable by the services' user.
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

# --- Install -----------------------------------------------------------------------------------
log "downloading ${release}"
fetch "${release}" "${work}/release.tar.gz"
rm -rf "${prefix}.new"
mkdir -p "${prefix}.new"
tar -xzf "${work}/release.tar.gz" -C "${prefix}.new" --strip-components=1 ||
  fail "${release} is not a fruits release tarball (tar could not unpack it)"
for file in bin/fruits bin/fruits-scheduler bin/fruits-executor lib/libonnxruntime.so.1.31.1 \
  share/fruits/systemd/fruits-scheduler.service share/fruits/systemd/fruits-executor.service; do
  [[ -e "${prefix}.new/${file}" ]] || fail "${release} has no ${file}: make it with deploy/emr/package.sh"
done
# A binary built against a newer glibc than the node's fails here, with the loader's message,
# rather than later in a restart loop.
"${prefix}.new/bin/fruits-${role}" --help >/dev/null 2>"${work}/help.err" ||
  fail "fruits-${role} from ${release} does not run on this node: $(head -c 600 "${work}/help.err")"
rm -rf "${prefix}"
mv "${prefix}.new" "${prefix}"
log "installed $(cat "${prefix}/VERSION" 2>/dev/null || echo fruits) in ${prefix}"

# One unprivileged system user runs the service.
if ! id fruits >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /var/lib/fruits --no-create-home --shell /sbin/nologin fruits
fi
install -d -o fruits -g fruits -m 0750 /var/lib/fruits
install -d -m 0755 "${conf_dir}"

# The cluster secret: readable by the services' user only; the steps run as hadoop on the master,
# which gets its own copy.
log "downloading the cluster secret ${secret_url}"
fetch "${secret_url}" "${work}/cluster.secret"
[[ "$(tr -d '[:space:]' <"${work}/cluster.secret" | wc -c)" -ge 32 ]] ||
  fail "${secret_url} is not a cluster secret (at least 32 characters; deploy/emr/upload.sh makes one)"
install -o fruits -g fruits -m 0600 "${work}/cluster.secret" "${conf_dir}/cluster.secret"
if [[ "${role}" == scheduler ]] && id hadoop >/dev/null 2>&1; then
  hadoop_home="$(getent passwd hadoop | cut -d: -f6)"
  install -d -o hadoop -g hadoop -m 0700 "${hadoop_home}/.fruits"
  install -o hadoop -g hadoop -m 0600 "${work}/cluster.secret" "${hadoop_home}/.fruits/cluster.secret"
fi

# Settings every fruits process on the node shares. Only what is set is written: on EMR that is
# the region, and credentials come from the instance profile.
{
  echo "# Written by the fruits bootstrap action on $(date -u +%Y-%m-%dT%H:%M:%SZ)."
  echo "AWS_REGION=${region}"
  echo "FRUITS_ORT_LIBRARY=${prefix}/lib/libonnxruntime.so.1.31.1"
  echo "FRUITS_SECRET_FILE=${conf_dir}/cluster.secret"
  for name in AWS_ENDPOINT_URL AWS_ALLOW_HTTP AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN \
    FRUITS_S3_PATH_STYLE RUST_LOG; do
    [[ -z "${!name:-}" ]] || echo "${name}=${!name}"
  done
} >"${work}/fruits.env"
# May hold a secret key (simulation): readable by root only; systemd reads it before dropping to
# the fruits user.
install -m 0600 "${work}/fruits.env" "${conf_dir}/fruits.env"

if [[ "${role}" == scheduler ]]; then
  cat >"${work}/role.env" <<EOF
FRUITS_EXTERNAL_HOST=${external_host}
FRUITS_SCHEDULER_PORT=${scheduler_port}
EOF
else
  model_file="${prefix}/models/$(basename "${model#s3://}")"
  log "downloading ${model}"
  install -d -m 0755 "${prefix}/models"
  fetch "${model}" "${work}/model.onnx"
  install -m 0644 "${work}/model.onnx" "${model_file}"
  # Shuffle and spill files of the executor: on EMR /mnt is the large instance volume.
  work_dir=/var/lib/fruits/work
  [[ -d /mnt ]] && work_dir=/mnt/fruits/work
  install -d -o fruits -g fruits -m 0750 "${work_dir}"
  cat >"${work}/role.env" <<EOF
FRUITS_EXTERNAL_HOST=${external_host}
FRUITS_SCHEDULER_HOST=${master_host}
FRUITS_SCHEDULER_PORT=${scheduler_port}
FRUITS_MODEL=${model_file}
FRUITS_WORK_DIR=${work_dir}
FRUITS_EXECUTOR_ARGS=${vcores:+--vcores ${vcores}} ${threads:+--inference-threads ${threads}}
EOF
fi
install -m 0644 "${work}/role.env" "${conf_dir}/${role}.env"

# --- Start -------------------------------------------------------------------------------------
unit="fruits-${role}.service"
install -m 0644 "${prefix}/share/fruits/systemd/${unit}" "/etc/systemd/system/${unit}"
systemctl daemon-reload
systemctl enable "${unit}" >/dev/null 2>&1
systemctl restart "${unit}"

# Wait until the service answers its health check, so that a bad release, model or setting fails
# the bootstrap (and EMR reports it) instead of leaving a node that never works. An executor's
# registration is not waited for: the master may still be booting; the unit restarts the executor
# until the scheduler answers.
if [[ "${role}" == scheduler ]]; then health_port="${scheduler_port}"; else health_port="${executor_health_port}"; fi
deadline=$((SECONDS + ${FRUITS_START_TIMEOUT:-120}))
until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:${health_port}/healthz" 2>/dev/null; do
  if ((SECONDS >= deadline)); then
    journalctl -u "${unit}" -n 40 --no-pager >&2 || true
    fail "${unit} did not answer http://127.0.0.1:${health_port}/healthz within ${FRUITS_START_TIMEOUT:-120} s (above: its log)"
  fi
  sleep 1
done
log "${unit} is up (http://${external_host}:${health_port}/healthz)"
