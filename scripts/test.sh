#!/usr/bin/env bash
# Run the test suite against a real container engine.
#   scripts/test.sh [ARGS...]   ARGS are passed to `cargo test --workspace`
# Makes sure the engine runs and the sandbox images exist first (both steps
# are idempotent and take a second or two when already done).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

T0=$(date +%s)
t() { echo "=== test.sh: $1 took $(( $(date +%s) - $2 ))s"; }

s=$(date +%s); scripts/engine-up.sh;   t engine-up "$s"
s=$(date +%s); scripts/build-images.sh; t build-images "$s"
s=$(date +%s); cargo test --workspace "$@"; t "cargo test" "$s"
echo "=== test.sh: done in $(( $(date +%s) - T0 ))s"
