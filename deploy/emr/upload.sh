#!/usr/bin/env bash
# Puts what the bootstrap action installs into S3, under FRUITS_DEPLOY:
#   bootstrap.sh, fruits-linux-x86_64.tar.gz (from deploy/emr/package.sh), the ONNX model, and
#   cluster.secret, the clusters' shared secret: made (32 random bytes, hex) only if absent, so that
#   running clusters and nodes joining them keep agreeing. Whoever can read it can use the
#   clusters: keep FRUITS_DEPLOY readable only by the operators and the clusters' instance
#   profile. To change it, delete the object, upload again and restart the clusters.
#
#   FRUITS_DEPLOY=s3://BUCKET/fruits deploy/emr/upload.sh
#
# Optional: FRUITS_RELEASE [dist/fruits-linux-x86_64.tar.gz], FRUITS_MODEL_FILE
# [../shared/models/mobilenetv2_features.onnx], FRUITS_REGION [AWS_REGION, else the CLI's].
# AWS_ENDPOINT_URL, when set, is passed to the CLI as --endpoint-url (an S3-compatible store; the
# simulation in scripts/emr-sim.sh uses this script against Garage).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "${here}/common.sh"

command -v aws >/dev/null || fruits_fail "the AWS CLI (aws) is not installed"
fruits_require_s3_url FRUITS_DEPLOY "where to put the bootstrap, release and model"
release="${FRUITS_RELEASE:-${here}/../../dist/${FRUITS_RELEASE_OBJECT}}"
model="${FRUITS_MODEL_FILE:-${here}/../../../shared/models/${FRUITS_MODEL_OBJECT_DEFAULT}}"
[[ -f "${release}" ]] || fruits_fail "${release} not found: run deploy/emr/package.sh (or set FRUITS_RELEASE)"
[[ -f "${model}" ]] || fruits_fail "${model} not found: set FRUITS_MODEL_FILE to the ONNX model"
region="${FRUITS_REGION:-${AWS_REGION:-}}"
deploy="${FRUITS_DEPLOY%/}"

cli=(aws s3 cp --only-show-errors ${region:+--region "${region}"} ${AWS_ENDPOINT_URL:+--endpoint-url "${AWS_ENDPOINT_URL}"})
"${cli[@]}" "${here}/bootstrap.sh" "${deploy}/${FRUITS_BOOTSTRAP_OBJECT}"
"${cli[@]}" "${release}" "${deploy}/${FRUITS_RELEASE_OBJECT}"
"${cli[@]}" "${model}" "${deploy}/$(basename "${model}")"
ls_cli=(aws s3 ls ${region:+--region "${region}"} ${AWS_ENDPOINT_URL:+--endpoint-url "${AWS_ENDPOINT_URL}"})
if "${ls_cli[@]}" "${deploy}/${FRUITS_SECRET_OBJECT}" 2>/dev/null | awk '{ print $4 }' | grep -x "${FRUITS_SECRET_OBJECT}" >/dev/null; then
  secret_note="${FRUITS_SECRET_OBJECT} (kept)"
else
  # Made in a private folder and uploaded from the file: never on a command line.
  umask 077
  secret_dir="$(mktemp -d)"
  trap 'rm -rf "${secret_dir}"' EXIT
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"${secret_dir}/${FRUITS_SECRET_OBJECT}"
  "${cli[@]}" "${secret_dir}/${FRUITS_SECRET_OBJECT}" "${deploy}/${FRUITS_SECRET_OBJECT}"
  secret_note="${FRUITS_SECRET_OBJECT} (new)"
fi
echo "uploaded to ${deploy}/: ${FRUITS_BOOTSTRAP_OBJECT}, ${FRUITS_RELEASE_OBJECT}, $(basename "${model}"), ${secret_note}"
