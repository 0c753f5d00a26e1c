#!/usr/bin/env bash
# A single-node Garage S3 server on loopback, for trying a cluster on one machine.
#
#   scripts/local-s3.sh start DIR   start Garage with its data in DIR, create the bucket and a key,
#                                   and write the AWS_* variables every fruits process needs to DIR/env
#   scripts/local-s3.sh stop DIR    stop it (DIR is kept; `rm -rf DIR` removes the data)
#
# DIR/env holds the S3 key and its secret, and DIR/garage.toml Garage's RPC secret: DIR is made
# private to its owner (mode 700, created so if new) and every file in it is created mode 600 at
# most. A DIR owned by another user is refused. No secret is passed on a command line.
#
# Settings: S3_PORT (3900), BUCKET (fruits). Garage comes from PATH or from where
# scripts/setup-garage.sh (`make setup-s3`) installs it.
set -euo pipefail

command="${1:?usage: local-s3.sh start|stop DIR}"
dir="${2:?usage: local-s3.sh start|stop DIR}"
port="${S3_PORT:-3900}"
bucket="${BUCKET:-fruits}"
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}"
garage="$(command -v garage || echo "${cache}/tools/bin/garage")"
[[ -x "${garage}" ]] || { echo "error: garage not found: run make setup-s3" >&2; exit 1; }
# Everything this script and Garage create is private: keys, config, data, logs.
umask 077
mkdir -p "${dir}"
dir="$(cd "${dir}" && pwd)"
[[ -O "${dir}" ]] || { echo "error: ${dir} belongs to another user: the S3 secrets written there would not be private" >&2; exit 1; }
chmod 700 "${dir}"
config="${dir}/garage.toml"
g() { "${garage}" -c "${config}" "$@"; }

case "${command}" in
start)
  if [[ -f "${dir}/garage.pid" ]] && kill -0 "$(cat "${dir}/garage.pid")" 2>/dev/null; then
    echo "already running: . ${dir}/env"
    exit 0
  fi
  rm -f "${config}"
  cat >"${config}" <<TOML
metadata_dir = "${dir}/meta"
data_dir = "${dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:${port}"
TOML
  key_id="GK$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  secret="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  # Single-node mode: Garage assigns itself the layout, imports the key and creates the bucket
  # before it answers.
  GARAGE_DEFAULT_ACCESS_KEY="${key_id}" GARAGE_DEFAULT_SECRET_KEY="${secret}" GARAGE_DEFAULT_BUCKET="${bucket}" \
    "${garage}" -c "${config}" server --single-node --default-bucket >"${dir}/garage.log" 2>&1 &
  echo $! >"${dir}/garage.pid"
  for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.2; done
  g status >/dev/null || { echo "error: garage did not start; see ${dir}/garage.log" >&2; exit 1; }
  # Written next to the old file and moved over it: an existing env file keeps its mode when
  # rewritten in place, and may have been readable by others.
  rm -f "${dir}/env.new"
  cat >"${dir}/env.new" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:${port}
export AWS_REGION=garage
export AWS_ALLOW_HTTP=true
export AWS_ACCESS_KEY_ID=${key_id}
export AWS_SECRET_ACCESS_KEY=${secret}
ENV
  chmod 600 "${dir}/env.new"
  mv -f "${dir}/env.new" "${dir}/env"
  echo "garage on http://127.0.0.1:${port}, bucket ${bucket}; load the settings with: . ${dir}/env"
  ;;
stop)
  if [[ -f "${dir}/garage.pid" ]]; then
    kill "$(cat "${dir}/garage.pid")" 2>/dev/null || true
    rm -f "${dir}/garage.pid"
  fi
  echo "stopped"
  ;;
*)
  echo "usage: local-s3.sh start|stop DIR" >&2
  exit 2
  ;;
esac
