#!/bin/sh
# Turn a Debian bookworm root into the sandpool server's runtime image.
# Shared by deploy/server/Dockerfile (FROM debian:bookworm-slim) and
# scripts/build-server-image.sh (the debootstrap minbase of
# scripts/build-images.sh, in a chroot), so both produce the same image.
# Run as root inside the target root:
#
#   sh setup.sh DIR     DIR holds healthcheck.sh and sandpool.toml (this folder)
#
# Env: SANDPOOL_KEEP_DEBS=1 keeps downloaded .debs (the offline build reuses them).
#
# What the image has: user and group sandpool 10001:10001 (no home, no shell);
# /etc/sandpool/sandpool.toml, the default configuration; the gRPC health
# check /usr/local/bin/sandpool-healthcheck (curl speaks HTTP/2: the only
# package added to the base, with ca-certificates). The binary
# /usr/local/bin/sandpool-server and the image config (ENTRYPOINT, USER,
# HEALTHCHECK, ENV) are set by the caller.
set -eu
dir=${1:?usage: setup.sh DIR}
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

apt-get update -q
apt-get install -y -q --no-install-recommends ca-certificates curl
[ "${SANDPOOL_KEEP_DEBS:-0}" = 1 ] || apt-get clean
rm -rf /var/lib/apt/lists/*

# A fixed numeric id: Kubernetes' runAsNonRoot can check it, and the engine
# socket's group is added at run time (docker run --group-add).
groupadd --system --gid 10001 sandpool
useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
  --shell /usr/sbin/nologin sandpool

install -d -m 0755 /etc/sandpool
install -m 0644 "$dir/sandpool.toml" /etc/sandpool/sandpool.toml
install -m 0755 "$dir/healthcheck.sh" /usr/local/bin/sandpool-healthcheck
