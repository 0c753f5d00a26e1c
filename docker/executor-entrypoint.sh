#!/bin/bash
# Starts fruits-executor registered under this container's hostname. The scheduler, the other
# executors and the client reach an executor at the host it registers; replicas made with
# `--scale` share one service name, but each container's hostname resolves to it alone on the
# compose network. FRUITS_EXTERNAL_HOST overrides; every other flag comes from the command.
set -euo pipefail
exec fruits-executor --external-host "${FRUITS_EXTERNAL_HOST:-$(hostname)}" "$@"
