#!/usr/bin/env bash
# Starts an EMR cluster that runs fruits: the reference's shape (1 master + 2 core m5.xlarge),
# the fruits bootstrap action on every node, logs to S3, and auto-termination. Prints the cluster id.
#
#   FRUITS_DEPLOY=s3://BUCKET/fruits deploy/emr/create-cluster.sh
#
# Required:
#   FRUITS_DEPLOY        the S3 prefix deploy/emr/upload.sh filled (bootstrap, release, model)
# Optional (defaults in brackets):
#   FRUITS_REGION        region of the cluster and the bucket [AWS_REGION, else `aws configure get region`]
#   FRUITS_LOGS          S3 prefix for EMR's logs (bootstrap output, step output) [$FRUITS_DEPLOY/logs]
#   CLUSTER_NAME         [fruits]
#   EMR_RELEASE          EMR release; 7.x runs Amazon Linux 2023 [emr-7.5.0]
#   INSTANCE_TYPE        master and core nodes [m5.xlarge]
#   CORE_COUNT           core nodes, on-demand [2]
#   TASK_COUNT           task nodes, on spot (capped at the on-demand price) [0]
#   TASK_INSTANCE_TYPE   [INSTANCE_TYPE]
#   IDLE_TIMEOUT         seconds without a running step after which EMR terminates the cluster [3600]
#   FRUITS_INPUT, FRUITS_OUTPUT
#                        if both are set, the cluster runs the job as its first step (add-step.sh
#                        runs it on a cluster that is already up)
#   AUTO_TERMINATE       true: terminate as soon as the steps are done, instead of after IDLE_TIMEOUT
#                        idle seconds [false]
#   EC2_KEY_NAME         EC2 key pair for SSH to the nodes [none: use SSM or no shell access]
#   SUBNET_ID            subnet to start in [the default VPC's]
#   FRUITS_MODEL_OBJECT  file name of the model under FRUITS_DEPLOY [mobilenetv2_features.onnx]
#   FRUITS_EXECUTOR_VCORES, FRUITS_INFERENCE_THREADS
#                        executor sizing passed to the bootstrap [the node's cores; cores / vcores]
#
# The roles are EMR's defaults: create them once with `aws emr create-default-roles`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "${here}/common.sh"

command -v aws >/dev/null || fruits_fail "the AWS CLI (aws) is not installed"
fruits_require_s3_url FRUITS_DEPLOY "where deploy/emr/upload.sh put the bootstrap, release and model"
FRUITS_REGION="${FRUITS_REGION:-${AWS_REGION:-$(aws configure get region 2>/dev/null || true)}}"
[[ -n "${FRUITS_REGION}" ]] || fruits_fail "no region: set FRUITS_REGION (or AWS_REGION, or aws configure set region ...)"
export FRUITS_REGION
logs="${FRUITS_LOGS:-${FRUITS_DEPLOY%/}/logs}"
instance_type="${INSTANCE_TYPE:-m5.xlarge}"
task_count="${TASK_COUNT:-0}"
[[ "${CORE_COUNT:-2}" =~ ^[0-9]+$ && "${task_count}" =~ ^[0-9]+$ ]] || fruits_fail "CORE_COUNT and TASK_COUNT are numbers"

instance_groups=(
  "InstanceGroupType=MASTER,Name=master,InstanceCount=1,InstanceType=${instance_type}"
  "InstanceGroupType=CORE,Name=core,InstanceCount=${CORE_COUNT:-2},InstanceType=${instance_type}"
)
if ((task_count > 0)); then
  # BidPrice=OnDemandPrice: a spot group whose price is capped at the on-demand price. Task nodes
  # only run executors; when one is reclaimed the scheduler runs its tasks again elsewhere.
  instance_groups+=("InstanceGroupType=TASK,Name=task-spot,InstanceCount=${task_count},InstanceType=${TASK_INSTANCE_TYPE:-${instance_type}},BidPrice=OnDemandPrice")
fi

bootstrap="[{\"Name\":\"fruits\",\"Path\":\"${FRUITS_DEPLOY%/}/${FRUITS_BOOTSTRAP_OBJECT}\",\"Args\":$(fruits_bootstrap_args | fruits_json_array)}]"

args=(
  emr create-cluster
  --name "${CLUSTER_NAME:-fruits}"
  --release-label "${EMR_RELEASE:-emr-7.5.0}"
  --region "${FRUITS_REGION}"
  --use-default-roles
  --log-uri "${logs}"
  --instance-groups "${instance_groups[@]}"
  --bootstrap-actions "${bootstrap}"
  --query ClusterId --output text
)
ec2_attributes="${EC2_KEY_NAME:+KeyName=${EC2_KEY_NAME}}"
[[ -z "${SUBNET_ID:-}" ]] || ec2_attributes="${ec2_attributes:+${ec2_attributes},}SubnetId=${SUBNET_ID}"
[[ -z "${ec2_attributes}" ]] || args+=(--ec2-attributes "${ec2_attributes}")

if [[ -n "${FRUITS_INPUT:-}" || -n "${FRUITS_OUTPUT:-}" ]]; then
  fruits_require_s3_url FRUITS_INPUT "the images to featurize"
  fruits_require_s3_url FRUITS_OUTPUT "where the job writes features/, pca/ and summary.json"
  args+=(--steps "[{\"Type\":\"CUSTOM_JAR\",\"Name\":\"fruits run\",\"ActionOnFailure\":\"CONTINUE\",\"Jar\":\"command-runner.jar\",\"Args\":$(fruits_step_args | fruits_json_array)}]")
fi
if [[ "${AUTO_TERMINATE:-false}" == true ]]; then
  [[ -n "${FRUITS_INPUT:-}" ]] || fruits_fail "AUTO_TERMINATE=true needs FRUITS_INPUT and FRUITS_OUTPUT: a cluster without a step would end at once"
  args+=(--auto-terminate)
else
  args+=(--auto-termination-policy "IdleTimeout=${IDLE_TIMEOUT:-3600}")
fi

aws "${args[@]}"
