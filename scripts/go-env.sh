#!/usr/bin/env bash
# The Go toolchain of the Go client (clients/go), from Debian packages only:
# no Go module proxy is reachable here. Installs what is missing
# (idempotent: a no-op when everything is there), then, when sourced, sets
# up GOPATH mode over Debian's Go source tree:
#
#   . scripts/go-env.sh     # scripts/gen-go.sh and clients/go/test.sh do
#
# Packages: golang-go (Go 1.19), golang-google-grpc-dev (grpc-go 1.33.3),
# golang-google-protobuf-dev (google.golang.org/protobuf 1.28.1),
# golang-google-genproto-dev (google.rpc error details), protobuf-compiler
# and libprotobuf-dev (protoc 3.21 and the well-known .proto files), and
# protoc-gen-go 1.28.1 (the same version as the runtime: gen-go.sh checks).
# golang-goprotobuf-dev is not used: on bookworm it is a transitional
# package that conflicts with protoc-gen-go.
#
# GOPATH mode: GO111MODULE=off and GOPATH=$SANDPOOL_GOPATH:/usr/share/gocode,
# where $SANDPOOL_GOPATH (default clients/go/.gopath, ignored by git and, as
# a dot directory, by the go tool's ./... patterns) holds only a link from
# src/<module path> to clients/go, so the client builds under its
# module path against Debian's packages. clients/go/go.mod is for users
# (module mode with a proxy) and is ignored here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
_go_env_need=()
command -v go >/dev/null || _go_env_need+=(golang-go)
command -v protoc >/dev/null || _go_env_need+=(protobuf-compiler)
command -v protoc-gen-go >/dev/null || _go_env_need+=(protoc-gen-go)
[ -f /usr/include/google/protobuf/duration.proto ] || _go_env_need+=(libprotobuf-dev)
for _go_env_p in golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-google-genproto-dev; do
  dpkg-query -W -f='${Status}' "$_go_env_p" 2>/dev/null | grep -q 'ok installed' || _go_env_need+=("$_go_env_p")
done
if [ ${#_go_env_need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "go-env: need root to install ${_go_env_need[*]}" >&2; exit 1; }
  echo "go-env: installing ${_go_env_need[*]}" >&2
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${_go_env_need[@]}" >&2
fi
unset _go_env_need _go_env_p

SANDPOOL_GO_MODULE=github.com/sandpool/sandpool/clients/go
SANDPOOL_GO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../clients/go" && pwd)"
SANDPOOL_GOPATH="${SANDPOOL_GOPATH:-$SANDPOOL_GO_DIR/.gopath}"
mkdir -p "$SANDPOOL_GOPATH/src/$(dirname "$SANDPOOL_GO_MODULE")"
ln -sfn "$SANDPOOL_GO_DIR" "$SANDPOOL_GOPATH/src/$SANDPOOL_GO_MODULE"
export GO111MODULE=off GOFLAGS= GOPROXY=off
export GOPATH="$SANDPOOL_GOPATH:/usr/share/gocode"
# Where the client is, seen through GOPATH (cd there to build or test it).
SANDPOOL_GO_PKG_DIR="$SANDPOOL_GOPATH/src/$SANDPOOL_GO_MODULE"
export SANDPOOL_GO_MODULE SANDPOOL_GO_DIR SANDPOOL_GOPATH SANDPOOL_GO_PKG_DIR
