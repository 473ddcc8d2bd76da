#!/usr/bin/env bash
# Runs sandpool-server (release build) with ARGS (e.g. --config FILE,
# --listen ADDR), after setting up what it needs on this machine: a running
# Docker engine and the sandbox images its pools use, built from Debian
# packages when missing (no registry needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/engine-up.sh
cargo build --release -p sandpool-server
BIN=target/release/sandpool-server
# The project's own images that the configured pools use: sandpool/<lang>:bookworm.
langs=$("$BIN" --check-config "$@" | sed -n 's/.* image sandpool\/\([a-z]*\):bookworm .*/\1/p' | sort -u)
[ -z "$langs" ] || scripts/build-images.sh $langs
exec "$BIN" "$@"
