#!/bin/bash
# One-shot set-up of the compose cluster's S3: gives the single Garage node its storage role,
# imports the access key the fruits services use and creates their bucket. It runs in the garage
# container's network namespace with its volume (see docker-compose.yml), so the garage CLI
# reaches the server on 127.0.0.1 with the server's own config and RPC secret. Every step checks
# first, so running it again on an existing volume changes nothing.
#
# Environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (the key to import), FRUITS_S3_BUCKET,
# GARAGE_CAPACITY (what the node offers, default 10G; a layout figure, not a reservation).
set -euo pipefail
key_id="${AWS_ACCESS_KEY_ID:?AWS_ACCESS_KEY_ID is not set}"
secret="${AWS_SECRET_ACCESS_KEY:?AWS_SECRET_ACCESS_KEY is not set}"
bucket="${FRUITS_S3_BUCKET:?FRUITS_S3_BUCKET is not set}"
capacity="${GARAGE_CAPACITY:-10G}"
[[ "${key_id}" =~ ^GK[0-9a-f]{24}$ ]] || { echo "error: a Garage key id is GK and 24 hex digits, not ${key_id}" >&2; exit 1; }
[[ "${secret}" =~ ^[0-9a-f]{64}$ ]] || { echo "error: a Garage secret key is 64 hex digits" >&2; exit 1; }

# The server's health check already passed; this is for a run by hand.
for _ in $(seq 60); do garage status >/dev/null 2>&1 && break; sleep 1; done
garage status >/dev/null

node="$(garage node id -q 2>/dev/null)"
node="${node%%@*}"
version="$(garage layout show | sed -n 's/^Current cluster layout version: \([0-9]*\).*/\1/p')"
[[ -n "${version}" ]] || { echo "error: cannot read the layout version from garage layout show" >&2; exit 1; }
if [[ "${version}" == 0 ]]; then
  garage layout assign -z dc1 -c "${capacity}" "${node}" >/dev/null
  garage layout apply --version 1 >/dev/null
  echo "layout: node ${node:0:16} holds all data (${capacity})"
fi

if garage key info "${key_id}" >/dev/null 2>&1; then
  echo "key ${key_id}: present"
else
  garage key import --yes -n fruits "${key_id}" "${secret}" >/dev/null
  echo "key ${key_id}: imported"
fi

if garage bucket info "${bucket}" >/dev/null 2>&1; then
  echo "bucket ${bucket}: present"
else
  garage bucket create "${bucket}" >/dev/null
  echo "bucket ${bucket}: created"
fi
garage bucket allow --read --write --owner --key "${key_id}" "${bucket}" >/dev/null
echo "S3 ready: bucket ${bucket}, key ${key_id}"
