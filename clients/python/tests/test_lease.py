"""Leases: background keepalive, loss detection, and a client that dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from typing import Optional

import pytest

import sandpool
from sandpool.v1.session_pb2 import ReleaseRequest

from conftest import IMAGE, PoolFactory, Server, pretend_held, python_env, stop_checked, stop_keepalive, wait_for


def test_keepalive_holds_a_lease_past_three_ttls(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(default_lease_ttl=1.0)
    with client.acquire(pool) as s:
        assert s.lease.ttl == 1.0
        time.sleep(3.5)  # idle: only the keepalive talks to the server
        assert s.lost is None
        assert s.renewals >= 6, s.renewals
        assert s.execute("print('still mine')").stdout == "still mine\n"
        stats = client.get_stats(pool)
        assert stats.counters.lease_expirations == 0
        assert stats.active_leases == 1


def test_lease_expired_by_the_server_raises_lease_lost(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    s = client.acquire(pool, ttl=1)
    # Simulate a client that stalls: its keepalive stops.
    stop_keepalive(s)
    wait_for("the server to expire the lease", lambda: client.get_stats(pool).counters.lease_expirations == 1, timeout=5)
    assert client.get_stats(pool).active_leases == 0
    # The client notices by itself: no keepalive was confirmed within the TTL.
    assert s.lost is not None and "TTL" in s.lost
    with pytest.raises(sandpool.LeaseLost):
        s.run_collect("print(1)")

    # And from the server's answer: make the client believe the lease is
    # alive, so that the call reaches the server, which says it expired.
    s2 = client.acquire(pool, ttl=1)
    stop_keepalive(s2)
    wait_for("the second expiry", lambda: client.get_stats(pool).counters.lease_expirations == 2, timeout=5)
    pretend_held(s2)
    with pytest.raises(sandpool.LeaseLost) as err:
        s2.run_collect("print(1)")
    assert "expired" in err.value.reason
    assert err.value.lease_id == s2.lease_id
    # Every later call fails the same way, without a round trip.
    with pytest.raises(sandpool.LeaseLost):
        s2.upload("/sandbox/x", b"x")
    # Releasing an expired lease is not an error.
    assert s2.release() is sandpool.LeaseState.EXPIRED
    s.release()


def test_lease_ended_elsewhere_is_seen_by_the_keepalive(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool, ttl=1.5) as s:
        # Another holder of the lease id (the raw stub here) ends it.
        client.sessions.Release(ReleaseRequest(lease_id=s.lease_id), timeout=5)
        reason = wait_for("the keepalive to see the release", lambda: s.lost, timeout=5)
        assert "RELEASED" in reason
        with pytest.raises(sandpool.LeaseLost):
            s.execute("print(1)")


def test_deleted_pool_keeps_busy_leases_until_released(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool, ttl=1.5) as s:
        assert client.delete_pool(pool) == 1
        time.sleep(2.0)  # past the TTL: the keepalive still renews it
        assert s.lost is None
        assert s.execute("print('draining')").stdout == "draining\n"
    wait_for("the drained pool to disappear", lambda: pool not in [p.spec.name for p in client.list_pools()], timeout=15)


def test_killed_client_frees_its_lease_within_ttl(server: Server, client: sandpool.Client, make_pool: PoolFactory) -> None:
    ttl = 2.0
    pool = make_pool(default_lease_ttl=ttl, max_pool_size=2, min_pool_size=1)
    script = textwrap.dedent(
        f"""
        import sys, time, sandpool
        s = sandpool.Client().acquire({pool!r})
        assert s.execute("print('in')").stdout == "in\\n"
        print("ACQUIRED", s.lease_id, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=python_env(server), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ACQUIRED"), line
        time.sleep(ttl + 0.5)  # the child's keepalive holds the lease past its TTL
        stats = client.get_stats(pool)
        assert stats.state_counts.busy == 1 and stats.active_leases == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed = time.monotonic()
    wait_for(
        "the server to free the dead client's container",
        lambda: client.get_stats(pool).state_counts.busy == 0 and client.get_stats(pool).active_leases == 0,
        timeout=ttl + 2.0,
        every=0.05,
    )
    freed_after = time.monotonic() - killed
    assert freed_after <= ttl + 2.0
    assert client.get_stats(pool).counters.lease_expirations == 1
    wait_for("the freed container to be idle", lambda: client.get_stats(pool).state_counts.idle >= 1, timeout=15)


def test_exiting_process_releases_its_lease(server: Server, client: sandpool.Client, make_pool: PoolFactory) -> None:
    """A script that never calls release() still gives its container back when
    it exits normally (the session's finalizer runs at exit), long before the
    30 s TTL would."""
    pool = make_pool()
    script = f"import sandpool\ns = sandpool.Client().acquire({pool!r})\nprint(s.execute('print(5)').stdout, end='')\n"
    proc = subprocess.run([sys.executable, "-c", script], env=python_env(server), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "5\n"
    wait_for("no active lease", lambda: client.get_stats(pool).active_leases == 0, timeout=5)
    stats = client.get_stats(pool)
    assert stats.counters.releases == 1 and stats.counters.lease_expirations == 0


def test_watch_stats_follows_a_lease(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=2, min_pool_size=1)
    watcher = client.watch_stats(pool, timeout=30)
    first = next(watcher)
    assert first.pool == pool and first.max_size == 2 and not first.closed
    with client.acquire(pool):
        busy = next(st for st in watcher if st.state_counts.busy == 1)
        assert busy.active_leases == 1
    client.delete_pool(pool)
    last = None
    for st in watcher:
        last = st
    assert last is not None and last.closed


def test_a_lease_the_server_forgot_ends_its_with_block_quietly(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A restarted server does not know the lease: the session's calls raise
    LeaseLost, and leaving its ``with`` block (which releases) raises
    nothing more, as in the other clients."""
    pool = "forgotten"
    config = f'[[pools]]\nname = "{pool}"\nlanguage = "python"\nimage = "{IMAGE}"\nmin_pool_size = 1\nmax_pool_size = 1\n'
    first = Server(tmp_path_factory.mktemp("forgetting"), config_extra=config)
    second: Optional[Server] = None
    try:
        wait_for("the pool to warm", lambda: first.client.get_stats(pool).state_counts.idle == 1, timeout=60)
        client = sandpool.Client(first.addr, timeout=15)
        try:
            with client.acquire(pool) as s:
                assert s.execute("print('before')").stdout == "before\n"
                stop_checked(first)
                second = Server(tmp_path_factory.mktemp("forgot"), config_extra=config, port=first.port)
                with pytest.raises(sandpool.LeaseLost):
                    s.execute("print('after')")
            assert s.release() is sandpool.LeaseState.RELEASED  # idempotent: already released on exit
        finally:
            client.close()
    finally:
        if second is not None:
            stop_checked(second)
        elif first.proc.poll() is None:
            stop_checked(first)
