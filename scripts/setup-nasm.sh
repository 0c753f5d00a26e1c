#!/usr/bin/env bash
# Makes sure the NASM assembler is there before the build: libjpeg-turbo's x86 SIMD (inside
# mozjpeg-sys, fruits' JPEG decoder) is NASM source. With it a 100x100 JPEG decodes about 3x
# faster, bit for bit the same pixels. Without it the build still works, with plain C decoding.
#
# As root with apt-get (CI, containers, a fresh EC2 box) NASM is installed from Debian's
# packages; otherwise this says how to install it and carries on.
set -euo pipefail

if command -v nasm >/dev/null; then
  echo "nasm: $(nasm -v)"
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing nasm with apt-get (for libjpeg-turbo's SIMD)"
  # Quiet unless it fails: the output of a failed install is shown.
  if log="$(DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nasm 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nasm 2>&1; })"; then
    echo "nasm: $(nasm -v)"
    exit 0
  fi
  echo "${log}" >&2
fi
echo "WARNING: nasm not found: JPEG decoding will be built without SIMD (slower). Install it" >&2
echo "         (apt install nasm, brew install nasm, dnf install nasm) and run cargo clean -p mozjpeg-sys." >&2
