#!/usr/bin/env bash
# Sets up what the server needs, then runs a demo server on 127.0.0.1:2222
# with a demo user whose password it prints.  Extra arguments go to
# `sftpjail demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh run
exec .venv/bin/sftpjail demo "$@"
