#!/usr/bin/env bash
# Build the server image sandpool/server:dev without any container registry:
# the same image deploy/server/Dockerfile makes, from Debian packages.
#
# Usage: scripts/build-server-image.sh [--force] [--binary PATH] [--tag TAG]
#   --force        rebuild even when the image is up to date
#   --binary PATH  the sandpool-server to put in (default: cargo build --release
#                  -p sandpool-server on this host, target/release/sandpool-server)
#   --tag TAG      image tag (default: $SANDPOOL_SERVER_IMAGE or sandpool/server:dev)
#
# How: the debootstrap minbase that scripts/build-images.sh caches (its
# --base), unpacked; deploy/server/setup.sh in a chroot (the script the
# Dockerfile's runtime stage runs); the release binary copied in; `docker
# import` with the Dockerfile's own runtime config (every instruction below its
# "image config" line: ENTRYPOINT, USER, HEALTHCHECK, ENV...), so the two
# cannot drift apart.
#
# glibc: the binary is linked on this host against its glibc, and the image's
# root is Debian bookworm like the host. The script does not take that on
# faith: it prints the newest glibc symbol version the binary needs and runs
# the binary inside the unpacked root (`--version`, ldd) before importing, so
# a host with a newer glibc than bookworm's fails here, not at run time.
#
# Idempotent: the image carries a label with a digest of its inputs (binary,
# deploy/server/*, base tarball); an image whose label matches is kept, and
# then the whole run is a no-op cargo build and a docker inspect.
#
# Environment: SANDPOOL_CACHE (default /var/cache/sandpool), as build-images.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DIR=$ROOT/deploy/server
TAG=${SANDPOOL_SERVER_IMAGE:-sandpool/server:dev}
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
FORCE=0 BIN=""
die() { echo "build-server-image: error: $*" >&2; exit 1; }
log() { echo "build-server-image: $*" >&2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --binary) BIN=${2:?--binary needs a path}; shift ;;
    --tag) TAG=${2:?--tag needs a tag}; shift ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1" ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || die "must run as root (chroot, mount)"
docker info >/dev/null 2>&1 || die "docker does not answer; run scripts/engine-up.sh first"
T0=$(date +%s)

# ---------------------------------------------------------------- inputs
if [ -z "$BIN" ]; then
  (cd "$ROOT" && cargo build --release -p sandpool-server)
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/sandpool-server
fi
[ -x "$BIN" ] || die "no executable at $BIN"
BASE_TAR=$("$ROOT/scripts/build-images.sh" --base | tail -n 1)
[ -f "$BASE_TAR" ] || die "scripts/build-images.sh --base gave no tarball"
KEY=$( { sha256sum "$BIN" | cut -d' ' -f1
         (cd "$DIR" && sha256sum Dockerfile setup.sh healthcheck.sh sandpool.toml)
         sha256sum "$0" | cut -d' ' -f1
         basename "$BASE_TAR"; stat -c %Y "$BASE_TAR"; } | sha256sum | cut -c1-32)
if [ "$FORCE" = 0 ] && [ "$(docker image inspect -f '{{index .Config.Labels "org.sandpool.build-key"}}' "$TAG" 2>/dev/null)" = "$KEY" ]; then
  echo "$TAG: up to date"
  exit 0
fi

# The Dockerfile's runtime config: instructions after its "image config" line,
# continuation lines joined, comments dropped.
CHANGES=()
while IFS= read -r instr; do
  case ${instr%% *} in
    ENV|LABEL|USER|WORKDIR|EXPOSE|HEALTHCHECK|ENTRYPOINT|CMD) CHANGES+=(--change "$instr") ;;
    *) die "deploy/server/Dockerfile: '${instr%% *}' after the image config line cannot be applied by docker import" ;;
  esac
done < <(awk '/^# ---- image config/ { on = 1; next }
              !on || /^[ \t]*#/ || /^[ \t]*$/ { next }
              { line = line $0; if (sub(/\\[ \t]*$/, " ", line)) next
                gsub(/[ \t]+/, " ", line); print line; line = "" }' "$DIR/Dockerfile")
[ ${#CHANGES[@]} -ge 8 ] || die "deploy/server/Dockerfile: no image config found"

# ---------------------------------------------------------------- the root
CACHE=${SANDPOOL_CACHE:-/var/cache/sandpool}
mkdir -p "$CACHE/debs"
exec 9>"$CACHE/server.lock"
flock 9
WORK=$(mktemp -d "$CACHE/work-server.XXXXXX")   # same filesystem as debs/: hard links
r=$WORK/root
cleanup() {
  local rc=$? m
  for m in $(findmnt -rn -o TARGET | grep -F "$WORK/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
in_root() { chroot "$r" /usr/bin/env -i PATH="$IMAGE_PATH" HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

mkdir -p "$r"
tar -C "$r" -xf "$BASE_TAR"
find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -l -t "$r/var/cache/apt/archives/" {} + 2>/dev/null \
  || find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -t "$r/var/cache/apt/archives/" {} +
cp /etc/resolv.conf "$r/etc/resolv.conf"
mkdir -p "$r/tmp/sandpool-server-setup"
cp "$DIR/setup.sh" "$DIR/healthcheck.sh" "$DIR/sandpool.toml" "$r/tmp/sandpool-server-setup/"
mount -t proc proc "$r/proc"
in_root SANDPOOL_KEEP_DEBS=1 sh /tmp/sandpool-server-setup/setup.sh /tmp/sandpool-server-setup >"$WORK/setup.log" 2>&1 \
  || { tail -n 30 "$WORK/setup.log" >&2; die "deploy/server/setup.sh failed"; }
find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -l -n -t "$CACHE/debs/" {} + 2>/dev/null || true
install -m 0755 "$BIN" "$r/usr/local/bin/sandpool-server"

# glibc: what the binary needs, and proof that the root's loader satisfies it.
need=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
# sed, not head: head stops reading after one line, ldd then dies of SIGPIPE
# on its next one, and with pipefail the whole script ends (status 141).
have=$(in_root ldd --version | sed -n 1p)
in_root ldd /usr/local/bin/sandpool-server | grep -q 'not found' && die "libraries missing in the image: $(in_root ldd /usr/local/bin/sandpool-server)"
version=$(in_root /usr/local/bin/sandpool-server --version 2>&1) \
  || die "the binary does not run in the image's root (needs $need; the root has $have): $version"
log "$version: needs $need, the root has ${have##* } ($have)"
umount "$r/proc"

# Strip what an image does not need (as build-images.sh does).
rm -rf "$r/tmp/sandpool-server-setup" "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian \
       "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
       "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "$r/var/log" -type f -delete 2>/dev/null || true
: >"$r/etc/resolv.conf"

# ---------------------------------------------------------------- import, check
old_id=$(docker image inspect -f '{{.Id}}' "$TAG" 2>/dev/null || true)
tar -C "$r" --numeric-owner --format=posix --pax-option=delete=atime,delete=ctime \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - . |
  docker import "${CHANGES[@]}" --change "LABEL org.sandpool.build-key=$KEY" \
    --message "sandpool server image: debootstrap bookworm + deploy/server/setup.sh + $version" \
    - "$TAG" >/dev/null
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$TAG")" ]; then
  docker rmi "$old_id" >/dev/null 2>&1 || true
fi

# As the image runs: its entrypoint, its user, its default config, its probe.
out=$(docker run --rm --network none "$TAG" --version) || die "$TAG --version failed: $out"
[ "$(docker run --rm --network none --entrypoint id "$TAG" -u)" = 10001 ] || die "$TAG does not run as uid 10001"
docker run --rm --network none "$TAG" --check-config >/dev/null || die "$TAG: its default config does not check"
docker run --rm --network none --entrypoint sh "$TAG" -c 'command -v curl && test -x /usr/local/bin/sandpool-healthcheck' >/dev/null \
  || die "$TAG: the health check is missing"
size=$(docker image inspect -f '{{.Size}}' "$TAG" | awk '{ printf "%.0fMB", $1 / 1e6 }')
echo "$TAG: built in $(( $(date +%s) - T0 ))s ($out, $size)"
