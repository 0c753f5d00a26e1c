#!/bin/bash
# One-shot creation of the compose cluster's shared secret (see fruits_process::auth): 32 random
# bytes as 64 hex digits in /var/lib/fruits-secret/cluster.secret, on the named volume the
# scheduler, the executors and the client mount read-only as FRUITS_SECRET_FILE. The volume's
# folder is private to the fruits user (mode 700, from the image), the file mode 600. An existing
# secret is kept, so that services restarted on the same volume still agree; `down -v` drops it.
set -euo pipefail
umask 077
secret_file="${FRUITS_SECRET_FILE:?FRUITS_SECRET_FILE is not set}"
if [[ -s "${secret_file}" ]]; then
  echo "cluster secret: kept ${secret_file}"
  exit 0
fi
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"${secret_file}.new"
chmod 600 "${secret_file}.new"
mv -f "${secret_file}.new" "${secret_file}"
echo "cluster secret: created ${secret_file}"
