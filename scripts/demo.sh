#!/usr/bin/env bash
# Sets everything up, then runs a demo server on 127.0.0.1:2222 with a demo
# user whose password it prints.  Extra arguments go to `sftpjail demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
exec .venv/bin/sftpjail demo "$@"
