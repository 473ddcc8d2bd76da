#!/usr/bin/env bash
# Make sure a container engine is installed and answering. Idempotent.
#
# Usage: scripts/engine-up.sh [--podman]
#   (default)  install docker.io + debootstrap + runsc when missing, start
#              dockerd (log: /tmp/sandpool-dockerd.log) when `docker info`
#              fails, and wait until it answers; register gVisor's runsc as
#              the docker runtimes "runsc" and "isolated"
#              (/etc/docker/daemon.json).
#   --podman   also install podman + catatonit, write
#              /etc/containers/containers.conf and start
#              `podman system service` on unix:///run/podman/podman.sock
#              (log: /tmp/sandpool-podman.log).
# Environment: SANDPOOL_ENGINE_TIMEOUT seconds to wait for an engine (60).
set -euo pipefail

PODMAN=0
for a in "$@"; do
  case "$a" in
    --podman) PODMAN=1 ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "engine-up: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "engine-up: must run as root" >&2; exit 1; }
TIMEOUT=${SANDPOOL_ENGINE_TIMEOUT:-60}
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1

# ------------------------------------------------------------ packages
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v runsc >/dev/null || need+=(runsc)
if [ "$PODMAN" = 1 ]; then
  command -v podman >/dev/null || need+=(podman)
  [ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "engine-up: installing ${need[*]}"
  # Keep package scripts from starting daemons (no init system here); this
  # script starts what it needs itself.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    own_policy=1; trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

wait_for() {  # wait_for NAME LOG CMD...: poll CMD until it succeeds or TIMEOUT
  local name=$1 logf=$2 deadline=$(( $(date +%s) + TIMEOUT )); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "engine-up: $name did not answer within ${TIMEOUT}s; last lines of $logf:" >&2
      tail -n 40 "$logf" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}

# ------------------------------------------------------------ runsc
# gVisor as the docker runtime "runsc", for pools with oci_runtime = "runsc".
# --network=none: Debian's runsc (2022) cannot use the network namespace
# Docker gives a container; with its own loopback only, such pools run with
# network "none" (and install libraries from package files only). The rest of
# daemon.json is kept. dockerd reloads its runtimes on SIGHUP, so a change
# never restarts it (which would kill every running container).
# The same binary is registered again as "isolated": operators name their
# runtimes as they like, and the tests check that a pool finds gVisor by the
# binary its engine runs, not by the runtime's name.
register_runsc() {  # prints "changed" when daemon.json was rewritten
  python3 - "$1" <<'PY'
import json, os, sys
path = sys.argv[1]
try:
    with open(path) as f:
        conf = json.load(f)
except FileNotFoundError:
    conf = {}
want = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}
runtimes = conf.get("runtimes", {})
if runtimes.get("runsc") != want or runtimes.get("isolated") != want:
    conf.setdefault("runtimes", {}).update(runsc=want, isolated=want)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(conf, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print("changed")
PY
}
runsc_changed=$(register_runsc /etc/docker/daemon.json)

# ------------------------------------------------------------ docker
if docker info >/dev/null 2>&1; then
  echo "engine-up: docker already answering"
else
  DLOG=/tmp/sandpool-dockerd.log
  if pgrep -x dockerd >/dev/null; then
    # Starting up, or shutting down (stopping its containers first): wait
    # until it answers or is gone.
    echo "engine-up: dockerd is running but not answering; waiting until it answers or exits"
    wait_for "dockerd (answer or exit)" "$DLOG" sh -c 'docker info || ! pgrep -x dockerd'
  fi
  if ! docker info >/dev/null 2>&1; then
    # A dockerd that was killed leaves its pid files behind, and dockerd
    # refuses to start while the pid they name exists, which after a kill
    # can be any unrelated process that reused it (CI failed on exactly
    # that). No dockerd or containerd runs here now, so the files are stale.
    pgrep -x dockerd >/dev/null || rm -f /var/run/docker.pid
    pgrep -x containerd >/dev/null || rm -f /var/run/docker/containerd/containerd.pid
    # containerd is started by dockerd itself when none runs.
    echo "engine-up: starting dockerd (log: $DLOG)"
    # From /: a daemon keeps its working directory, and one that is deleted
    # later (a test's checkout) breaks it (podman's conmon then fails every
    # container start with "Failed to get working directory").
    (cd / && exec setsid dockerd >>"$DLOG" 2>&1 </dev/null) &
  fi
  wait_for dockerd "$DLOG" docker info
  echo "engine-up: docker answering ($(docker version -f '{{.Server.Version}}'))"
fi
runsc_registered() {
  docker info --format '{{json .Runtimes}}' 2>/dev/null | grep '"runsc"' | grep -q '"isolated"'
}
if [ -n "$runsc_changed" ] || ! runsc_registered; then
  echo "engine-up: registering runsc with dockerd (reload, no restart)"
  kill -HUP "$(cat /var/run/docker.pid)"
  wait_for "dockerd (runsc)" /tmp/sandpool-dockerd.log runsc_registered
fi

# ------------------------------------------------------------ podman
if [ "$PODMAN" = 1 ]; then
  conf=/etc/containers/containers.conf
  want='# written by sandpool scripts/engine-up.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
exit_command_delay = 5'
  if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    mkdir -p /etc/containers
    [ ! -f "$conf" ] || cp "$conf" "$conf.bak-sandpool"
    printf '%s\n' "$want" >"$conf"
  fi
  SOCK=/run/podman/podman.sock
  podman_ok() { curl -sf --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1 \
                || CONTAINER_HOST=unix://$SOCK podman --remote info >/dev/null 2>&1; }
  if podman_ok; then
    echo "engine-up: podman service already answering on $SOCK"
  else
    PLOG=/tmp/sandpool-podman.log
    mkdir -p /run/podman
    echo "engine-up: starting podman system service (log: $PLOG)"
    # From /, as dockerd above.
    (cd / && exec setsid podman system service --time=0 "unix://$SOCK" >>"$PLOG" 2>&1 </dev/null) &
    wait_for "podman service" "$PLOG" podman_ok
    echo "engine-up: podman answering on $SOCK"
  fi
fi
