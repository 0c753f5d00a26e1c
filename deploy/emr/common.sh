# Shared by create-cluster.sh, add-step.sh, upload.sh and the simulation (scripts/emr-sim.sh), so
# that the bootstrap action and the step the simulation runs are the ones a real cluster gets.
# Sourced, not run.
#
# FRUITS_DEPLOY is the S3 prefix upload.sh fills:
#   $FRUITS_DEPLOY/bootstrap.sh                  the bootstrap action
#   $FRUITS_DEPLOY/fruits-linux-x86_64.tar.gz    the release (deploy/emr/package.sh)
#   $FRUITS_DEPLOY/<model file name>             the ONNX model
#   $FRUITS_DEPLOY/cluster.secret                the cluster's shared secret (made once, kept)

# The names of the objects upload.sh writes under FRUITS_DEPLOY.
FRUITS_RELEASE_OBJECT=fruits-linux-x86_64.tar.gz
FRUITS_BOOTSTRAP_OBJECT=bootstrap.sh
FRUITS_MODEL_OBJECT_DEFAULT=mobilenetv2_features.onnx
FRUITS_SECRET_OBJECT=cluster.secret
# Where the bootstrap puts the secret for the steps, which run as hadoop on the master.
FRUITS_STEP_SECRET_FILE=/home/hadoop/.fruits/cluster.secret

fruits_fail() {
  echo "error: $*" >&2
  exit 1
}

# Checks that variable $1 is set to an s3:// URL; $2 says what it is for the error message.
fruits_require_s3_url() {
  local name="$1" what="$2" value="${!1:-}"
  [[ -n "${value}" ]] || fruits_fail "${name} is not set: ${what} (an s3://bucket/prefix URL)"
  [[ "${value}" == s3://?* ]] || fruits_fail "${name}=${value} is not an s3:// URL: ${what}"
}

# The bootstrap action's arguments, one per line, from FRUITS_DEPLOY, FRUITS_MODEL_OBJECT and
# the optional executor sizing FRUITS_EXECUTOR_VCORES and FRUITS_INFERENCE_THREADS.
fruits_bootstrap_args() {
  local deploy="${FRUITS_DEPLOY%/}"
  printf '%s\n' --release "${deploy}/${FRUITS_RELEASE_OBJECT}" \
    --model "${deploy}/${FRUITS_MODEL_OBJECT:-${FRUITS_MODEL_OBJECT_DEFAULT}}" \
    --secret "${deploy}/${FRUITS_SECRET_OBJECT}"
  [[ -z "${FRUITS_REGION:-}" ]] || printf '%s\n' --region "${FRUITS_REGION}"
  [[ -z "${FRUITS_EXECUTOR_VCORES:-}" ]] || printf '%s\n' --executor-vcores "${FRUITS_EXECUTOR_VCORES}"
  [[ -z "${FRUITS_INFERENCE_THREADS:-}" ]] || printf '%s\n' --inference-threads "${FRUITS_INFERENCE_THREADS}"
}

# The step's command line on the master node, one argument per line: the fruits client against
# the scheduler the bootstrap started there, from FRUITS_INPUT to FRUITS_OUTPUT. The client reads
# the input listing and commits the output itself, so it needs the bucket's region too, and the
# cluster secret (a path in the environment: never the secret itself on a command line).
fruits_step_args() {
  printf '%s\n' env "FRUITS_SECRET_FILE=${FRUITS_STEP_SECRET_FILE}" /opt/fruits/bin/fruits run --scheduler df://localhost:50050 \
    --input "${FRUITS_INPUT}" --output "${FRUITS_OUTPUT}"
  [[ -z "${FRUITS_REGION:-}" ]] || printf '%s\n' --s3-region "${FRUITS_REGION}"
  # Extra client flags, split on spaces (for example "--pca-k 3 --csv").
  local extra
  for extra in ${FRUITS_STEP_EXTRA_ARGS:-}; do printf '%s\n' "${extra}"; done
}

# Joins lines into the JSON array the EMR API takes for Args.
fruits_json_array() {
  local first=true line
  printf '['
  while IFS= read -r line; do
    ${first} || printf ','
    first=false
    line="${line//\\/\\\\}"
    line="${line//\"/\\\"}"
    printf '"%s"' "${line}"
  done
  printf ']'
}
