"""OpenTelemetry through the Python client: a server exporting over OTLP/gRPC
to the tests' receiver (the Rust ``otlp_receiver`` binary, real protocol),
and calls carrying a W3C traceparent, explicit or from opentelemetry-api's
current span. One trace from the caller to the program it ran."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import sandpool

from conftest import IMAGE, Server, debug_binary, stop_checked, wait_for

PRINT_TRACEPARENT = "import os\nprint(os.environ.get('TRACEPARENT', 'none'))"
SERVICE = "sandpool.v1.SessionService"

Span = Dict[str, Any]


class OtlpReceiver:
    """The receiver process; what it got is read from its JSON-lines file."""

    def __init__(self, tmp: Path) -> None:
        self.out = tmp / "otlp.jsonl"
        self.proc = subprocess.Popen(
            [str(debug_binary("sandpool-tests", "otlp_receiver")), str(self.out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["listening"], line
        self.endpoint = line[1]

    def records(self, kind: str) -> List[Dict[str, Any]]:
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [r[kind] for r in map(json.loads, lines) if kind in r]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Server, OtlpReceiver, str]]:
    tmp = tmp_path_factory.mktemp("otel")
    receiver = OtlpReceiver(tmp)
    pool = f"otel-{uuid.uuid4().hex[:6]}"
    config = f'[[pools]]\nname = "{pool}"\nlanguage = "python"\nimage = "{IMAGE}"\nmin_pool_size = 1\nmax_pool_size = 1\n'
    srv = Server(
        tmp,
        config_extra=config,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "500"},
    )
    try:
        wait_for("the pool to warm", lambda: srv.client.get_stats(pool).state_counts.idle == 1, timeout=60)
        yield srv, receiver, pool
    finally:
        try:
            stop_checked(srv)
        finally:
            receiver.stop()


def cycle(client: sandpool.Client, pool: str) -> Tuple[str, str]:
    """Acquire, Run (the program prints its TRACEPARENT), Release; the lease
    id and what was printed."""
    with client.acquire(pool) as s:
        r = s.run_collect(PRINT_TRACEPARENT)
        assert r.exit_code == 0, r
        lease_id = s.lease_id
    return lease_id, r.stdout.strip()


def rpc_spans(receiver: OtlpReceiver, trace_id: str) -> Dict[str, Span]:
    """The trace's server spans by method, once Acquire, Run and Release are in."""

    def found() -> Dict[str, Span] | None:
        spans = {
            s["name"].rsplit("/", 1)[-1]: s
            for s in receiver.records("span")
            if s["trace_id"] == trace_id and s["name"].startswith(SERVICE + "/")
        }
        return spans if {"Acquire", "Run", "Release"} <= spans.keys() else None

    return wait_for("the trace's server spans", found, timeout=20)


def attrs(span: Span) -> Dict[str, str]:
    return {k: v for k, v in span["attributes"]}


def test_an_explicit_traceparent_makes_one_trace_down_to_the_program(
    traced: Tuple[Server, OtlpReceiver, str],
) -> None:
    srv, receiver, pool = traced
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    with sandpool.Client(srv.addr, timeout=15, traceparent=f"00-{trace_id}-{caller}-01") as client:
        lease_id, printed = cycle(client, pool)
    spans = rpc_spans(receiver, trace_id)
    for method in ("Acquire", "Run", "Release"):
        span = spans[method]
        a = attrs(span)
        assert span["parent_span_id"] == caller, span
        assert span["kind"] == 2, span
        assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == ("grpc", SERVICE, method)
        assert a["rpc.grpc.status_code"] == "0", span
        assert len(a["sandpool.lease"]) == 16 and a["sandpool.lease"] not in lease_id, span
    assert attrs(spans["Acquire"])["sandpool.pool"] == pool
    everything = receiver.records("span")
    run = next(s for s in everything if s["parent_span_id"] == spans["Run"]["span_id"] and s["name"] == "run")
    under_run = {s["name"] for s in everything if s["parent_span_id"] == run["span_id"]}
    # The program's start: a frame to the resident runner (the server's
    # default; the first run of a lease finds it up), or an engine exec on a
    # server whose environment turns the runner off (read as the server does).
    flag = os.environ.get("SANDPOOL_RESIDENT_RUNNER", "")
    start = "runner.start" if flag in ("", "1", "true", "yes") else "engine.exec"
    assert {start, "run.artifacts"} <= under_run, under_run
    assert [e["name"] for e in run["events"]] == ["run.start", "run.exit"], run
    # The program continues the trace from its run's span.
    assert printed == f"00-{trace_id}-{run['span_id']}-01"
    assert all(lease_id not in json.dumps(s) for s in everything)


def test_the_current_opentelemetry_span_is_propagated(traced: Tuple[Server, OtlpReceiver, str]) -> None:
    from opentelemetry import context, trace

    srv, receiver, pool = traced
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    parent = trace.NonRecordingSpan(
        trace.SpanContext(int(trace_id, 16), int(caller, 16), is_remote=True, trace_flags=trace.TraceFlags(1))
    )
    token = context.attach(trace.set_span_in_context(parent))
    try:
        with sandpool.Client(srv.addr, timeout=15) as client:
            _, printed = cycle(client, pool)
    finally:
        context.detach(token)
    spans = rpc_spans(receiver, trace_id)
    assert all(s["parent_span_id"] == caller for s in spans.values()), spans
    assert printed.startswith(f"00-{trace_id}-")


def test_metrics_arrive_with_the_pools_counts(traced: Tuple[Server, OtlpReceiver, str]) -> None:
    srv, receiver, pool = traced
    with sandpool.Client(srv.addr, timeout=15) as client:
        cycle(client, pool)
        runs = client.get_stats(pool).counters.runs

    def counted() -> bool:
        points = [
            p for p in receiver.records("point") if p["metric"] == "sandpool_runs" and ["pool", pool] in p["attributes"]
        ]
        return bool(points) and points[-1]["value"] >= runs

    wait_for("sandpool_runs over OTLP", counted, timeout=20)

    def histogram() -> Dict[str, Any] | None:
        found = [
            h
            for h in receiver.records("histogram")
            if h["metric"] == "sandpool_run_duration_seconds" and ["pool", pool] in h["attributes"]
        ]
        return found[-1] if found and found[-1]["count"] >= runs else None

    # The run-duration histogram: cumulative, one bucket more than bounds.
    h = wait_for("sandpool_run_duration_seconds over OTLP", histogram, timeout=20)
    assert h["temporality"] == 2 and h["unit"] == "s", h
    assert len(h["bucket_counts"]) == len(h["bounds"]) + 1 and sum(h["bucket_counts"]) == h["count"], h
    ended = [
        p
        for p in receiver.records("point")
        if p["metric"] == "sandpool_runs_ended"
        and ["pool", pool] in p["attributes"]
        and ["end_reason", "exited"] in p["attributes"]
    ]
    assert ended and ended[-1]["value"] >= 1, ended


def test_a_malformed_traceparent_is_refused_by_the_client() -> None:
    with pytest.raises(sandpool.InvalidArgument):
        sandpool.Client("127.0.0.1:1", traceparent="not-a-traceparent")
