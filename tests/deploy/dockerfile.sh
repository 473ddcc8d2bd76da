#!/usr/bin/env bash
# Opt-in (about 10 minutes on 2 cores: a release build inside docker build):
# builds deploy/server/Dockerfile itself, without a registry, and runs
# tests/deploy/server-image.sh against the result.
#
# The Dockerfile's two base images are replaced by local stand-ins (its
# RUST_IMAGE and BASE_IMAGE build arguments): for debian:bookworm-slim the
# debootstrap minbase that scripts/build-images.sh caches; for
# rust:1.95-bookworm that minbase with gcc, the host's Rust toolchain (rustc
# 1.89 or newer, as the workspace wants) and the host's CA certificates (cargo
# fetches crates during the build). The context is `git archive HEAD`: what
# is committed. Then the image config is compared with sandpool/server:dev
# from scripts/build-server-image.sh. Removes every image it made.
#
# Usage: tests/deploy/dockerfile.sh   (as root; not part of scripts/test.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
T0=$(date +%s)
P=sandpool-dockerfile-test-$$
RUST_TAG=$P/rust:bookworm BASE_TAG=$P/debian:bookworm-slim TAG=$P/server:dockerfile
fail() { echo "dockerfile: FAIL: $*" >&2; exit 1; }
WORK=""
cleanup() {
  local ids id base
  [ -z "$WORK" ] || rm -rf --one-file-system "$WORK"
  # The build's stopped containers and untagged images (the build stage's
  # result) derive from the stand-ins: ours to remove, nobody else's.
  for base in "$RUST_TAG" "$BASE_TAG"; do
    base=$(docker image inspect -f '{{.Id}}' "$base" 2>/dev/null) || continue
    ids=$(docker ps -aq --filter "ancestor=$base" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1 || true
    for id in $(docker images -q --no-trunc --filter dangling=true); do
      if docker history -q --no-trunc "$id" 2>/dev/null | grep -qx "$base"; then
        docker rmi -f "$id" >/dev/null 2>&1 || true
      fi
    done
  done
  docker rmi -f "$TAG" "$RUST_TAG" "$BASE_TAG" >/dev/null 2>&1 || true
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || fail "must run as root (chroot)"
TOOLCHAIN=$(rustc --print sysroot)
BASE_TAR=$(scripts/build-images.sh --base | tail -n 1)
docker import --change 'CMD ["bash"]' "$BASE_TAR" "$BASE_TAG" >/dev/null

CACHE=${SANDPOOL_CACHE:-/var/cache/sandpool}
WORK=$(mktemp -d "$CACHE/work-dockerfile.XXXXXX")
r=$WORK/root
mkdir -p "$r"
tar -C "$r" -xf "$BASE_TAR"
find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -l -t "$r/var/cache/apt/archives/" {} + 2>/dev/null || true
cp /etc/resolv.conf "$r/etc/resolv.conf"
chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends gcc libc6-dev >"$WORK/apt.log" 2>&1 \
  || { tail -n 20 "$WORK/apt.log" >&2; fail "gcc for the rust stand-in"; }
rm -f "$r"/var/cache/apt/archives/*.deb
cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$r/usr/local/rust" "$r/usr/local/cargo"
tar -C "$TOOLCHAIN" --exclude=./share/doc -cf - . | tar -C "$r/usr/local/rust" -xf -
tar -C "$r" --numeric-owner -cf - . | docker import \
  --change 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' - "$RUST_TAG" >/dev/null
rm -rf --one-file-system "$WORK"; WORK=""
echo "dockerfile: stand-ins ready in $(( $(date +%s) - T0 ))s; docker build (release build inside)"

git archive HEAD | docker build -q -f deploy/server/Dockerfile --force-rm \
  --build-arg RUST_IMAGE="$RUST_TAG" --build-arg BASE_IMAGE="$BASE_TAG" -t "$TAG" - >/dev/null \
  || fail "docker build of deploy/server/Dockerfile"

cfg() { docker image inspect "$1" --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Healthcheck}} {{json .Config.ExposedPorts}} {{.Config.WorkingDir}}'; }
if docker image inspect sandpool/server:dev >/dev/null 2>&1; then
  [ "$(cfg "$TAG")" = "$(cfg sandpool/server:dev)" ] \
    || fail "image config differs from sandpool/server:dev:"$'\n'"$(cfg "$TAG")"$'\n'"$(cfg sandpool/server:dev)"
fi
SANDPOOL_SERVER_IMAGE=$TAG tests/deploy/server-image.sh
echo "dockerfile: ok in $(( $(date +%s) - T0 ))s (deploy/server/Dockerfile builds; its image passes server-image.sh)"
