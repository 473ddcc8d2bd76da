#!/usr/bin/env bash
# The test suite, against real container engines (Docker, Podman, gVisor).
#
#   scripts/test.sh            everything, in stages that fit 2 cores:
#     1. setup: engines (runsc registered), nginx (scripts/lb-up.sh), images,
#        cargo build
#     2. the Rust unit and end-to-end tests (cargo test --workspace), the
#        run suites again on the exec path beside the checks (proto lint,
#        generated-code drift, deploy/ manifests), the benchmark report in
#        smoke mode, then the client suites (Go, Python, TypeScript), each
#        lane with a log of its own printed when it ends
#     3. grpc reflection smoke, the server image (built around the debug
#        binary already built: the release build is the image script's
#        default, not needed to test the packaging) run in Docker, compose
#     4. alone: the hostile-code suite (it measures a neighbour's slowdown)
#     5. alone, last: the engine restart suite (it restarts dockerd and the
#        podman service, which kills every container of any suite beside it)
#     then a check that no container of ours is left on the engines
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
LANES=$(mktemp -d /tmp/sandpool-test-lanes.XXXXXX)
# lane NAME COMMAND...: runs COMMAND in the background, its output in a log
# of its own (printed when it ends); `wait_lanes` waits for all of them.
lane_pids=() lane_names=()
lane() {
  local name=$1; shift
  ( s=$(date +%s); rc=0; "$@" >"$LANES/$name.log" 2>&1 </dev/null || rc=$?
    echo "=== test.sh: lane $name took $(( $(date +%s) - s ))s (exit $rc)" >>"$LANES/$name.log"
    exit "$rc" ) &
  lane_pids+=($!) lane_names+=("$name")
  echo "=== test.sh: lane $name started (log $LANES/$name.log)"
}
wait_lanes() {
  local i failed=()
  for i in "${!lane_pids[@]}"; do
    if wait "${lane_pids[$i]}"; then :; else failed+=("${lane_names[$i]}"); fi
    echo "=== test.sh: ---- lane ${lane_names[$i]} ----"
    cat "$LANES/${lane_names[$i]}.log"
  done
  lane_pids=() lane_names=()
  if [ ${#failed[@]} -gt 0 ]; then
    echo "=== test.sh: FAIL: lane(s) ${failed[*]}" >&2
    exit 1
  fi
}
# The Go client's toolchain and first build, then the checks, one after the
# other (they share a lane beside the exec-path suites).
# Explicit returns: `set -e` does not apply inside a lane's `||`.
prepare_and_check() {
  local s
  s=$(date +%s); clients/go/test.sh --prepare || return 1; t "go client prepare" "$s"
  s=$(date +%s); scripts/lint-proto.sh || return 1; t "proto lint" "$s"
  s=$(date +%s); scripts/check-generated.sh || return 1; t "generated code drift check" "$s"
  s=$(date +%s); scripts/check-deploy.sh || return 1
  t "deploy manifests check (kustomize, kubernetes-validate, compose)" "$s"
}
# The client suites, one after the other (they share a lane).
client_suites() {
  local s suite
  for suite in clients/*/test.sh; do
    [ -x "$suite" ] || continue
    s=$(date +%s); "$suite" || return 1; t "$suite" "$s"
  done
}

s=$(date +%s); scripts/engine-up.sh --podman; t engine-up "$s"
# nginx, the gRPC load balancer in front of the scale-out test's three
# replicas (tests/tests/scale_out.rs starts its own, as a child).
s=$(date +%s); scripts/lb-up.sh; t lb-up "$s"
s=$(date +%s); scripts/build-images.sh; scripts/build-images.sh --podman python; t build-images "$s"
before=$(leftovers)

s=$(date +%s); cargo build --workspace --all-targets; t "cargo build" "$s"
# The workspace's tests include the backend conformance suite on Docker,
# Podman and Kubernetes (tests/tests/conformance.rs) and the end-to-end pass
# on a Kubernetes pool (tests/tests/kubernetes.rs), both against the test
# API server in-process: they fail, never skip, when it cannot start, and
# SANDPOOL_REQUIRE_PODMAN / SANDPOOL_REQUIRE_RUNSC make a missing podman or
# runsc a failure too.

# The client suites test the server binary the workspace build made (their
# own `cargo build -p ...` would rebuild it with other features).
export SANDPOOL_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/sandpool-server"

if [ "$RUST_ONLY" = 1 ]; then
  s=$(date +%s); SANDPOOL_REQUIRE_PODMAN=1 SANDPOOL_REQUIRE_RUNSC=1 cargo test --workspace "$@"; t "cargo test" "$s"
else
  # One after the other: the client suites' keepalive tests measure how
  # fast a lost connection is noticed, which a busy machine stretches (the
  # lanes are there for suites that can share the 2 cores).
  s=$(date +%s)
  lane rust env SANDPOOL_REQUIRE_PODMAN=1 SANDPOOL_REQUIRE_RUNSC=1 cargo test --workspace "$@"
  wait_lanes
  # The run suites again with every run on the exec path (the fallback of
  # the resident runner, which is the default and what every suite above
  # and below runs on), a program's `kill -9 -1` included (kills):
  # about 2.5 minutes.
  # `--workspace`, as every cargo test here: selected alone, the tests
  # package unifies its dependencies' features differently, and cargo
  # rebuilt most of them (5 to 8 minutes of a CI run).
  lane exec-path env SANDPOOL_RESIDENT_RUNNER=0 SANDPOOL_REQUIRE_PODMAN=1 SANDPOOL_REQUIRE_RUNSC=1 \
    cargo test --workspace --test runs --test files --test artifacts --test contexts \
    --test kills --test podman
  # Beside it, what times nothing: the Go toolchain and the Go client's
  # first (race-detector) build of grpc-go, then the checks.
  lane prepare-and-check prepare_and_check
  wait_lanes
  # The benchmark report once in smoke mode (`cargo run -p sandpool-bench
  # --bin report -- --smoke`, the debug binary the workspace build made;
  # under a minute): every scenario still runs, so the bench cannot rot. It
  # writes into a temporary directory and removes every container it made.
  s2=$(date +%s)
  "${CARGO_TARGET_DIR:-$PWD/target}/debug/report" --smoke
  t "benchmark report, smoke mode" "$s2"
  lane clients client_suites
  wait_lanes; t "rust tests, then checks and client suites" "$s"

  s=$(date +%s); scripts/smoke-reflection.sh; t "grpc reflection smoke (buf curl)" "$s"
  s=$(date +%s); scripts/build-server-image.sh --binary target/debug/sandpool-server; t "server image (offline image, debug binary)" "$s"
  s=$(date +%s); tests/deploy/server-image.sh; tests/deploy/compose.sh; t "server image in Docker, compose" "$s"

  s=$(date +%s)
  SANDPOOL_REQUIRE_PODMAN=1 SANDPOOL_REQUIRE_RUNSC=1 cargo test --workspace --test hostile -- --ignored --test-threads=1 --nocapture
  t "hostile-code suite (alone)" "$s"
  s=$(date +%s)
  cargo test --workspace --test engine_restart -- --ignored --test-threads=1 --nocapture
  t "engine restart suite (alone, last)" "$s"
fi
rm -rf "$LANES"

after=$(leftovers)
if [ "$after" -gt "$before" ]; then
  echo "=== test.sh: FAIL: $(( after - before )) containers labelled sandpool.server were left on the engines" >&2
  docker ps -a --filter label=sandpool.server --format '{{.ID}} {{.Names}} {{.Labels}}' >&2
  exit 1
fi
echo "=== test.sh: done in $(( $(date +%s) - T0 ))s; no containers left behind"
