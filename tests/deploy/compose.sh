#!/usr/bin/env bash
# deploy/compose/compose.yaml, up for real: `docker-compose up` (Debian's
# docker-compose, or the `docker compose` plugin when the engine has it) with
# the server image, the file's own config and socket mount, a token from the
# environment, ports published on random loopback ports (SANDPOOL_PUBLISH,
# SANDPOOL_METRICS_PUBLISH) and a server id of its own; then the image's
# health check turns healthy, a client on the host runs code with the token,
# metrics answer, and `down` leaves no container of that id.
#
# Usage: tests/deploy/compose.sh   (after scripts/build-server-image.sh; it
# installs docker-compose with apt when missing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
T0=$(date +%s)
FILE=deploy/compose/compose.yaml
PROJECT="sandpool-compose-test-$$"
export SANDPOOL_SERVER_ID=$PROJECT
export SANDPOOL_TOKENS; SANDPOOL_TOKENS=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export DOCKER_GID; DOCKER_GID=$(stat -c %g /var/run/docker.sock)
export SANDPOOL_PUBLISH=127.0.0.1:0 SANDPOOL_METRICS_PUBLISH=127.0.0.1:0
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  if ! command -v docker-compose >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose >/dev/null
  fi
  COMPOSE=(docker-compose)
fi
dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$FILE" "$@"; }
fail() {
  echo "compose: FAIL: $*" >&2
  dc logs --tail 30 >&2 2>&1 || true
  exit 1
}
cleanup() {
  dc down --timeout 40 >/dev/null 2>&1 || true
  local left
  left=$(docker ps -aq --filter "label=sandpool.server=$PROJECT")
  # shellcheck disable=SC2086
  [ -z "$left" ] || docker rm -f $left >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker image inspect "${SANDPOOL_SERVER_IMAGE:-sandpool/server:dev}" >/dev/null 2>&1 \
  || fail "no server image: run scripts/build-server-image.sh"
CLI=target/debug/sandpool
[ -x "$CLI" ] || cargo build -p sandpool-client --bin sandpool

dc up -d --no-build >/dev/null 2>&1 || fail "${COMPOSE[*]} up failed"
cid=$(dc ps -q server)
[ -n "$cid" ] || fail "no server container"
for _ in $(seq 1 360); do
  state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$cid")
  case $state in
    "running healthy") break ;;
    running*) sleep 0.5 ;;
    *) fail "the server container is $state" ;;
  esac
done
[ "$state" = "running healthy" ] || fail "not healthy after 180s: $state"
port() { docker port "$cid" "$1/tcp" | head -n 1 | sed 's/.*://'; }
out=$(SANDPOOL_TOKEN=$SANDPOOL_TOKENS "$CLI" --addr "http://127.0.0.1:$(port 50051)" run "print(6 * 7)") \
  || fail "sandpool run through compose failed: $out"
[ "$out" = 42 ] || fail "sandpool run printed '$out'"
curl -sf "http://127.0.0.1:$(port 9464)/metrics" | grep -q '^sandpool_pool_containers' || fail "no metrics"
n=$(docker ps -q --filter "label=sandpool.server=$PROJECT" --filter "label=sandpool.pool=python" | wc -l)
[ "$n" -ge 1 ] || fail "no sandbox container labelled sandpool.server=$PROJECT"

dc down --timeout 40 >/dev/null 2>&1 || fail "${COMPOSE[*]} down failed"
left=$(docker ps -aq --filter "label=sandpool.server=$PROJECT" | wc -l)
[ "$left" = 0 ] || fail "$left container(s) of $PROJECT left after down"
echo "compose: ok in $(( $(date +%s) - T0 ))s (${COMPOSE[*]} up, healthy, run with a token, metrics, $n sandbox container(s), down clean)"
