#!/usr/bin/env bash
# Runs the fruits job as a step on a cluster made by create-cluster.sh, waits for it, and prints
# where its output and log are. The step runs `fruits run` on the master node (command-runner.jar)
# against the scheduler there; executors read the images from S3 and write the features to S3.
#
#   CLUSTER_ID=j-XXXXXXXXXXXXX FRUITS_INPUT=s3://BUCKET/Test FRUITS_OUTPUT=s3://BUCKET/out \
#     deploy/emr/add-step.sh
#
# Optional: FRUITS_REGION [AWS_REGION, else `aws configure get region`], FRUITS_STEP_EXTRA_ARGS
# (more `fruits run` flags, for example "--csv"), WAIT=false to return once the step is queued.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "${here}/common.sh"

command -v aws >/dev/null || fruits_fail "the AWS CLI (aws) is not installed"
[[ "${CLUSTER_ID:-}" == j-* ]] || fruits_fail "CLUSTER_ID is not set to a cluster id (j-...): create-cluster.sh prints it"
fruits_require_s3_url FRUITS_INPUT "the images to featurize"
fruits_require_s3_url FRUITS_OUTPUT "where the job writes features/, pca/ and summary.json"
FRUITS_REGION="${FRUITS_REGION:-${AWS_REGION:-$(aws configure get region 2>/dev/null || true)}}"
[[ -n "${FRUITS_REGION}" ]] || fruits_fail "no region: set FRUITS_REGION (or AWS_REGION)"
export FRUITS_REGION

step="[{\"Type\":\"CUSTOM_JAR\",\"Name\":\"fruits run\",\"ActionOnFailure\":\"CONTINUE\",\"Jar\":\"command-runner.jar\",\"Args\":$(fruits_step_args | fruits_json_array)}]"
step_id="$(aws emr add-steps --region "${FRUITS_REGION}" --cluster-id "${CLUSTER_ID}" --steps "${step}" \
  --query 'StepIds[0]' --output text)"
echo "step ${step_id} added to ${CLUSTER_ID}"
[[ "${WAIT:-true}" == true ]] || exit 0

status=0
aws emr wait step-complete --region "${FRUITS_REGION}" --cluster-id "${CLUSTER_ID}" --step-id "${step_id}" || status=$?
state="$(aws emr describe-step --region "${FRUITS_REGION}" --cluster-id "${CLUSTER_ID}" --step-id "${step_id}" \
  --query 'Step.Status.State' --output text)"
echo "step ${step_id}: ${state}"
echo "  output: ${FRUITS_OUTPUT%/}/summary.json, ${FRUITS_OUTPUT%/}/features/_SUCCESS"
echo "  log:    the cluster's log URI, ${CLUSTER_ID}/steps/${step_id}/stdout.gz (a few minutes after the step ends)"
[[ "${status}" == 0 && "${state}" == COMPLETED ]] || fruits_fail "step ${step_id} ended ${state}"
