#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests and prints its URL.
#
#   scripts/start-postgres.sh DIR PORT [LISTEN_ADDRESS]
#
# DIR (created if missing) holds the cluster, its log and its Unix socket;
# the server listens on LISTEN_ADDRESS:PORT (default 127.0.0.1), with
# fsync off: nothing in it needs to survive a crash.  It gets a role and
# a database, both named sftpjail, with a random password for TCP logins
# (scram-sha-256); the superuser "postgres" logs in without a password,
# but only through the Unix socket in DIR.  The last line printed is
#
#   postgresql://sftpjail:PASSWORD@LISTEN_ADDRESS:PORT/sftpjail
#
# Stop it with:  pg_ctl -D DIR/cluster stop -m fast  (as the postgres user
# when started as root).  Run as root, the cluster belongs to the postgres
# user, since PostgreSQL refuses to run as root.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 DIR PORT [LISTEN_ADDRESS]" >&2
  exit 2
fi
dir=$1
port=$2
listen=${3:-127.0.0.1}

# Debian's postgresql package keeps its programs out of PATH, one
# directory per major version; take the newest, else whatever PATH has.
bindir=""
for candidate in /usr/lib/postgresql/*/bin; do
  [ -x "$candidate/initdb" ] && bindir=$candidate
done
if [ -z "$bindir" ]; then
  initdb_path=$(command -v initdb) || {
    echo "start-postgres: initdb not found; install postgresql (scripts/setup.sh)" >&2
    exit 1
  }
  bindir=$(dirname "$initdb_path")
fi

as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

mkdir -p "$dir"
chmod 700 "$dir"
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
  if ! runuser -u postgres -- test -w "$dir"; then
    echo "start-postgres: the postgres user cannot reach $dir; make its parent directories traversable (chmod o+x)" >&2
    exit 1
  fi
fi

password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
as_owner "$bindir/initdb" -D "$dir/cluster" -U postgres --no-locale -E UTF8 \
  --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log"
# initdb only admits loopback over TCP; the network lab connects from its
# own namespaces' addresses.
printf 'host sftpjail sftpjail 0.0.0.0/0 scram-sha-256\n' >>"$dir/cluster/pg_hba.conf"
printf 'host sftpjail sftpjail ::/0 scram-sha-256\n' >>"$dir/cluster/pg_hba.conf"

as_owner "$bindir/pg_ctl" -D "$dir/cluster" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=$listen -c port=$port -c unix_socket_directories=$dir -c fsync=off -c full_page_writes=off" \
  start >/dev/null

as_owner "$bindir/psql" -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres \
  -d postgres <<SQL
CREATE ROLE sftpjail LOGIN PASSWORD '$password';
CREATE DATABASE sftpjail OWNER sftpjail;
SQL

case $listen in
  *:*) host="[$listen]" ;;
  *) host=$listen ;;
esac
echo "postgresql://sftpjail:$password@$host:$port/sftpjail"
