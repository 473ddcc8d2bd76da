#!/usr/bin/env bash
# The test suite, against real container engines (Docker and Podman).
#
#   scripts/test.sh            everything: proto lint, Rust unit and
#                              end-to-end tests, the client suites, the
#                              generated-code drift check, the deploy/ checks
#                              (manifests, compose) and the server image run
#                              in Docker, then a check that no container of
#                              ours is left on the engines
#   scripts/test.sh --rust     only the Rust tests (ARGS after it go to cargo test)
#
# Sets up what it needs first (engines, images): idempotent, a second or two
# when already done.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUST_ONLY=0
if [ "${1:-}" = "--rust" ]; then RUST_ONLY=1; shift; fi

T0=$(date +%s)
t() { echo "=== test.sh: $1 took $(( $(date +%s) - $2 ))s"; }
leftovers() {
  local n
  n=$(docker ps -aq --filter label=sandpool.server | wc -l)
  # Sandbox pods of the Kubernetes test API server (its Docker containers
  # carry pod labels under a prefix).
  n=$(( n + $(docker ps -aq --filter label=k8s-testserver.label.sandpool.server | wc -l) ))
  if command -v podman >/dev/null 2>&1; then
    n=$(( n + $(podman ps -aq --filter label=sandpool.server 2>/dev/null | wc -l) ))
  fi
  echo "$n"
}

s=$(date +%s); scripts/engine-up.sh --podman; t engine-up "$s"
s=$(date +%s); scripts/build-images.sh; scripts/build-images.sh --podman python; t build-images "$s"
before=$(leftovers)

s=$(date +%s); cargo build --workspace --all-targets; t "cargo build" "$s"
# The workspace's tests include the backend conformance suite on Docker,
# Podman and Kubernetes (tests/tests/conformance.rs) and the end-to-end pass
# on a Kubernetes pool (tests/tests/kubernetes.rs), both against the test
# API server in-process: they fail, never skip, when it cannot start, and
# SANDPOOL_REQUIRE_PODMAN makes a missing podman a failure too.
s=$(date +%s); SANDPOOL_REQUIRE_PODMAN=1 cargo test --workspace "$@"; t "cargo test" "$s"

if [ "$RUST_ONLY" = 0 ]; then
  s=$(date +%s); scripts/lint-proto.sh; t "proto lint" "$s"
  s=$(date +%s); scripts/check-generated.sh; t "generated code drift check" "$s"
  s=$(date +%s); scripts/check-deploy.sh; t "deploy manifests check (kustomize, kubernetes-validate, compose)" "$s"
  for suite in clients/*/test.sh; do
    [ -x "$suite" ] || continue
    s=$(date +%s); "$suite"; t "$suite" "$s"
  done
  s=$(date +%s); scripts/smoke-reflection.sh; t "grpc reflection smoke (buf curl)" "$s"
  s=$(date +%s); scripts/build-server-image.sh; t "server image (release build, offline image)" "$s"
  s=$(date +%s); tests/deploy/server-image.sh; tests/deploy/compose.sh; t "server image in Docker, compose" "$s"
fi

after=$(leftovers)
if [ "$after" -gt "$before" ]; then
  echo "=== test.sh: FAIL: $(( after - before )) containers labelled sandpool.server were left on the engines" >&2
  docker ps -a --filter label=sandpool.server --format '{{.ID}} {{.Names}} {{.Labels}}' >&2
  exit 1
fi
echo "=== test.sh: done in $(( $(date +%s) - T0 ))s; no containers left behind"
