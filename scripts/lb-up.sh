#!/usr/bin/env bash
# Make sure nginx is installed, for the scale-out test's gRPC load balancer
# (tests/tests/scale_out.rs runs its own nginx, with a config and prefix of
# its own, as a child). Idempotent; instant when nginx is already there.
#
# Usage: scripts/lb-up.sh
#   Installs Debian's nginx-light when `nginx` is missing, without starting
#   it (no service, no default site listening), and checks that it has what
#   the test needs: HTTP/2 (`http2` on a plaintext listener) and grpc_pass.
set -euo pipefail

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "lb-up: unknown argument $1" >&2; exit 2 ;;
esac

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  [ "$(id -u)" = 0 ] || { echo "lb-up: nginx is missing; run as root to install it" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1
  echo "lb-up: installing nginx-light"
  # The package's scripts would start nginx on port 80: keep them from
  # starting anything (the test starts its own).
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    own_policy=1; trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q --no-install-recommends nginx-light \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends nginx-light; }
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# grpc_pass is built in unless configured out; HTTP/2 is a module.
if ! "$NGINX" -V 2>&1 | grep -q -- '--with-http_v2_module'; then
  echo "lb-up: $NGINX has no HTTP/2 module (needed for gRPC)" >&2; exit 1
fi
if "$NGINX" -V 2>&1 | grep -q -- '--without-http_grpc_module'; then
  echo "lb-up: $NGINX was built without grpc_pass" >&2; exit 1
fi
echo "lb-up: $("$NGINX" -v 2>&1) at $NGINX"
