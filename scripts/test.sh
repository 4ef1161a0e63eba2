#!/usr/bin/env bash
# Sets everything up, starts the services the tests use, then runs the
# linters and the whole test suite.  Extra arguments go to pytest (for
# example: scripts/test.sh -k sftp).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/start-docker.sh
. .venv/bin/activate

ruff check src tests bench
ruff format --check src tests bench
mypy
pytest "$@"
