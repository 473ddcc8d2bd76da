#!/usr/bin/env bash
# Generate the TypeScript code of the sandpool.v1 contract with protoc-gen-es
# (target ts) into clients/typescript/src/gen/, through buf (which compiles
# the protos itself: no protoc). Both tools are pinned in
# clients/typescript/package.json; the output is deterministic.
#
# Usage: scripts/gen-typescript.sh [--check]
#   --check   generate into a temporary directory and fail if src/gen
#             differs from it (the drift gate; changes nothing). CI may as
#             well regenerate and run `git diff --exit-code`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../clients/typescript"

CHECK=0
for a in "$@"; do
  case "$a" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gen-typescript: unknown argument $a" >&2; exit 2 ;;
  esac
done

if [ ! -x node_modules/.bin/buf ] || [ ! -f node_modules/@bufbuild/protoc-gen-es/bin/protoc-gen-es ]; then
  echo "gen-typescript: installing the pinned tools (npm ci)"
  npm ci --no-audit --no-fund
fi

if [ "$CHECK" = 1 ]; then
  tmp=$(mktemp -d /tmp/sandpool-gen-ts.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  node_modules/.bin/buf generate --template buf.gen.yaml --output "$tmp"
  if ! diff -ru src/gen "$tmp/src/gen"; then
    echo "gen-typescript: clients/typescript/src/gen is out of date with proto/; run scripts/gen-typescript.sh" >&2
    exit 1
  fi
  echo "gen-typescript: clients/typescript/src/gen is up to date"
  exit 0
fi

# buf.gen.yaml: input ../../proto, plugin from node_modules, clean output dir.
node_modules/.bin/buf generate --template buf.gen.yaml
echo "gen-typescript: generated $(find src/gen -name '*.ts' | wc -l) files in clients/typescript/src/gen"
