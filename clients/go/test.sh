#!/usr/bin/env bash
# Tests of the Go client with Debian's Go toolchain and grpc-go packages
# (no module proxy: GOPATH mode, see scripts/go-env.sh). The container
# engine and the sandbox images are set up before this runs
# (scripts/engine-up.sh, scripts/build-images.sh).
#
#   clients/go/test.sh [GO TEST ARGS...]     e.g. -run TestFiles
#   clients/go/test.sh --prepare             only steps 1 and 5's compile
#                                            (fills the build cache; runs
#                                            no test, needs no server)
#
# 1. the Go packages (apt, when missing) and the GOPATH link
# 2. drift check: the checked-in stubs equal a fresh generation
# 3. gofmt and go vet
# 4. cargo build -p sandpool-server (a no-op when up to date), unless
#    SANDPOOL_SERVER_BIN names the server binary to test against, and
#    -p sandpool-k8s-testserver (the Kubernetes test's API server)
# 5. go test (with the race detector where cgo works) against real servers
#    the tests start and stop themselves (each stop checks that no container
#    of that server is left)
set -euo pipefail
PREPARE=0
if [ "${1:-}" = "--prepare" ]; then PREPARE=1; shift; fi
GO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$GO_DIR/../.." && pwd)"

T0=$(date +%s)
stage_t0=$T0
stage() {
  local now; now=$(date +%s)
  [ -z "${STAGE:-}" ] || echo "=== go: $STAGE took $(( now - stage_t0 ))s"
  STAGE=$1; stage_t0=$now
  [ -z "$STAGE" ] || echo "=== go: $STAGE"
}

stage "toolchain (Debian packages) and GOPATH"
. "$ROOT/scripts/go-env.sh"
go version

# The race detector needs cgo (gcc): the keepalive, release and cut of calls
# in flight run on goroutines of their own.
# SANDPOOL_GO_RACE=0 skips it (its first build of grpc-go takes about two
# minutes on two cores; later ones come from the build cache).
race=()
if [ "${SANDPOOL_GO_RACE:-1}" = 0 ]; then
  echo "=== go: SANDPOOL_GO_RACE=0: testing without the race detector"
elif [ "$(go env CGO_ENABLED)" = 1 ] && command -v gcc >/dev/null; then
  race=(-race)
else
  echo "=== go: no cgo/gcc: testing without the race detector"
fi

if [ "$PREPARE" = 1 ]; then
  stage "compile the tests (build cache)"
  (cd "$SANDPOOL_GO_PKG_DIR" && go test "${race[@]}" -count=1 -run '^$' ./... >/dev/null)
  stage ""
  exit 0
fi

stage "generated code drift check"
"$ROOT/scripts/gen-go.sh" --check

# The package is built through its GOPATH link, so that it has its import
# path (`cd -L` keeps $PWD on the link, which the go tool honours).
cd "$SANDPOOL_GO_PKG_DIR"

stage "gofmt and go vet"
unformatted="$(gofmt -l .)"
if [ -n "$unformatted" ]; then
  echo "go: not gofmt-clean:" >&2
  echo "$unformatted" >&2
  exit 1
fi
go vet ./...

if [ -z "${SANDPOOL_SERVER_BIN:-}" ]; then
  # The server, and the test API server of the Kubernetes test beside it
  # (with SANDPOOL_SERVER_BIN set, the workspace build made both there).
  stage "cargo build -p sandpool-server -p sandpool-k8s-testserver"
  (cd "$ROOT" && cargo build -p sandpool-server -p sandpool-k8s-testserver)
  export SANDPOOL_SERVER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/sandpool-server"
fi

stage "docker engine and image check"
docker info --format '{{.ServerVersion}}' >/dev/null || {
  echo "the docker engine does not answer: run scripts/engine-up.sh first" >&2; exit 1; }
docker image inspect sandpool/python:bookworm >/dev/null || {
  echo "image sandpool/python:bookworm is missing: run scripts/build-images.sh first" >&2; exit 1; }

stage "go test"
SANDPOOL_REPO="$ROOT" go test "${race[@]}" -count=1 -timeout 300s "$@" ./...

stage ""
echo "=== go: all passed in $(( $(date +%s) - T0 ))s"
