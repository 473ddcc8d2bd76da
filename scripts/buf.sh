#!/usr/bin/env bash
# Runs buf (the protobuf toolchain, from npm; no system protoc) with ARGS,
# installing a pinned copy under target/tools on first use.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=1.57.0
DIR=$ROOT/target/tools/buf-$VERSION
if [ ! -x "$DIR/node_modules/.bin/buf" ]; then
  mkdir -p "$DIR"
  (cd "$DIR" && npm install --silent --no-audit --no-fund --prefix . "@bufbuild/buf@$VERSION" >/dev/null)
fi
exec "$DIR/node_modules/.bin/buf" "$@"
