#!/usr/bin/env bash
# Builds a copy of sftpjail's src/ at a revision with some of the variants
# in this directory applied inside every worker, for an A/B run:
#   bench/variants/build.sh HEAD /var/tmp/all no_ignore lean_chacha
#   python -m bench --sftpjail-source /var/tmp/all/src --only transfers
# Each variant becomes sftpjail/_variant_NAME.py, imported by worker.py, so
# the zygote applies it once before it forks any worker.
set -euo pipefail
revision=$1 destination=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$destination"
git -C "$here/../.." archive "$revision" src | tar -x -C "$destination"
for name in "$@"; do
  cp "$here/$name.py" "$destination/src/sftpjail/_variant_$name.py"
  echo "import sftpjail._variant_$name  # noqa: E402,F401" \
    >> "$destination/src/sftpjail/worker.py"
done
chmod -R a+rX "$destination"
