"""The keepalive contract, tested the same way in the TypeScript and Rust
suites: renewals at a third of the TTL; on a connection that goes silent (a
proxy that stops forwarding but closes nothing) the lease is lost within the
TTL, calls raise LeaseLost at once and none hangs; a keepalive answered with
a state other than ACTIVE loses the lease with that state."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator, List, Optional, Tuple

import pytest

import sandpool
from sandpool.v1.session_pb2 import ReleaseRequest

from conftest import PoolFactory, Server, wait_for

TTL = 3.0
"""Seconds: renewals every second."""

MARGIN = 0.5
"""How late past the TTL the client may notice a silent connection."""


class BlackholeProxy:
    """A TCP proxy from 127.0.0.1 to ``target``. After :meth:`blackhole` it
    forwards nothing more in either direction and accepts new connections
    without forwarding them, yet closes nothing (no FIN, no RST): a network
    that silently drops everything."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target: Tuple[str, int] = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._silent = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        self._silent.set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _keep(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._keep(conn)
            if self._silent.is_set():
                continue  # held open, never forwarded
            upstream = socket.create_connection(self._target)
            self._keep(upstream)
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self._silent.is_set():
                    self._closed.wait()  # hold the data and the connection
                    return
                dst.sendall(data)
            except OSError:
                return


@pytest.fixture
def proxy(server: Server) -> Iterator[BlackholeProxy]:
    p = BlackholeProxy(server.addr)
    try:
        yield p
    finally:
        p.close()


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
        reason: Optional[str] = wait_for("the session to give up on its lease", lambda: s.lost, TTL + 2 * MARGIN)
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
