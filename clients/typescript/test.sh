#!/usr/bin/env bash
# Test the TypeScript client from a fresh state (node + npm only; the
# container engine and the sandbox images are set up beforehand by
# scripts/engine-up.sh and scripts/build-images.sh):
#   npm ci, drift check of src/gen, strict typecheck, build, build the server
#   when needed, then the node:test suite against live servers.
# Usage: clients/typescript/test.sh [node --test options, e.g. --test-name-pattern=leases]
# Environment: SANDPOOL_SERVER_BIN   use this server binary instead of building
#                                    target/debug/sandpool-server (the OTLP
#                                    receiver, otlp_receiver, is expected beside
#                                    it, or at SANDPOOL_OTLP_RECEIVER_BIN).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
REPO=$(cd ../.. && pwd)

T0=$(date +%s)
t() { echo "=== typescript: $1 took $(( $(date +%s) - $2 ))s"; }

s=$(date +%s)
npm ci --no-audit --no-fund
t "npm ci" "$s"

s=$(date +%s)
../../scripts/gen-typescript.sh --check
t "generated-code drift check" "$s"

s=$(date +%s)
rm -rf dist build
npx tsc -p tsconfig.json --noEmit     # the library, strict
npx tsc -p tsconfig.json              # -> dist/
npx tsc -p tsconfig.test.json         # tests and examples (strict, against dist/) -> build/
t "typecheck and build" "$s"

if [ -z "${SANDPOOL_SERVER_BIN:-}" ]; then
  s=$(date +%s)
  # The server, the Kubernetes test API server its Kubernetes pools use, and
  # the OTLP receiver of the export test (all beside each other; with
  # SANDPOOL_SERVER_BIN set, the workspace build made them there).
  (cd "$REPO" && cargo build -p sandpool-server -p sandpool-k8s-testserver && cargo build -p sandpool-tests --bin otlp_receiver)
  t "cargo build -p sandpool-server -p sandpool-k8s-testserver, the OTLP receiver" "$s"
fi

if ! docker image inspect sandpool/python:bookworm >/dev/null 2>&1; then
  echo "typescript: image sandpool/python:bookworm is missing; run scripts/engine-up.sh and scripts/build-images.sh first" >&2
  exit 1
fi

s=$(date +%s)
node --test --test-reporter=spec --test-timeout=180000 "$@" build/test/*.test.js
t "tests" "$s"
echo "=== typescript: done in $(( $(date +%s) - T0 ))s"
