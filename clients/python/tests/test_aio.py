"""The asyncio client against a live server."""

from __future__ import annotations

import asyncio
import time
from typing import Dict, List, Tuple

import pytest

import sandpool
from sandpool import EndReason, Exit, Started, Stdout

from conftest import PoolFactory, Server, wait_for


def test_async_round_trip_and_streaming(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool()

    async def main() -> None:
        async with sandpool.AsyncClient(server.addr) as client:
            async with client.acquire(pool) as s:
                r = await s.run_collect("import sys\nprint('a')\nsys.exit(2)")
                assert (r.stdout, r.exit_code, r.end_reason) == ("a\n", 2, EndReason.EXITED)
                events = []
                async for event in s.run("import time\nprint('one')\ntime.sleep(1.2)\nprint('two')"):
                    events.append((time.monotonic(), event))
                assert isinstance(events[0][1], Started) and isinstance(events[-1][1], Exit)
                one = next(t for t, e in events if isinstance(e, Stdout) and b"one" in e.data)
                assert events[-1][0] - one > 0.9, "output must stream, not arrive at the end"
                cmd = await s.execute_command(["echo", "argv"])
                assert cmd.stdout == "argv\n"
                up = await s.upload("/sandbox/f.bin", b"\x00\x01" * 300_000)
                assert up.size == 600_000
                assert await s.download("/sandbox/f.bin") == b"\x00\x01" * 300_000
                stats = await client.get_stats(pool)
                assert stats.active_leases == 1
            assert (await client.get_stats(pool)).active_leases == 0
            with pytest.raises(sandpool.NotFound):
                await client.acquire("no-such-pool")

    asyncio.run(main())


def test_async_release_on_exception_and_lease_lost(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool()

    async def main() -> None:
        async with sandpool.AsyncClient(server.addr) as client:
            with pytest.raises(RuntimeError, match="body failed"):
                async with client.acquire(pool) as s:
                    raise RuntimeError("body failed")
            assert (await client.get_stats(pool)).active_leases == 0
            with pytest.raises(sandpool.LeaseLost):
                await s.run_collect("print(1)")

            # The server expires a lease whose keepalive stopped.
            s2 = await client.acquire(pool, ttl=1)
            await s2._keeper.stop()
            await asyncio.sleep(1.6)
            with pytest.raises(sandpool.LeaseLost):
                await s2.run_collect("print(1)")
            for _ in range(100):
                if (await client.get_stats(pool)).counters.lease_expirations == 1:
                    break
                await asyncio.sleep(0.05)
            assert (await client.get_stats(pool)).counters.lease_expirations == 1
            assert await s2.release() is sandpool.LeaseState.EXPIRED

    asyncio.run(main())


def test_async_keepalive_past_three_ttls(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool(default_lease_ttl=1.0)

    async def main() -> None:
        async with sandpool.AsyncClient(server.addr) as client:
            async with client.acquire(pool) as s:
                await asyncio.sleep(3.5)
                assert s.lost is None and s.renewals >= 6
                assert (await s.run_collect("print('ok')")).stdout == "ok\n"
            assert (await client.get_stats(pool)).counters.lease_expirations == 0

    asyncio.run(main())


def test_fifty_concurrent_sessions_on_a_small_pool(server: Server, make_pool: PoolFactory) -> None:
    size = 5
    pool = make_pool(max_pool_size=size, min_pool_size=size, exhaustion_strategy="wait", acquisition_timeout=60)
    holds: Dict[str, List[Tuple[float, float]]] = {}

    async def one(client: sandpool.AsyncClient, i: int) -> str:
        async with client.acquire(pool, wait=90) as s:
            start = time.monotonic()
            r = await s.run_collect(f"import time\ntime.sleep(0.05)\nprint({i} * 3)")
            end = time.monotonic()
            holds.setdefault(s.container_id, []).append((start, end))
            assert r.ok, r.stderr
            return r.stdout

    async def main() -> Tuple[List[str], int]:
        async with sandpool.AsyncClient(server.addr) as client:
            peak = 0
            done = asyncio.Event()

            async def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    st = await client.get_stats(pool)
                    peak = max(peak, st.active_leases)
                    await asyncio.sleep(0.02)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(*(one(client, i) for i in range(50)))
            done.set()
            await watcher
            return list(results), peak

    t0 = time.monotonic()
    results, peak = asyncio.run(main())
    elapsed = time.monotonic() - t0
    assert results == [f"{i * 3}\n" for i in range(50)]
    assert 1 <= peak <= size
    assert 1 <= len(holds) <= size, f"{len(holds)} containers for a pool of {size}"
    for container, spans in holds.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"container {container[:12]} leased twice at once"
    assert elapsed < 90
    wait_for(
        "every lease to end",
        lambda: server.client.get_stats(pool).active_leases == 0,
        timeout=10,
    )
