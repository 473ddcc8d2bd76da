"""The keepalive contract, tested the same way in the TypeScript and Rust
suites: renewals at a third of the TTL; on a connection that goes silent (a
proxy that stops forwarding but closes nothing) the lease is lost within the
TTL, calls raise LeaseLost at once and none hangs; a keepalive answered with
a state other than ACTIVE loses the lease with that state."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, Optional

import pytest

import sandpool
from sandpool.v1.session_pb2 import ReleaseRequest

from conftest import BlackholeProxy, PoolFactory, wait_for

TTL = 3.0
"""Seconds: renewals every second."""

MARGIN = 0.5
"""How late past the TTL the client may notice a silent connection."""


def test_renewals_at_a_third_of_the_ttl_and_a_silent_connection_loses_the_lease_within_it(
    proxy: BlackholeProxy, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    client = sandpool.Client(proxy.addr, timeout=TTL)
    try:
        s = client.acquire(pool, ttl=TTL)
        assert s.lease.ttl == TTL
        # Renewals at about TTL/3: six in two TTLs.
        time.sleep(2 * TTL)
        assert 5 <= s.renewals <= 7, s.renewals
        assert s.lost is None
        assert s.execute("print('held')").stdout == "held\n"

        # A run in flight when the connection goes silent.
        stream = s.run("import time\nprint('running', flush=True)\ntime.sleep(120)")
        for event in stream:
            if isinstance(event, sandpool.Stdout):
                break
        proxy.blackhole()
        silent_at = time.monotonic()
        renewals = s.renewals
        # Asked often: a caller that sees the loss by the clock before the
        # keepalive task's turn must not keep the run's stream open (it did,
        # until the connection's own keepalive broke it a minute later).
        reason: Optional[str] = wait_for(
            "the session to give up on its lease", lambda: s.lost, TTL + 2 * MARGIN, every=0.001
        )
        noticed = time.monotonic() - silent_at
        assert noticed <= TTL + MARGIN, f"noticed {noticed:.2f}s after the connection went silent"
        assert reason is not None and "keepalive failed for longer than the 3s TTL" in reason
        assert s.renewals == renewals

        # The run in flight ends with the loss, not at its deadline.
        t0 = time.monotonic()
        with pytest.raises(sandpool.LeaseLost) as cut:
            stream.collect()
        assert time.monotonic() - t0 < MARGIN
        assert cut.value.lease_id == s.lease_id and cut.value.state is None

        # Every call raises LeaseLost at once, without a round trip.
        t0 = time.monotonic()
        with pytest.raises(sandpool.LeaseLost) as lost:
            s.execute("print(1)")
        assert time.monotonic() - t0 < MARGIN
        assert lost.value.reason == reason and lost.value.state is None
        with pytest.raises(sandpool.LeaseLost):
            s.upload("/sandbox/x", b"x")

        # Telling the server is bounded by the client's deadline.
        t0 = time.monotonic()
        with pytest.raises((sandpool.DeadlineExceeded, sandpool.Unavailable)):
            s.release()
        assert time.monotonic() - t0 < TTL + MARGIN
    finally:
        client.close()


def test_a_keepalive_answered_with_another_state_loses_the_lease_with_that_state(
    client: sandpool.Client, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    with client.acquire(pool, ttl=TTL) as s:
        # Another holder of the lease id ends it; the next renewal hears so.
        client.sessions.Release(ReleaseRequest(lease_id=s.lease_id), timeout=5)
        reason = wait_for("the keepalive to hear the release", lambda: s.lost, TTL / 3 + 2 * MARGIN)
        assert reason.startswith("the server answered the keepalive with RELEASED")
        with pytest.raises(sandpool.LeaseLost) as lost:
            s.execute("print(1)")
        assert lost.value.state is sandpool.LeaseState.RELEASED
        assert lost.value.reason == reason


def test_a_lease_that_waited_longer_than_its_ttl_for_a_container_is_held_on_arrival(
    client: sandpool.Client, make_pool: PoolFactory
) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1, exhaustion_strategy="wait", acquisition_timeout=30)
    ttl, waited = 1.0, 2.5
    holder = client.acquire(pool)
    late: Dict[str, Any] = {}

    def acquire_behind() -> None:
        try:
            late["session"] = client.acquire(pool, ttl=ttl, wait=20)
        except Exception as e:  # noqa: BLE001 - asserted below
            late["error"] = e

    behind = threading.Thread(target=acquire_behind)
    behind.start()
    time.sleep(waited)  # the only container is held: the second Acquire waits
    holder.release()
    behind.join(timeout=30)
    assert "error" not in late, late
    s: sandpool.Session = late["session"]
    try:
        # Its TTL runs from the grant, not from the Acquire sent 2.5 TTLs ago.
        assert s.lost is None
        assert s.execute("print('held')").stdout == "held\n"
        time.sleep(2 * ttl)
        assert s.lost is None and s.renewals >= 3, (s.lost, s.renewals)
    finally:
        s.release()
