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
#    (in its own venv, clients/python/.venv-gen: the generator's protobuf 6
#    would clash with the test venv's protobuf 7)
# 3. mypy --strict on the package (the generated stubs included) and examples
# 4. cargo build -p sandpool-server and the Kubernetes test API server (for
#    the llm-sandbox layer's Kubernetes example; a no-op when up to date),
#    unless SANDPOOL_SERVER_BIN names the server binary to test against, and
#    the `sandpool` CLI (tests/test_mcp.py drives `sandpool mcp` with the
#    official MCP SDK, `mcp` in requirements-test.txt)
# 5. pytest against a live server that the tests start and stop themselves,
#    with the newest pinned grpcio/protobuf (requirements-test.txt)
# 6. when a Python 3.9 interpreter is found (SANDPOOL_PYTHON39, python3.9 on
#    PATH, or pyenv's), a part of the suite again on 3.9 with the oldest
#    versions pyproject.toml allows (requirements-py39.txt); skipped, and
#    said so, when there is none
set -euo pipefail
PY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$PY_DIR/../.." && pwd)"
VENV="${SANDPOOL_PY_VENV:-$PY_DIR/.venv}"
export SANDPOOL_PY_VENV="$VENV"
GEN_VENV="${SANDPOOL_PY_GEN_VENV:-$PY_DIR/.venv-gen}"
PY39_VENV="$PY_DIR/.venv-py39"

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
# The generators belong in their own venv (their protobuf 6 pin clashes with
# the tests' protobuf 7); scripts/gen-python.sh run without SANDPOOL_PY_VENV
# puts them here: take them out again.
if "$VENV/bin/python" -m pip show --quiet grpcio-tools >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip uninstall --quiet --yes grpcio-tools mypy-protobuf
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r "$PY_DIR/requirements-test.txt" -e "$PY_DIR"

stage "generated code drift check"
SANDPOOL_PY_VENV="$GEN_VENV" "$ROOT/scripts/gen-python.sh" --check

stage "mypy --strict"
(cd "$PY_DIR" && "$VENV/bin/mypy" --strict src/sandpool examples)

# With SANDPOOL_SERVER_BIN set (scripts/test.sh, after its workspace build)
# every binary below is already built beside it.
if [ -z "${SANDPOOL_SERVER_BIN:-}" ]; then
  stage "cargo build: the server, the Kubernetes test API server, the OTLP receiver, the sandpool CLI"
  (cd "$ROOT" && cargo build -p sandpool-server -p sandpool-k8s-testserver --bins \
    && cargo build -p sandpool-tests --bin otlp_receiver \
    && cargo build -p sandpool-client --bin sandpool)
fi

stage "docker engine and image check"
docker info --format '{{.ServerVersion}}' >/dev/null || {
  echo "the docker engine does not answer: run scripts/engine-up.sh first" >&2; exit 1; }
docker image inspect "${SANDPOOL_TEST_PYTHON_IMAGE:-sandpool/python:bookworm}" >/dev/null || {
  echo "image ${SANDPOOL_TEST_PYTHON_IMAGE:-sandpool/python:bookworm} is missing: run scripts/build-images.sh first" >&2; exit 1; }

stage "pytest"
(cd "$PY_DIR" && "$VENV/bin/python" -m pytest "$@")

# A Python 3.9 that runs (a pyenv shim for a version that is not selected
# does not).
python39() {
  local p
  for p in "${SANDPOOL_PYTHON39:-}" "$(command -v python3.9 2>/dev/null || true)" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9; do
    [ -n "$p" ] && [ -x "$p" ] || continue
    if "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
}
PY39="$(python39 || true)"
if [ -z "$PY39" ]; then
  stage ""
  echo "=== python: no Python 3.9 interpreter found: the 3.9 stage is skipped"
elif [ "$#" -eq 0 ]; then
  stage "pytest on $("$PY39" --version 2>&1) with the oldest allowed grpcio/protobuf"
  [ -x "$PY39_VENV/bin/python" ] || "$PY39" -m venv "$PY39_VENV"
  "$PY39_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$PY_DIR/requirements-py39.txt" -e "$PY_DIR"
  # grpcio 1.80's fork handlers (the last release for 3.9) sometimes crash
  # processes the tests start after using a channel; the tests need none.
  (cd "$PY_DIR" && GRPC_ENABLE_FORK_SUPPORT=0 "$PY39_VENV/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_session.py::test_round_trip \
    tests/test_features.py::test_two_figures_come_back_as_two_png_plots \
    tests/test_features.py::test_context_keeps_state_and_is_private_to_its_lease \
    tests/test_features.py::test_lease_errors_from_the_server_carry_error_info \
    tests/test_aio.py::test_async_round_trip_and_streaming \
    tests/test_lease.py::test_exiting_process_releases_its_lease \
    tests/test_keepalive.py \
    tests/test_owned_pools.py::test_a_killed_llm_sandbox_process_leaves_no_pool_and_its_leases_end \
    tests/test_llm_sandbox_compat.py::test_quick_start)
fi

stage ""
echo "=== python: all passed in $(( $(date +%s) - T0 ))s"
