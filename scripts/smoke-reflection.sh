#!/usr/bin/env bash
# The README's grpcurl walk-through, run with `buf curl` (grpcurl is not
# installable here; buf curl speaks gRPC and reflection the same way) against
# the real server binary: reflection lists the services, a pool answers, a
# lease runs code, and SIGTERM leaves no container behind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=target/debug/sandpool-server
[ -x "$BIN" ] || cargo build -p sandpool-server
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ID="smoke-$$"
LOG=$(mktemp /tmp/sandpool-smoke.XXXXXX.log)
"$BIN" --listen "127.0.0.1:$PORT" --server-id "$ID" >"$LOG" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT"
curl_() { scripts/buf.sh curl --protocol grpc --http2-prior-knowledge "$@"; }
fail() { echo "smoke-reflection: FAIL: $*" >&2; cat "$LOG" >&2; exit 1; }

for _ in $(seq 1 100); do
  if out=$(curl_ -d '{}' "$URL/grpc.health.v1.Health/Check" 2>/dev/null) && grep -q SERVING <<<"$out" && ! grep -q NOT_SERVING <<<"$out"; then
    break
  fi
  sleep 0.3
done
grep -q '"SERVING"' <<<"$out" || fail "health never became SERVING: $out"

methods=$(curl_ --list-methods "$URL")
for m in sandpool.v1.PoolService/CreatePool sandpool.v1.SessionService/Run sandpool.v1.ArtifactService/Download; do
  grep -q "$m" <<<"$methods" || fail "reflection does not list $m"
done

pool=$(curl_ -d '{"name": "python"}' "$URL/sandpool.v1.PoolService/GetPool")
grep -q '"POOL_PHASE_READY"' <<<"$pool" || fail "pool python is not ready: $pool"

lease=$(curl_ -d '{"pool": "python"}' "$URL/sandpool.v1.SessionService/Acquire")
lease_id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["lease"]["id"])' <<<"$lease")
run=$(curl_ -d "{\"lease_id\": \"$lease_id\", \"code\": {\"text\": \"print(6 * 7)\"}}" "$URL/sandpool.v1.SessionService/Run")
# Output chunks are bytes, base64 in JSON, and "42\n" may come in more than
# one chunk: join the stdout chunks of the stream of JSON messages.
stdout=$(python3 -c '
import base64, json, sys
text, at, out = sys.stdin.read(), 0, b""
decoder = json.JSONDecoder()
while at < len(text):
    if text[at].isspace():
        at += 1
        continue
    message, at = decoder.raw_decode(text, at)
    out += base64.b64decode(message.get("stdout", {}).get("data", ""))
sys.stdout.write(out.decode())
' <<<"$run")
[ "$stdout" = "42" ] || fail "run output missing: $run"
grep -q 'END_REASON_EXITED' <<<"$run" || fail "run did not exit normally: $run"
# A resumable run, resumed after its first event as README shows.
curl_ -d "{\"lease_id\": \"$lease_id\", \"run_id\": \"smoke-1\", \"command\": {\"shell\": \"echo resumed\"}}" \
  "$URL/sandpool.v1.SessionService/Run" >/dev/null || fail "a run with a run_id failed"
attach=$(curl_ -d "{\"lease_id\": \"$lease_id\", \"run_id\": \"smoke-1\", \"after_seq\": 1}" "$URL/sandpool.v1.SessionService/Attach")
grep -q 'END_REASON_EXITED' <<<"$attach" || fail "Attach did not end with the exit: $attach"
! grep -q '"started"' <<<"$attach" || fail "Attach after seq 1 sent the started event again: $attach"
curl_ -d "{\"lease_id\": \"$lease_id\"}" "$URL/sandpool.v1.SessionService/Release" >/dev/null

kill -TERM "$PID"
wait "$PID" || fail "the server exited with an error after SIGTERM"
trap - EXIT
left=$(docker ps -aq --filter "label=sandpool.server=$ID" | wc -l)
[ "$left" = 0 ] || fail "$left containers left after SIGTERM"
echo "smoke-reflection: ok (reflection, health, GetPool, Acquire, Run, Attach, Release, SIGTERM)"
