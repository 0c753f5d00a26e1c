#!/bin/bash
# http-ok PORT PATH: succeeds if http://127.0.0.1:PORT/PATH answers 200. The container health
# checks use it; the images carry no curl or wget, bash's /dev/tcp is enough for one GET.
set -euo pipefail
port="${1:?usage: http-ok PORT PATH}"
path="${2:?usage: http-ok PORT PATH}"
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "${path}" "${port}" >&3
IFS= read -r -t 5 status <&3
[[ "${status}" =~ ^HTTP/1\.[01]\ 200 ]] || { echo "GET ${path}: ${status:-no answer}" >&2; exit 1; }
