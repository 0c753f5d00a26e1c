#!/usr/bin/env bash
# Compose on docker/docker-compose.yml, with whichever Compose this machine has: the `docker
# compose` plugin (v2) if installed, else the standalone `docker-compose` (v1). Arguments are
# Compose's own:
#
#   scripts/docker-compose.sh up -d [--scale executor=3]
#   scripts/docker-compose.sh run --rm client
#   scripts/docker-compose.sh down -v
set -euo pipefail
file="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker/docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  exec docker compose -f "${file}" "$@"
elif command -v docker-compose >/dev/null; then
  exec docker-compose -f "${file}" "$@"
fi
echo "error: neither \`docker compose\` nor \`docker-compose\` is installed" >&2
exit 1
