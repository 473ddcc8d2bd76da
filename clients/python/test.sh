#!/usr/bin/env bash
# Tests of the Python client, from a machine with only python3 (+ pip) on it;
# the container engine and the sandbox images are set up before this runs
# (scripts/engine-up.sh, scripts/build-images.sh).
#
#   clients/python/test.sh [PYTEST ARGS...]
#
# 1. a venv (clients/python/.venv) with the package (editable) and the pinned
#    test tools of requirements-test.txt
# 2. drift check: the checked-in generated code equals a fresh generation
# 3. mypy --strict on the package (the generated stubs included) and examples
# 4. cargo build -p sandpool-server (a no-op when it is up to date)
# 5. pytest against a live server that the tests start and stop themselves
set -euo pipefail
PY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$PY_DIR/../.." && pwd)"
VENV="${SANDPOOL_PY_VENV:-$PY_DIR/.venv}"
export SANDPOOL_PY_VENV="$VENV"

T0=$(date +%s)
stage_t0=$T0
stage() {
  local now; now=$(date +%s)
  [ -z "${STAGE:-}" ] || echo "=== python: $STAGE took $(( now - stage_t0 ))s"
  STAGE=$1; stage_t0=$now
  [ -z "$STAGE" ] || echo "=== python: $STAGE"
}

stage "venv and install"
if [ ! -x "$VENV/bin/python" ]; then
  # Debian's python3 needs python3-venv for `-m venv`; virtualenv from pip
  # does the same job where it is missing.
  python3 -m venv "$VENV" 2>/dev/null || {
    rm -rf "$VENV"
    python3 -m pip install --quiet --user virtualenv
    python3 -m virtualenv --quiet "$VENV"
  }
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$PY_DIR/requirements-test.txt" -e "$PY_DIR"

stage "generated code drift check"
"$ROOT/scripts/gen-python.sh" --check

stage "mypy --strict"
(cd "$PY_DIR" && "$VENV/bin/mypy" --strict src/sandpool examples)

stage "cargo build -p sandpool-server"
(cd "$ROOT" && cargo build -p sandpool-server)

stage "docker engine and image check"
docker info --format '{{.ServerVersion}}' >/dev/null || {
  echo "the docker engine does not answer: run scripts/engine-up.sh first" >&2; exit 1; }
docker image inspect "${SANDPOOL_TEST_PYTHON_IMAGE:-sandpool/python:bookworm}" >/dev/null || {
  echo "image ${SANDPOOL_TEST_PYTHON_IMAGE:-sandpool/python:bookworm} is missing: run scripts/build-images.sh first" >&2; exit 1; }

stage "pytest"
(cd "$PY_DIR" && "$VENV/bin/python" -m pytest "$@")

stage ""
echo "=== python: all passed in $(( $(date +%s) - T0 ))s"
