#!/bin/sh
# Entry point of the sftpjail image: runs its arguments (by default
# `sftpjail serve`), optionally after fencing in the container's network.
#
# Normal mode: the container starts as the unprivileged sftpjail user with
# no capabilities, and this script only execs its arguments.
#
# Firewall mode (SFTPJAIL_CONTAINER_FIREWALL=1): the container starts as
# root holding exactly NET_ADMIN, SETUID, SETGID and SETPCAP.  The script
# loads container-firewall.nft into the container's own network namespace,
# then empties the capability bounding set, becomes the sftpjail user and
# execs its arguments, so the server never holds a capability.
set -eu

SERVICE_UID=10001
SERVICE_GID=10001
FIREWALL_RULES=/etc/sftpjail/container-firewall.nft

fail() {
	echo "sftpjail-entrypoint: $*" >&2
	exit 1
}

if [ "${SFTPJAIL_CONTAINER_FIREWALL:-0}" != 1 ]; then
	exec "$@"
fi

if [ "$(id -u)" != 0 ]; then
	fail "SFTPJAIL_CONTAINER_FIREWALL=1 needs the container to start as root" \
		"(--user 0:0) with --cap-add NET_ADMIN,SETUID,SETGID,SETPCAP"
fi
nft -f "$FIREWALL_RULES" ||
	fail "cannot load $FIREWALL_RULES; is CAP_NET_ADMIN granted (--cap-add NET_ADMIN)?"
echo "sftpjail-entrypoint: container firewall loaded; dropping privileges" >&2

exec setpriv --reuid="$SERVICE_UID" --regid="$SERVICE_GID" --clear-groups \
	--inh-caps=-all --bounding-set=-all -- "$@"
