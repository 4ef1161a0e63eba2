#!/usr/bin/env bash
# Installs what sftpjail needs on a Debian 12 machine: Debian packages and
# a virtual environment in .venv holding the package itself (editable).
# Safe to run again.
#
#   scripts/setup.sh        for the tests and tools as well (scripts/test.sh)
#   scripts/setup.sh run    for running the server only (scripts/demo.sh):
#                           no daemon is installed or started on the side
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=${1:-test}

# Debian packages, one reason each.  To run the server:
#   libseccomp2      the filter compiler behind the seccomp layer
#   python3-venv     the virtual environment
#   openssh-client   sftp, to connect to it
RUN_PACKAGES=(libseccomp2 python3-venv openssh-client)
# For the tests and tools as well:
#   openssh-server   sshd, the baseline the benchmark compares against
#   nftables iptables conntrack   the host firewall backends and flushing
#   iproute2         ip netns and veth for the network lab
#   postgresql       the shared store of replicas; tests start throwaway clusters
#   debootstrap      the Debian base image scripts/build-image.sh makes without a registry
TEST_PACKAGES=(
  openssh-server nftables iptables conntrack iproute2 postgresql debootstrap
)

case $purpose in
  run)
    APT_PACKAGES=("${RUN_PACKAGES[@]}")
    python_package="."
    ;;
  test)
    APT_PACKAGES=("${RUN_PACKAGES[@]}" "${TEST_PACKAGES[@]}")
    python_package=".[test]"
    ;;
  *)
    echo "usage: scripts/setup.sh [run|test]" >&2
    exit 2
    ;;
esac

# EXTRA_APT_PACKAGES, space-separated, adds more (scripts/test.sh does).
read -r -a extra_packages <<< "${EXTRA_APT_PACKAGES:-}"

missing=()
for package in "${APT_PACKAGES[@]}" "${extra_packages[@]}"; do
  [ -n "$package" ] || continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
    || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Workers of a server started as root run as this unprivileged user.
if [ "$(id -u)" = 0 ] && ! getent passwd sftpjail >/dev/null; then
  echo "setup: creating the service user sftpjail"
  useradd --system --no-create-home --shell /usr/sbin/nologin sftpjail
fi

# Debian's own interpreter unless PYTHON names another: it is built with
# profile-guided and link-time optimization, and spends 10-15 % less CPU
# per request on sftpjail's Python than an unoptimized build (a default
# pyenv one, say) that may come first on PATH.  docs/benchmarks.md, "The
# fourth round", has the measurements.
# An existing .venv keeps the interpreter it was made with: remove it to
# switch.
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then
  PYTHON=/usr/bin/python3
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Some machines configure local package folders that may not exist; pip
# warns once per package about each, which buries real problems.
quiet_pip() {
  .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
quiet_pip install -q --upgrade pip
quiet_pip install -q -e "$python_package"
