#!/usr/bin/env bash
# Runs the benchmark from the repository root, with the project's virtual
# environment when there is one.  Arguments go to `python -m bench`, e.g.
#   bench/run.sh --quick
#   bench/run.sh --sftpjail-revision HEAD --update-docs
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
if [ -x .venv/bin/python ]; then
  python=.venv/bin/python
fi
exec "$python" -m bench "$@"
