#!/bin/sh
# gRPC health check of the local sandpool-server, for Docker's HEALTHCHECK
# and Kubernetes exec probes where the native gRPC probe cannot be used (it
# has no TLS). Calls grpc.health.v1.Health/Check (service "": the whole
# server) over HTTP/2 with curl; exit 0 when the answer is SERVING. The
# server answers NOT_SERVING until its pools are warm and while it shuts down.
#
#   sandpool-healthcheck [HOST:PORT]
#
# The address: the argument, else SANDPOOL_HEALTH_ADDR, else the port of
# SANDPOOL_LISTEN, else of `listen` in the SANDPOOL_CONFIG file, else 50051;
# on 127.0.0.1 unless the server listens on one specific address. Plain
# HTTP/2 first, then TLS (first TLS when SANDPOOL_TLS_CERT is set) without
# verifying the certificate: this checks that the local process serves, not
# who it is. A listener that requires client certificates (mutual TLS) cannot
# be checked this way: use a TCP check there.
set -u
addr=${1:-${SANDPOOL_HEALTH_ADDR:-}}
if [ -z "$addr" ]; then
  listen=${SANDPOOL_LISTEN:-}
  if [ -z "$listen" ] && [ -n "${SANDPOOL_CONFIG:-}" ] && [ -r "$SANDPOOL_CONFIG" ]; then
    listen=$(sed -n 's/^[[:space:]]*listen[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$SANDPOOL_CONFIG" | head -n 1)
  fi
  case $listen in
    *:*) host=${listen%:*} port=${listen##*:} ;;
    *) host="" port=50051 ;;
  esac
  case $host in ""|0.0.0.0|"[::]") host=127.0.0.1 ;; esac
  addr=$host:$port
fi

schemes="http https"
[ -z "${SANDPOOL_TLS_CERT:-}" ] || schemes="https http"
for scheme in $schemes; do
  # An empty HealthCheckRequest is the 5-byte gRPC frame 00 00000000; the
  # reply SERVING is the frame 00 00000002 0801 (field 1 = 1), NOT_SERVING 0802.
  body=$(printf '\000\000\000\000\000' |
    curl -sS --max-time 3 --insecure --http2-prior-knowledge -X POST \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      --data-binary @- "$scheme://$addr/grpc.health.v1.Health/Check" 2>/dev/null |
    od -An -v -tx1 | tr -d ' \n')
  case $body in
    00000000020801) echo "SERVING ($scheme://$addr)"; exit 0 ;;
    00000000020802) echo "NOT_SERVING ($scheme://$addr)"; exit 1 ;;
  esac
done
echo "no gRPC health answer from $addr"
exit 1
