#!/usr/bin/env bash
# with-docker-engine.sh COMMAND...: run COMMAND with a Docker engine answering.
# When none answers, start one for the duration (its own pidfile and log under
# /run/weft-ci; --bridge=none --iptables=false: no docker0, no iptables rules) and
# stop it afterwards, keeping COMMAND's exit status.  tests/deploy needs it.
set -uo pipefail
if docker info >/dev/null 2>&1; then
  exec "$@"
fi
mkdir -p /run/weft-ci
dockerd --exec-opt native.cgroupdriver=cgroupfs --bridge=none --iptables=false \
        --pidfile /run/weft-ci/dockerd.pid >/run/weft-ci/dockerd.log 2>&1 &
dockerd_pid=$!
for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
"$@"
status=$?
kill "$dockerd_pid" 2>/dev/null
wait "$dockerd_pid" 2>/dev/null
exit "$status"
