#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs docker.io from Debian when
# the docker command or dockerd is missing, starts dockerd in the background
# when nothing answers `docker info`, and waits up to 60 s for it.  Also
# installs docker-compose when no compose is there, so the compose test
# runs too (best effort: the engine matters, compose is optional).
# Used by CI before the docker-marked tests; safe to run again.
set -euo pipefail

LOG=${DOCKERD_LOG:-/var/log/sftpjail-dockerd.log}
WAIT_SECONDS=60

log() {
  echo "start-docker: $*" >&2
}

if ! command -v docker >/dev/null || ! command -v dockerd >/dev/null; then
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi

if ! command -v docker-compose >/dev/null && ! docker compose version >/dev/null 2>&1
then
  log "installing docker-compose"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; } \
    || log "docker-compose is not available; going on without it"
fi

if docker info >/dev/null 2>&1; then
  log "Docker engine is running"
  exit 0
fi

# A dockerd may already be starting (another job, a service manager);
# only start one when no pid file names a live process.
if [ -s /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  log "dockerd is starting (pid $(cat /var/run/docker.pid)); waiting"
else
  log "starting dockerd in the background; log in $LOG"
  nohup dockerd >"$LOG" 2>&1 &
fi

for _ in $(seq "$WAIT_SECONDS"); do
  if docker info >/dev/null 2>&1; then
    log "Docker engine is running"
    exit 0
  fi
  sleep 1
done
log "dockerd did not answer within $WAIT_SECONDS s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
