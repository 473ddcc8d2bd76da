#!/usr/bin/env bash
# Build the sandpool sandbox images from Debian packages, without any
# container registry: debootstrap + chroot + `docker import`.
#
# Usage: scripts/build-images.sh [--force] [--jobs N] [--no-test] [--check] [--podman] [--list] [--base] [LANG...]
#   LANG       python node go java cpp rust ruby r bash (default: all; c = cpp,
#              javascript = typescript = node)
#   --force    rebuild even if the image tag already exists
#   --jobs N   build N images at once (default: $SANDPOOL_BUILD_JOBS or 2)
#   --no-test  skip the smoke test that follows each build
#   --list     print "LANG TAG" per image and exit
#   --check    only smoke-test the existing images (build nothing)
#   --podman   also copy the images into podman's store (docker save | podman
#              load) when podman lacks them
#   --base     only make sure the cached minbase tarball exists; print its
#              path on the last line (scripts/build-server-image.sh uses it)
#
# How: debootstrap a minbase ONCE into a cached tarball (keyed by a hash of
# the settings and code that make it), then per language: unpack it, run
# deploy/images/setup.sh LANG in a chroot (the same script the Dockerfiles
# run), strip docs/caches, `docker import` with the image config, smoke-test.
# Downloaded .debs are kept and reused. Images whose tag exists are skipped.
#
# Environment:
#   SANDPOOL_CACHE             cache dir (default /var/cache/sandpool)
#   SANDPOOL_DEBIAN_MIRROR     Debian mirror (default: the one apt uses here)
#   SANDPOOL_SECURITY_MIRROR   security mirror (default: apt's; "none": skip)
#   SANDPOOL_BASE_MAX_AGE_DAYS rebuild the cached minbase after N days (7)
set -euo pipefail

SUITE=bookworm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SETUP=$HERE/../deploy/images/setup.sh
# Slowest first, so that parallel jobs end close together.
ALL_LANGS=(python node go java rust r cpp ruby bash)
# In the shared minbase: /usr/bin/kill, ps, pkill; CA certificates.
BASE_INCLUDE="procps,ca-certificates"
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Per-language image ENV; keep in sync with deploy/images/*/Dockerfile.
#   MPLCONFIGDIR: matplotlib needs a *writable* config/cache dir, else it warns
#     and rescans fonts into a fresh temp dir on every import.
#   CGO_ENABLED=0: no C compiler in the go image (go1.19 would need one for
#     net, os/user...). GOCACHE: std prebuilt for CGO_ENABLED=0; go1.19 uses
#     a read-only cache fine (it just cannot cache the user's packages).
declare -A IMAGE_ENV=(
  [python]="MPLCONFIGDIR=/tmp/.matplotlib"
  [go]="CGO_ENABLED=0 GOCACHE=/usr/share/sandpool/gocache"
)

tag_of() { echo "sandpool/$1:$SUITE"; }
die() { echo "build-images: error: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }
elapsed() { echo $(( $(date +%s) - $1 )); }

FORCE=0 TEST=1 CHECK=0 PODMAN=0 BASE_ONLY=0 JOBS=${SANDPOOL_BUILD_JOBS:-2}
LANGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --no-test) TEST=0 ;;
    --podman) PODMAN=1 ;;
    --check) CHECK=1 ;;
    --base) BASE_ONLY=1 ;;
    --jobs) JOBS=${2:?--jobs needs a number}; shift ;;
    --jobs=*) JOBS=${1#--jobs=} ;;
    --list) for l in "${ALL_LANGS[@]}"; do echo "$l $(tag_of "$l")"; done; exit 0 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1" ;;
    c) LANGS+=(cpp) ;;
    javascript|typescript) LANGS+=(node) ;;
    *) case " ${ALL_LANGS[*]} " in *" $1 "*) LANGS+=("$1") ;;
         *) die "unknown language '$1' (known: ${ALL_LANGS[*]})" ;; esac ;;
  esac
  shift
done
[ ${#LANGS[@]} -gt 0 ] || LANGS=("${ALL_LANGS[@]}")
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die "--jobs wants a positive number"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
[ -r "$SETUP" ] || die "missing $SETUP"
docker info >/dev/null 2>&1 || die "docker does not answer; run scripts/engine-up.sh first"
T0=$(date +%s)

# ---------------------------------------------------------------- smoke tests
# As the server runs them: uid 1000, read-only root, no network, tmpfs /tmp and
# /sandbox. `exec` is needed: docker's --tmpfs default is noexec, and compiled
# programs (c, cpp, go run) execute from there. (The snippets run in the
# container: no expansion here, and bash's echo leaves \n alone.)
# shellcheck disable=SC2016
SMOKE_COMMON='set -e
[ "$(id -u):$(id -g)" = 1000:1000 ]; [ "$(pwd)" = /sandbox ]; [ -d /home/sandbox ]
for c in sh tar kill rm mkdir dd find sleep grep; do command -v $c >/dev/null; done
[ -x /usr/bin/kill ]; grep -q "^name=" /etc/sandpool-image
tar -cf /sandbox/t.tar -C /etc sandpool-image; tar -tf /sandbox/t.tar | grep -q sandpool-image
dd if=/dev/zero of=/sandbox/z bs=1k count=1 2>/dev/null; find /sandbox -name z | grep -q z
rm -f /sandbox/z /sandbox/t.tar; sleep 0
'
# shellcheck disable=SC2016,SC2028
smoke_cmd() {
  case $1 in
    python) echo 'python3 -c "import numpy, pandas, seaborn, matplotlib, matplotlib.pyplot as plt
assert matplotlib.get_backend().lower() == \"agg\", matplotlib.get_backend()
plt.plot(numpy.arange(3)); plt.savefig(\"/sandbox/p.png\"); print(\"hello from python\")"
test -s /sandbox/p.png' ;;
    node) echo 'node -e "console.log(\"hello from node\")"
printf "const n: number = 40 + 2;\ninterface A { x: string }\nconsole.log(\"hello from ts\", n);\n" > a.ts
esbuild --loader=ts --log-level=warning < a.ts > a.js; node a.js | grep -q "hello from ts 42"
command -v npm >/dev/null' ;;
    go) echo 'printf "package main\nimport (\"fmt\"; \"net/http\")\nfunc main() { fmt.Println(\"hello from go\", http.StatusOK) }\n" > hello.go
go run hello.go' ;;
    java) echo 'printf "class Hello { public static void main(String[] a) { System.out.println(\"hello from java\"); } }\n" > Hello.java
java Hello.java' ;;
    cpp) echo 'printf "#include <stdio.h>\nint main(void){puts(\"hello from c\");return 0;}\n" > h.c; gcc -O1 -o h h.c; ./h
printf "#include <iostream>\nint main(){std::cout<<\"hello from c++\"<<std::endl;}\n" > h.cpp; g++ -o hpp h.cpp; ./hpp
printf "#include <bits/stdc++.h>\nint main(){std::cout<<\"pch\"<<std::endl;}\n" > b.cpp
g++ -std=c++17 -O2 -pipe -H -o b b.cpp 2>b.h; grep -q "^! .*stdc++.h.gch" b.h; ./b | grep -q pch' ;;
    rust) echo 'printf "fn main() { println!(\"hello from rust\"); }\n" > h.rs; rustc --edition 2021 -o hr h.rs; ./hr' ;;
    ruby) echo 'ruby -e "puts %q(hello from ruby)"' ;;
    r) echo 'Rscript -e "suppressPackageStartupMessages(library(ggplot2)); p <- ggplot(data.frame(x=1:3, y=1:3), aes(x, y)) + geom_point(); ggsave(\"/sandbox/p.png\", p, width=2, height=2); cat(\"hello from R\n\")"
test -s /sandbox/p.png' ;;
    bash) echo 'bash -c "echo hello from bash \$BASH_VERSION"' ;;
  esac
}
smoke_test() {  # fails on a non-zero exit or on anything written to stderr
  local l=$1 tag errf rc=0; tag=$(tag_of "$l"); errf=$(mktemp)
  docker run --rm --network none --read-only \
    --tmpfs /tmp:exec --tmpfs /sandbox:exec,uid=1000,gid=1000,mode=0755 \
    --user 1000:1000 -e HOME=/home/sandbox "$tag" sh -c "$SMOKE_COMMON$(smoke_cmd "$l")" 2>"$errf" || rc=$?
  if [ "$rc" != 0 ] || [ -s "$errf" ]; then
    echo "smoke test of $tag failed (exit $rc); stderr:" >&2; cat "$errf" >&2; rm -f "$errf"; return 1
  fi
  rm -f "$errf"
}

if [ "$CHECK" = 1 ]; then
  rc=0
  for l in "${LANGS[@]}"; do
    t=$(date +%s)
    if smoke_test "$l" >/dev/null; then echo "$(tag_of "$l"): ok ($(elapsed "$t")s)"; else rc=1; fi
  done
  exit "$rc"
fi

# ---------------------------------------------------------------- what to build
TODO=()
for l in "${LANGS[@]}"; do
  [ "$BASE_ONLY" = 0 ] || break
  case " ${TODO[*]} " in *" $l "*) continue ;; esac
  if [ "$FORCE" = 0 ] && docker image inspect "$(tag_of "$l")" >/dev/null 2>&1; then
    echo "$(tag_of "$l"): exists, skipped (--force rebuilds)"
  else
    TODO+=("$l")
  fi
done
to_podman() {  # copy images that podman lacks from docker (same tags)
  local l tag t
  [ "$PODMAN" = 1 ] || return 0
  command -v podman >/dev/null || die "--podman: podman not found; run scripts/engine-up.sh --podman"
  for l in "${LANGS[@]}"; do
    tag=$(tag_of "$l")
    if [ "$FORCE" = 0 ] && podman image exists "$tag" 2>/dev/null; then continue; fi
    t=$(date +%s)
    docker save "$tag" | podman load -q >/dev/null || die "podman load of $tag failed"
    echo "$tag: loaded into podman in $(elapsed "$t")s"
  done
}
[ ${#TODO[@]} -gt 0 ] || [ "$BASE_ONLY" = 1 ] || { to_podman; exit 0; }
for t in debootstrap chroot tar mount umount findmnt flock; do
  command -v "$t" >/dev/null || die "$t not found; run scripts/engine-up.sh first"
done

# ---------------------------------------------------------------- mirrors
# The mirrors apt uses on this machine (never written into this repo).
# Prints "SUITE URI" for every deb source.
apt_sources() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk 'function flush(  n, i, s) {
           if (types ~ /(^|[ \t])deb([ \t]|$)/ && uri != "") {
             n = split(suites, s, /[ \t]+/); for (i = 1; i <= n; i++) if (s[i] != "") print s[i], uri }
           types = ""; uri = ""; suites = "" }
         /^[ \t]*$/ { flush(); next }
         tolower($1) == "types:"  { types = $0; sub(/^[^:]*:/, "", types) }
         tolower($1) == "uris:"   { uri = $2 }
         tolower($1) == "suites:" { suites = $0; sub(/^[^:]*:/, "", suites) }
         END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }; print $(i+1), $i }' "$f"
  done
}
SRC=$(apt_sources)
MIRROR=${SANDPOOL_DEBIAN_MIRROR:-$(awk -v s="$SUITE" '$1 == s { print $2; exit }' <<<"$SRC")}
SEC_MIRROR=${SANDPOOL_SECURITY_MIRROR:-$(awk -v s="$SUITE-security" '$1 == s { print $2; exit }' <<<"$SRC")}
[ -n "$MIRROR" ] || die "no '$SUITE' source in /etc/apt/sources.list{,.d/}; set SANDPOOL_DEBIAN_MIRROR"
[ "$SEC_MIRROR" != none ] || SEC_MIRROR=""

# ---------------------------------------------------------------- cache, lock, work
CACHE=${SANDPOOL_CACHE:-/var/cache/sandpool}
mkdir -p "$CACHE/debs"
exec 9>"$CACHE/lock"
flock 9   # one build per cache at a time
WORK=$(mktemp -d "$CACHE/work.XXXXXX")   # same filesystem as debs/: hard links
LOGDIR=$WORK/logs; mkdir -p "$LOGDIR"

# Unmount everything below $1 (deepest first), then delete it, never crossing
# into a filesystem that is still mounted.
release_tree() {
  local d=$1 m
  [ -d "$d" ] || return 0
  for m in $(findmnt -rn -o TARGET | grep -F "$d/" | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$d"
}
cleanup() {
  local rc=$? p
  for p in $(jobs -p); do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  release_tree "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- base rootfs
DPKG_CFG='force-unsafe-io
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias'
APT_CFG='APT::Install-Recommends "0";
APT::Install-Suggests "0";
Acquire::Languages "none";
Acquire::Retries "3";
Dpkg::Use-Pty "0";'
SOURCES="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main"
[ -z "$SEC_MIRROR" ] || SOURCES="$SOURCES
deb $SEC_MIRROR $SUITE-security main"

in_root() {
  local r=$1; shift
  chroot "$r" /usr/bin/env -i PATH="$IMAGE_PATH" HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}
# pax format keeps sub-second mtimes: fontconfig's caches check them.
tar_root() { tar -C "$1" --numeric-owner --format=posix --pax-option=delete=atime,delete=ctime \
               --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf - .; }
strip_root() {  # docs, man pages, translations, caches, logs [, apt lists]
  local r=$1 lists=${2:-drop-lists}
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian "$r"/usr/share/linda
  mkdir -p "$r/usr/share/man/man1"
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  [ "$lists" = keep-lists ] || rm -rf "$r"/var/lib/apt/lists/*
  rm -rf "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
         "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
  find "$r/var/log" -type f -delete 2>/dev/null || true
  : >"$r/etc/resolv.conf"
}
build_base() {
  local b=$WORK/base t; t=$(date +%s)
  log "debootstrap $SUITE minbase into $BASE_TAR"
  mkdir -p "$b"
  debootstrap --variant=minbase --include="$BASE_INCLUDE" --cache-dir="$CACHE/debs" \
      "$SUITE" "$b" "$MIRROR" >"$LOGDIR/base.log" 2>&1 \
    || { tail -n 30 "$LOGDIR/base.log" >&2; die "debootstrap failed"; }
  printf '%s\n' "$DPKG_CFG" >"$b/etc/dpkg/dpkg.cfg.d/90sandpool"
  printf '%s\n' "$APT_CFG" >"$b/etc/apt/apt.conf.d/90sandpool"
  printf '%s\n' "$SOURCES" >"$b/etc/apt/sources.list"
  printf '#!/bin/sh\nexit 101\n' >"$b/usr/sbin/policy-rc.d"; chmod 755 "$b/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$b/etc/resolv.conf"
  { in_root "$b" apt-get update -q && in_root "$b" apt-get -y -q upgrade; } >>"$LOGDIR/base.log" 2>&1 \
    || { tail -n 30 "$LOGDIR/base.log" >&2; die "apt-get update/upgrade in the base failed"; }
  strip_root "$b" keep-lists   # apt-get update in each image then only revalidates
  rm -f "$CACHE"/base-"$SUITE"-*.tar
  tar_root "$b" >"$BASE_TAR.tmp" && mv "$BASE_TAR.tmp" "$BASE_TAR"
  release_tree "$b"
  echo "base $SUITE minbase: $(elapsed "$t")s"
}
BASE_KEY=$( { printf '%s\n' "$SUITE" "$BASE_INCLUDE" "$DPKG_CFG" "$APT_CFG" "$SOURCES"
              declare -f in_root tar_root strip_root build_base; } | sha256sum | cut -c1-16)
BASE_TAR=$CACHE/base-$SUITE-$BASE_KEY.tar
if [ -f "$BASE_TAR" ] && [ -n "$(find "$BASE_TAR" -mtime "+${SANDPOOL_BASE_MAX_AGE_DAYS:-7}")" ]; then
  log "cached base is old: rebuilding"; rm -f "$BASE_TAR"
fi
[ -f "$BASE_TAR" ] || build_base
if [ "$BASE_ONLY" = 1 ]; then echo "$BASE_TAR"; exit 0; fi

# ---------------------------------------------------------------- one image
build_one() {
  local l=$1 t r tag tb kv old_id env_changes=()
  t=$(date +%s); tag=$(tag_of "$l"); r=$WORK/$l/root
  mkdir -p "$r"
  tar -C "$r" -xf "$BASE_TAR"
  # Offer every cached .deb to apt (hard links: free), take new ones back after.
  find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -l -t "$r/var/cache/apt/archives/" {} + 2>/dev/null \
    || find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -t "$r/var/cache/apt/archives/" {} +
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  cp "$SETUP" "$r/tmp/sandpool-setup.sh"
  mount -t proc proc "$r/proc"
  mount -t sysfs -o ro sysfs "$r/sys"
  in_root "$r" SANDPOOL_TAG="$tag" SANDPOOL_KEEP_DEBS=1 sh /tmp/sandpool-setup.sh "$l"
  find "$r/var/cache/apt/archives" -maxdepth 1 -name '*.deb' \
    -exec cp -l -n -t "$CACHE/debs/" {} + 2>/dev/null || true
  umount "$r/sys" "$r/proc"
  strip_root "$r"
  for kv in ${IMAGE_ENV[$l]:-}; do env_changes+=(--change "ENV $kv"); done
  old_id=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  tar_root "$r" | docker import \
      --change 'ENV LANG=C.UTF-8' \
      --change "ENV PATH=$IMAGE_PATH" \
      "${env_changes[@]}" \
      --change 'WORKDIR /sandbox' \
      --change 'CMD ["sleep","infinity"]' \
      --change "LABEL org.sandpool.image=$l" \
      --message "sandpool $l image: debootstrap $SUITE + deploy/images/setup.sh" \
      - "$tag" >/dev/null
  # --force: drop the image this one replaced (fails harmlessly while in use).
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  release_tree "$WORK/$l"
  tb=$(elapsed "$t")
  [ "$TEST" = 0 ] || smoke_test "$l"
  echo "TIMING $tag build=${tb}s test=$(( $(elapsed "$t") - tb ))s"
}

# ---------------------------------------------------------------- run the jobs
log "building ${TODO[*]} ($JOBS at a time); logs in $LOGDIR"
declare -A PID_LANG=()
FAILED=()
set -m   # each job gets its own process group: cleanup can stop it whole
reap_one() {
  local pid rc=0 l line size
  wait -n -p pid || rc=$?
  l=${PID_LANG[$pid]}; unset "PID_LANG[$pid]"
  if [ "$rc" = 0 ]; then
    line=$(grep '^TIMING ' "$LOGDIR/$l.log" | tail -n1)
    size=$(docker image inspect -f '{{.Size}}' "$(tag_of "$l")" | awk '{ printf "%.0fMB", $1 / 1e6 }')
    echo "${line#TIMING } size=$size"
  else
    FAILED+=("$l")
    echo "$(tag_of "$l"): FAILED (exit $rc); end of its log:" >&2
    tail -n 25 "$LOGDIR/$l.log" >&2
  fi
}
for l in "${TODO[@]}"; do
  while [ ${#PID_LANG[@]} -ge "$JOBS" ]; do reap_one; done
  ( trap 'release_tree "$WORK/$l"' EXIT; build_one "$l" ) >"$LOGDIR/$l.log" 2>&1 </dev/null &
  PID_LANG[$!]=$l
done
while [ ${#PID_LANG[@]} -gt 0 ]; do reap_one; done
set +m

if [ ${#FAILED[@]} -gt 0 ]; then
  rm -rf "$CACHE/last-failed-logs"; cp -r "$LOGDIR" "$CACHE/last-failed-logs" 2>/dev/null || true
  die "failed: ${FAILED[*]} after $(elapsed "$T0")s (logs: $CACHE/last-failed-logs)"
fi
to_podman
echo "build-images: built ${TODO[*]} in $(elapsed "$T0")s"
