#!/bin/bash
# Runs the garage CLI or server with /etc/garage.toml, first making the RPC secret if the volume
# has none. The secret stays in the volume, so the server keeps it across restarts and garage-init
# (which shares the volume) can talk to it; `down -v` forgets it with the data.
set -euo pipefail
secret=/var/lib/garage/rpc_secret
if [[ ! -s "${secret}" ]]; then
  # Garage refuses a secret file that others can read.
  umask 077
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"${secret}.tmp"
  mv "${secret}.tmp" "${secret}"
fi
exec garage "$@"
