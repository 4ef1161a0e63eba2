#!/usr/bin/env bash
# Builds the sftpjail container image on a machine without an image registry.
#
# Three steps, each skipped when its result already exists:
#   1. a Debian bookworm base image made with debootstrap and `docker import`
#      (Debian mirrors are reachable where registries are not);
#   2. wheels for sftpjail's dependencies, downloaded on the host with pip
#      into deploy/container/wheels/ (the build itself has no network);
#   3. `docker build` of the repository's Dockerfile against that base,
#      installing only from the wheels folder.
# With a registry, plain `docker build -t sftpjail .` does the same from
# python:3.11-slim-bookworm and PyPI.  The image tag is printed last.
#
# Environment: SFTPJAIL_IMAGE (tag, default sftpjail:latest),
# SFTPJAIL_BASE_IMAGE (default sftpjail-base:bookworm), DEBIAN_MIRROR.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${SFTPJAIL_IMAGE:-sftpjail:latest}
BASE_IMAGE=${SFTPJAIL_BASE_IMAGE:-sftpjail-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WHEELS_DIR=deploy/container/wheels
PYTHON=${PYTHON:-python3}

# What the base needs beyond minbase, one reason each:
#   python3 python3-venv  the interpreter and the venv the builder stage makes
#   libseccomp2           the seccomp layer loads it through ctypes
#   nftables              the optional in-container firewall (entrypoint)
BASE_PACKAGES=python3,python3-venv,libseccomp2,nftables

log() {
  echo "build-image: $*" >&2
}

# The debootstrap directory, removed however the script ends.
root=""
trap '[ -z "$root" ] || rm -rf "$root"' EXIT

build_base_image() {
  # The package list is stored as a label, so changing it rebuilds the base.
  local built_with
  built_with=$(docker image inspect --format \
    '{{index .Config.Labels "org.sftpjail.base-packages"}}' "$BASE_IMAGE" 2>/dev/null) \
    || built_with=""
  if [ "$built_with" = "$BASE_PACKAGES" ]; then
    log "base image $BASE_IMAGE exists; reusing it"
    return
  fi
  command -v debootstrap >/dev/null || {
    log "debootstrap is missing; install it with: apt-get install debootstrap"
    exit 1
  }

  root=$(mktemp -d /var/tmp/sftpjail-base.XXXXXX)
  log "debootstrap bookworm into $root (a minute or two)"
  debootstrap --variant=minbase --include="$BASE_PACKAGES" \
    bookworm "$root" "$DEBIAN_MIRROR" >&2

  # Package lists and downloaded .debs only make the image bigger.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
    "$root"/var/cache/apt/archives/*.deb

  log "importing $root as $BASE_IMAGE"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/sh"]' \
    --change "LABEL org.sftpjail.base-packages=$BASE_PACKAGES" \
    - "$BASE_IMAGE" >&2
  rm -rf "$root"
  root=""
}

download_wheels() {
  # The image's Python is 3.11 (bookworm and python:3.11-slim alike); wheels
  # built by another minor version would not install there.
  local version
  version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if [ "$version" != "3.11" ]; then
    log "$PYTHON is Python $version; set PYTHON to a Python 3.11 interpreter"
    exit 1
  fi

  log "collecting wheels into $WHEELS_DIR"
  mkdir -p "$WHEELS_DIR"
  # sftpjail itself is built inside the image from the source tree, which
  # needs its build backend offline as well.
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELS_DIR" . >&2
  "$PYTHON" -m pip download --quiet --dest "$WHEELS_DIR" \
    "setuptools>=68" wheel >&2
}

build_image() {
  log "building $IMAGE from $BASE_IMAGE"
  docker build \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_OPTIONS="--no-index --find-links=/wheels" \
    --tag "$IMAGE" . >&2
}

build_base_image
download_wheels
build_image
echo "$IMAGE"
