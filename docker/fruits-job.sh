#!/bin/bash
# fruits-job [fruits run flags]: the whole job of the compose cluster in one command.
#   1. upload the images mounted at /data to FRUITS_JOB_INPUT (s3://fruits/input)
#   2. fruits run on the cluster (FRUITS_SCHEDULER): the executors featurize and write, this
#      process commits, then the PCA; outputs go to FRUITS_JOB_OUTPUT (s3://fruits/out)
#   3. download the outputs to /out (a folder of the host)
# Extra arguments go to `fruits run` (--json, --no-pca, --csv, ...). Only `fruits run` prints on
# stdout, so `fruits-job --json` prints exactly one line of JSON there.
set -euo pipefail
bucket="${FRUITS_S3_BUCKET:-fruits}"
input="${FRUITS_JOB_INPUT:-s3://${bucket}/input}"
output="${FRUITS_JOB_OUTPUT:-s3://${bucket}/out}"
[[ -d /data ]] || { echo "error: no images at /data: mount a folder of images there" >&2; exit 1; }
[[ -d /out ]] || { echo "error: no /out: mount the host folder for the outputs there" >&2; exit 1; }

echo "uploading /data to ${input}" >&2
fruits upload --from /data --to "${input}" >&2
fruits run --input "${input}" --output "${output}" "$@"
echo "downloading ${output} to /out" >&2
fruits download --from "${output}" --to /out >&2
# The service runs as root so that it can write into whatever host folder is mounted; the outputs
# are given to that folder's owner, as if they had written them.
if [[ "$(id -u)" == 0 ]]; then
  chown -R --reference=/out /out
fi
