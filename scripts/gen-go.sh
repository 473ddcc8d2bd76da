#!/usr/bin/env bash
# Generates the Go code of proto/sandpool/v1/*.proto (messages and gRPC
# stubs) into clients/go/sandpoolv1/ (package sandpoolv1), with Debian's
# protoc, protoc-gen-go and a protoc-gen-go-grpc built from the grpc-go
# source Debian ships (the versions the client is built and tested
# against). The output is checked in; scripts/check-generated.sh runs this
# script and fails on a diff.
#
#   scripts/gen-go.sh          generate
#   scripts/gen-go.sh --check  generate into a scratch folder and fail if it
#                              differs from what is checked in
#
# The protos name no go_package (the contract is shared by every
# language): the import path comes from protoc's M options instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/go-env.sh"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

GOCODE=/usr/share/gocode/src
# protoc-gen-go must be the version of the runtime it generates for: the
# generated code asserts a minimum runtime, and a newer generator than the
# runtime would not build.
gen_version="$(protoc-gen-go --version | awk '{print $2}')"
rt_version="v$(sed -n 's/^[[:space:]]*\(Major\|Minor\|Patch\)[[:space:]]*= \([0-9]*\).*/\2/p' \
  "$GOCODE/google.golang.org/protobuf/internal/version/version.go" | paste -sd.)"
if [ "$gen_version" != "$rt_version" ]; then
  echo "gen-go: protoc-gen-go is $gen_version but google.golang.org/protobuf is $rt_version" >&2
  exit 1
fi

# protoc-gen-go-grpc from the grpc-go tree Debian ships (it has no binary
# package); rebuilt only when that tree changes.
grpc_version="$(sed -n 's/^const Version = "\(.*\)"/\1/p' "$GOCODE/google.golang.org/grpc/version.go")"
TOOLS="$SANDPOOL_GOPATH/bin"
plugin="$TOOLS/protoc-gen-go-grpc-$grpc_version"
if [ ! -x "$plugin" ]; then
  mkdir -p "$TOOLS"
  go build -o "$plugin.tmp" google.golang.org/grpc/cmd/protoc-gen-go-grpc
  mv "$plugin.tmp" "$plugin"
fi

OUT_REL=clients/go/sandpoolv1
target="$ROOT/$OUT_REL"
scratch="$(mktemp -d)"
if [ "$check" = 1 ]; then
  target="$scratch/check"
fi
trap 'rm -rf "$scratch"' EXIT

cd "$ROOT/proto"
# Sorted relative names: the output never depends on the listing order or on
# where the checkout lives.
mapfile -t protos < <(find sandpool/v1 -name '*.proto' | LC_ALL=C sort)
[ "${#protos[@]}" -gt 0 ] || { echo "no .proto files under proto/sandpool/v1" >&2; exit 1; }
mopts=()
for p in "${protos[@]}"; do
  mopts+=("--go_opt=M$p=$SANDPOOL_GO_MODULE/sandpoolv1;sandpoolv1"
          "--go-grpc_opt=M$p=$SANDPOOL_GO_MODULE/sandpoolv1;sandpoolv1")
done
mkdir -p "$scratch/out"
protoc -I . -I /usr/include \
  --plugin=protoc-gen-go-grpc="$plugin" \
  --go_out="$scratch/out" --go_opt=paths=source_relative \
  --go-grpc_out="$scratch/out" --go-grpc_opt=paths=source_relative \
  "${mopts[@]}" "${protos[@]}"
# paths=source_relative writes sandpool/v1/*.go: flatten into the package dir.
mkdir -p "$target"
if [ "$check" = 1 ]; then
  cp "$scratch"/out/sandpool/v1/*.go "$target"/
  if ! diff -ru "$ROOT/$OUT_REL" "$target"; then
    echo "gen-go: $OUT_REL is out of date with proto/; run scripts/gen-go.sh" >&2
    exit 1
  fi
  echo "gen-go: $OUT_REL is up to date"
  exit 0
fi
# Remove earlier output so that a deleted proto file leaves nothing behind.
rm -f "$target"/*.pb.go
cp "$scratch"/out/sandpool/v1/*.go "$target"/
echo "gen-go: wrote $(ls "$target" | grep -c '[.]pb[.]go$') files into $OUT_REL"
