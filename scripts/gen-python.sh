#!/usr/bin/env bash
# Generates the Python gRPC code of proto/sandpool/v1/*.proto into
# clients/python/src/sandpool/v1/ (messages, stubs, and mypy-protobuf typing
# stubs). The output is checked in; a drift check runs this script and then
# `git diff --exit-code clients/python/src/sandpool/v1`.
#
#   scripts/gen-python.sh          generate
#   scripts/gen-python.sh --check  generate into a scratch folder and fail if it
#                                  differs from what is checked in
#
# Uses the venv clients/python/.venv (created when missing) with the pinned
# generator versions of clients/python/requirements-gen.txt: grpcio-tools
# bundles protoc, so no system protoc is needed. Same input and same pins give
# byte-identical files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_DIR="$ROOT/clients/python"
VENV="${SANDPOOL_PY_VENV:-$PY_DIR/.venv}"
OUT="$PY_DIR/src"
GEN_DIR="sandpool/v1"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    rm -rf "$VENV"
    python3 -m pip install --quiet --user virtualenv
    python3 -m virtualenv --quiet "$VENV"
  }
fi
# Installs only when a pinned version is missing (a second or two otherwise).
if ! "$VENV/bin/python" - "$PY_DIR/requirements-gen.txt" <<'EOF'
import sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, version = line.partition("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
EOF
then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_DIR/requirements-gen.txt"
fi

target="$OUT"
if [ "$check" = 1 ]; then
  target="$(mktemp -d)"
  trap 'rm -rf "$target"' EXIT
fi
mkdir -p "$target/$GEN_DIR"
# Remove earlier output (not the hand-written __init__.py) so that a deleted
# proto file leaves no stale module behind.
rm -f "$target/$GEN_DIR"/*_pb2.py "$target/$GEN_DIR"/*_pb2.pyi \
  "$target/$GEN_DIR"/*_pb2_grpc.py "$target/$GEN_DIR"/*_pb2_grpc.pyi

cd "$ROOT/proto"
# Sorted relative names: the output never depends on the directory listing
# order or on where the checkout lives.
mapfile -t protos < <(find "$GEN_DIR" -name '*.proto' | LC_ALL=C sort)
[ "${#protos[@]}" -gt 0 ] || { echo "no .proto files under proto/$GEN_DIR" >&2; exit 1; }

# mypy-protobuf reports every file it writes on stderr: keep that quiet
# unless protoc fails.
log="$(mktemp)"
if ! "$VENV/bin/python" -m grpc_tools.protoc \
  -I . \
  --plugin=protoc-gen-mypy="$VENV/bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$VENV/bin/protoc-gen-mypy_grpc" \
  --python_out="$target" \
  --grpc_python_out="$target" \
  --mypy_out="$target" \
  --mypy_grpc_out="$target" \
  "${protos[@]}" 2>"$log"; then
  cat "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"

if [ "$check" = 1 ]; then
  status=0
  for f in "$target/$GEN_DIR"/*_pb2*; do
    name="$(basename "$f")"
    if ! cmp -s "$f" "$OUT/$GEN_DIR/$name"; then
      echo "drift: clients/python/src/$GEN_DIR/$name differs from the generated one" >&2
      status=1
    fi
  done
  for f in "$OUT/$GEN_DIR"/*_pb2*; do
    [ -e "$target/$GEN_DIR/$(basename "$f")" ] || {
      echo "drift: clients/python/src/$GEN_DIR/$(basename "$f") is not generated any more" >&2
      status=1
    }
  done
  [ "$status" = 0 ] && echo "gen-python: generated code is up to date"
  exit "$status"
fi
echo "gen-python: wrote $(ls "$OUT/$GEN_DIR" | grep -c '_pb2') files into clients/python/src/$GEN_DIR"
