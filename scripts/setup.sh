#!/usr/bin/env bash
# Installs everything sftpjail and its tests need on a Debian 12 machine:
# the Debian packages below and a virtual environment in .venv holding the
# package itself (editable) with its test tools.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, one reason each:
#   openssh-client   the real sftp/ssh/scp clients the tests drive
#   openssh-server   sshd, the baseline the benchmark compares against
#   nftables iptables conntrack   the host firewall backends and flushing
#   iproute2         ip netns and veth for the network lab
#   libseccomp2      the filter compiler behind the seccomp layer
#   python3-venv     the virtual environment
#   postgresql       the shared store of replicas; tests start throwaway clusters
#   debootstrap      the Debian base image scripts/build-image.sh makes without a registry
APT_PACKAGES=(
  openssh-client openssh-server nftables iptables conntrack iproute2
  libseccomp2 python3-venv postgresql debootstrap
)

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
quiet_pip install -q -e ".[test]"
