#!/usr/bin/env bash
# The server image, run the way deploy/server/Dockerfile documents it: in
# Docker, non-root, read-only, no capabilities, driving the host's engine
# through the mounted socket (its group added to the server's user), its
# config mounted, bearer tokens from the environment, listening on 0.0.0.0
# inside the container with the port published on the host's loopback.
#
# Checks, from a client on the host (the `sandpool` CLI):
#   - without tokens the image refuses to listen beyond loopback;
#   - Docker's HEALTHCHECK (the image's gRPC probe) turns healthy, and the
#     probe fails against a port nothing serves;
#   - a call without the token is refused; Acquire + Run + Release with it
#     works (`sandpool run`), as the sandbox user;
#   - the sandbox containers are siblings on the host's engine, labelled
#     sandpool.server=<id> and sandpool.pool=python;
#   - the metrics listener answers on the published port;
#   - `docker stop` (SIGTERM) ends the server with exit 0 and no container
#     of its id remains; then the server container is removed;
#   - with TLS on the listener, the image's health check answers over TLS
#     (what the ha overlay's exec probes rely on).
# Leaves nothing behind, also when it fails.
#
# Usage: tests/deploy/server-image.sh   (after scripts/build-server-image.sh)
# Environment: SANDPOOL_SERVER_IMAGE (default sandpool/server:dev).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
TAG=${SANDPOOL_SERVER_IMAGE:-sandpool/server:dev}
T0=$(date +%s)
ID="deploy-test-$$-$RANDOM"
NAME="sandpool-$ID"
SOCK=/var/run/docker.sock
TMP=$(mktemp -d /tmp/sandpool-deploy-test.XXXXXX)
fail() {
  echo "server-image: FAIL: $*" >&2
  if docker inspect "$NAME" >/dev/null 2>&1; then
    echo "--- server log (last 40 lines):" >&2
    docker logs --tail 40 "$NAME" >&2 2>&1 || true
  fi
  exit 1
}
cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  local left
  left=$(docker ps -aq --filter "label=sandpool.server=$ID")
  # shellcheck disable=SC2086
  [ -z "$left" ] || docker rm -f $left >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

docker image inspect "$TAG" >/dev/null 2>&1 || fail "no image $TAG: run scripts/build-server-image.sh"
CLI=target/debug/sandpool
[ -x "$CLI" ] || cargo build -p sandpool-client --bin sandpool
[ -S "$SOCK" ] || fail "no Docker socket at $SOCK"
SOCK_GID=$(stat -c %g "$SOCK")

# 1. The image's own default: 0.0.0.0 without authentication is refused.
if out=$(timeout 30 docker run --rm --network none "$TAG" 2>&1); then
  fail "the image started without authentication on 0.0.0.0: $out"
fi
grep -q "refusing to listen on 0.0.0.0:50051 without authentication" <<<"$out" \
  || fail "unexpected refusal without tokens: $out"

# 2. The server, configured as a deployment would.
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$TMP/sandpool.toml" <<'EOF'
listen = "0.0.0.0:50051"
metrics_listen = "0.0.0.0:9464"
shutdown_grace = 5.0

[[pools]]
name = "python"
language = "python"
min_pool_size = 1
max_pool_size = 2
EOF
chmod 0644 "$TMP/sandpool.toml"
docker run -d --name "$NAME" \
  -p 127.0.0.1::50051 -p 127.0.0.1::9464 \
  -v "$SOCK:/var/run/docker.sock" --group-add "$SOCK_GID" \
  -v "$TMP/sandpool.toml:/etc/sandpool/sandpool.toml:ro" \
  -e SANDPOOL_TOKENS="$TOKEN" -e SANDPOOL_SERVER_ID="$ID" \
  --read-only --cap-drop ALL --security-opt no-new-privileges --stop-timeout 30 \
  "$TAG" >/dev/null || fail "docker run of $TAG failed"
port_of() { docker port "$NAME" "$1/tcp" | head -n 1 | sed 's/.*://'; }
GRPC=127.0.0.1:$(port_of 50051)
METRICS=127.0.0.1:$(port_of 9464)

t=$(date +%s)
for _ in $(seq 1 360); do
  state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$NAME")
  case $state in
    "running healthy") break ;;
    running*) sleep 0.5 ;;
    *) fail "the server container is $state" ;;
  esac
done
[ "$state" = "running healthy" ] || fail "not healthy after 180s: $state"
echo "server-image: healthy after $(( $(date +%s) - t ))s (Docker HEALTHCHECK, gRPC health over curl)"
if docker exec "$NAME" sandpool-healthcheck 127.0.0.1:1 >/dev/null 2>&1; then
  fail "the health check passed against a port nothing serves"
fi
[ "$(docker exec "$NAME" id -u)" = 10001 ] || fail "the server does not run as uid 10001"

# 3. A client on the host.
if out=$("$CLI" --addr "http://$GRPC" pools 2>&1); then fail "a call without the token was served: $out"; fi
grep -qi "unauthenticated\|token" <<<"$out" || fail "unexpected error without a token: $out"
export SANDPOOL_TOKEN=$TOKEN
out=$("$CLI" --addr "http://$GRPC" run "print(6 * 7)") || fail "sandpool run failed: $out"
[ "$out" = 42 ] || fail "sandpool run printed '$out', not 42"
out=$("$CLI" --addr "http://$GRPC" run --shell 'id -u') || fail "sandpool run --shell failed: $out"
[ "$out" = 1000 ] || fail "code ran as uid '$out', not the sandbox user 1000"

# 4. Sandbox containers are siblings on the host's engine, with our labels.
siblings=$(docker ps -aq --no-trunc --filter "label=sandpool.server=$ID")
[ -n "$siblings" ] || fail "no container labelled sandpool.server=$ID on the host's engine"
server_cid=$(docker inspect -f '{{.Id}}' "$NAME")
sandboxes=0
for cid in $siblings; do
  [ "$cid" != "$server_cid" ] || fail "the server container carries its own sandbox label"
  read -r marker pool image < <(docker inspect \
    -f '{{or (index .Config.Labels "sandpool.marker") "-"}} {{or (index .Config.Labels "sandpool.pool") "-"}} {{.Config.Image}}' "$cid")
  # A server instance's liveness marker (when the server has one) is ours too.
  [ "$marker" != true ] || continue
  [ "$pool" = python ] || fail "container ${cid:0:12} has sandpool.pool='$pool'"
  [ "$image" = sandpool/python:bookworm ] || fail "container ${cid:0:12} runs $image"
  sandboxes=$(( sandboxes + 1 ))
done
[ "$sandboxes" -ge 1 ] || fail "no sandbox container of pool python labelled sandpool.server=$ID"
echo "server-image: $sandboxes sandbox container(s) of $ID on the host engine, siblings of the server"

# 5. Metrics, set explicitly to 0.0.0.0:9464 in the container.
curl -sf "http://$METRICS/metrics" | grep -q '^sandpool_' || fail "no sandpool_ metrics at $METRICS"

# 6. docker stop: SIGTERM, graceful shutdown, nothing of ours left.
t=$(date +%s)
docker stop "$NAME" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "the server exited with $code after SIGTERM"
left=$(docker ps -aq --filter "label=sandpool.server=$ID" | wc -l)
[ "$left" = 0 ] || fail "$left container(s) labelled sandpool.server=$ID left after docker stop"
echo "server-image: docker stop took $(( $(date +%s) - t ))s, exit 0, no sandbox container left"
docker rm "$NAME" >/dev/null
docker inspect "$NAME" >/dev/null 2>&1 && fail "the server container is still there"

# 7. With TLS on the listener (as overlays/ha runs it), the same health check
#    finds the server over TLS: what that overlay's exec probes rely on.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=sandpool -addext subjectAltName=DNS:sandpool,IP:127.0.0.1 \
  -keyout "$TMP/tls.key" -out "$TMP/tls.crt" 2>/dev/null || fail "openssl could not make a test certificate"
chmod 0644 "$TMP/tls.key" "$TMP/tls.crt"
printf 'listen = "0.0.0.0:50051"\n' >"$TMP/tls.toml"; chmod 0644 "$TMP/tls.toml"
docker run -d --name "$NAME" --network none \
  -v "$TMP/tls.toml:/etc/sandpool/sandpool.toml:ro" \
  -v "$TMP/tls.crt:/etc/sandpool-tls/tls.crt:ro" -v "$TMP/tls.key:/etc/sandpool-tls/tls.key:ro" \
  -e SANDPOOL_TLS_CERT=/etc/sandpool-tls/tls.crt -e SANDPOOL_TLS_KEY=/etc/sandpool-tls/tls.key \
  -e SANDPOOL_TOKENS="$TOKEN" -e SANDPOOL_SERVER_ID="$ID" \
  --read-only --cap-drop ALL --security-opt no-new-privileges "$TAG" >/dev/null || fail "docker run with TLS failed"
for _ in $(seq 1 60); do
  if probe=$(docker exec "$NAME" sandpool-healthcheck 2>&1); then break; fi
  sleep 0.5
done
[ "$probe" = "SERVING (https://127.0.0.1:50051)" ] || fail "the health check over TLS said: $probe"
docker stop "$NAME" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$NAME")" = 0 ] || fail "the TLS server exited with an error"
docker rm "$NAME" >/dev/null
echo "server-image: health check over TLS: $probe"

echo "server-image: ok in $(( $(date +%s) - T0 ))s (refusal without auth, health, auth, run, siblings, metrics, stop, TLS health)"
