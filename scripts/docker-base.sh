#!/usr/bin/env bash
# Builds the base image of the fruits container images without pulling anything: a minimal
# Debian bookworm root filesystem made with debootstrap from the Debian mirror, imported with
# `docker import`. Machines that can pull from Docker Hub do not need this: build the images with
# BASE_IMAGE=debian:bookworm-slim (see scripts/docker-build.sh).
#
#   scripts/docker-base.sh            make the image $FRUITS_BASE_IMAGE unless it exists
#   scripts/docker-base.sh --force    make it again (the cached root filesystem is still reused)
#
# The root filesystem is cached as a tarball in $FRUITS_CACHE_DIR/docker/, so a later run on the
# same machine (a CI run, or after `docker system prune`) imports it in seconds instead of running
# debootstrap (about a minute). Nothing depends on the cache: without it the tarball is rebuilt.
# Needs root (debootstrap chroots), and installs debootstrap with apt-get if it is missing.
#
# Settings: FRUITS_BASE_IMAGE (fruits-base:bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

image="${FRUITS_BASE_IMAGE:-fruits-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
# ca-certificates: HTTPS to S3 and other endpoints. Everything else the binaries need (glibc,
# libstdc++ and libgcc for ONNX Runtime, bash for the entrypoints) is in minbase already.
include=ca-certificates
cache="${FRUITS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fruits}/docker"
# The file name carries everything that decides the content, so a change makes a new tarball.
# Bump the revision when the trimming below changes.
revision=1
tarball="${cache}/rootfs-${suite}-minbase-${include//,/-}-r${revision}.tar.gz"

force=false
case "${1:-}" in
  --force) force=true ;;
  "") ;;
  *) echo "usage: docker-base.sh [--force]" >&2; exit 2 ;;
esac

command -v docker >/dev/null || { echo "error: docker not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: cannot reach the Docker engine (docker info fails)" >&2; exit 1; }

if ! ${force} && docker image inspect "${image}" >/dev/null 2>&1; then
  echo "base image ${image}: present"
  exit 0
fi

if [[ ! -s "${tarball}" ]]; then
  [[ "$(id -u)" == 0 ]] || { echo "error: debootstrap needs root: run this script as root (or with sudo)" >&2; exit 1; }
  if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap with apt-get"
    # Quiet unless it fails: the output of a failed install is shown.
    if ! log="$(DEBIAN_FRONTEND=noninteractive apt-get update 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap 2>&1)"; then
      echo "${log}" >&2
      echo "error: cannot install debootstrap with apt-get" >&2
      exit 1
    fi
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"' EXIT
  rootfs="${work}/rootfs"
  echo "debootstrap ${suite} (minbase + ${include}) from ${mirror} (about a minute; once per machine)"
  if ! debootstrap --variant=minbase --include="${include}" "${suite}" "${rootfs}" "${mirror}" >"${work}/debootstrap.log" 2>&1; then
    tail -n 30 "${work}/debootstrap.log" >&2
    [[ -f "${rootfs}/debootstrap/debootstrap.log" ]] && tail -n 30 "${rootfs}/debootstrap/debootstrap.log" >&2
    echo "error: debootstrap failed (above: the end of its log)" >&2
    exit 1
  fi

  # Security and point-release updates, as debian:bookworm-slim carries them; the sources stay
  # in the image so that a derived image can apt-get install.
  security_mirror="${DEBIAN_SECURITY_MIRROR:-${mirror%/debian}/debian-security}"
  cat >"${rootfs}/etc/apt/sources.list" <<EOF
deb ${mirror} ${suite} main
deb ${mirror} ${suite}-updates main
deb ${security_mirror} ${suite}-security main
EOF
  echo "applying ${suite}-updates and ${suite}-security"
  # The host's resolver, for apt inside the chroot; the image gets Docker's at run time.
  cp /etc/resolv.conf "${rootfs}/etc/resolv.conf"
  if ! chroot "${rootfs}" /bin/sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade && apt-get clean' \
    >"${work}/upgrade.log" 2>&1; then
    tail -n 30 "${work}/upgrade.log" >&2
    echo "error: apt-get upgrade inside the new root filesystem failed" >&2
    exit 1
  fi

  # Slim it down as debian:bookworm-slim is: no documentation, manuals or translations, now or
  # in packages installed later, and no package lists or caches.
  cat >"${rootfs}/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "${rootfs}/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "${rootfs}/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${rootfs}"/usr/share/{man,info,locale,lintian}/* \
    "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/var/cache/apt/*.bin "${rootfs}"/var/cache/apt/archives/*.deb \
    "${rootfs}"/var/cache/debconf/*-old "${rootfs}"/var/lib/dpkg/*-old "${rootfs}"/var/log/* \
    "${rootfs}/etc/resolv.conf" "${rootfs}/etc/hostname" "${rootfs}"/tmp/* "${rootfs}"/root/.bash_history
  # Docker writes these at run time; an empty machine-id is what systemd-less images carry.
  : >"${rootfs}/etc/machine-id"
  : >"${rootfs}/etc/resolv.conf"

  mkdir -p "${cache}"
  # Written under a temporary name and renamed, so an interrupted run leaves no half tarball.
  tar --numeric-owner -C "${rootfs}" -czf "${tarball}.part" .
  mv "${tarball}.part" "${tarball}"
  echo "root filesystem cached: ${tarball} ($(du -h "${tarball}" | cut -f1))"
fi

echo "importing ${tarball} as ${image}"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' \
  --message "debootstrap --variant=minbase --include=${include} ${suite}" \
  "${tarball}" "${image}" >/dev/null
echo "base image ${image}: $(docker image inspect -f '{{.Size}}' "${image}" | awk '{printf "%.1f MB", $1 / 1e6}')"
