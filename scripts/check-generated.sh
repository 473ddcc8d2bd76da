#!/usr/bin/env bash
# Drift check: regenerate every client's checked-in code from proto/ and fail
# if it differs from what is committed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
status=0
for gen in scripts/gen-*.sh; do
  [ -x "$gen" ] || continue
  "$gen"
done
if ! git diff --exit-code --stat -- clients/ ; then
  echo "check-generated: the generated code above is stale; run scripts/gen-*.sh and commit" >&2
  status=1
fi
untracked=$(git ls-files --others --exclude-standard -- clients/*/src/gen clients/python/src/sandpool/v1 clients/go/sandpoolv1 2>/dev/null || true)
if [ -n "$untracked" ]; then
  echo "check-generated: generated files not committed:" >&2
  echo "$untracked" >&2
  status=1
fi
[ $status = 0 ] && echo "check-generated: ok"
exit $status
