#!/usr/bin/env bash
# buf lint (STANDARD rules) on proto/, and buf breaking against the last
# commit that has the proto (skipped when there is none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/buf.sh lint
if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto/sandpool/v1 2>/dev/null; then
  scripts/buf.sh breaking --against ".git#ref=HEAD~1"
fi
echo "proto lint: ok"
