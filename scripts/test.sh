#!/usr/bin/env bash
# Sets everything up, starts the services the tests use, then runs the
# linters and the whole test suite.  Extra arguments go to pytest (for
# example: scripts/test.sh -k sftp).
set -euo pipefail
cd "$(dirname "$0")/.."

# Test-only Debian packages, one reason each (tests/test_clients.py):
#   curl                       an SFTP client built on libssh2
#   openjdk-17-jdk-headless libjsch-java   JSch, the Java SSH library
#   golang-go golang-github-pkg-sftp-dev   Go's pkg/sftp, built offline
#   putty-tools                psftp, the SFTP engine of FileZilla and WinSCP
EXTRA_APT_PACKAGES="curl openjdk-17-jdk-headless libjsch-java golang-go \
golang-github-pkg-sftp-dev putty-tools" \
  scripts/setup.sh
scripts/start-docker.sh
. .venv/bin/activate

ruff check src tests bench
ruff format --check src tests bench
mypy
pytest "$@"
