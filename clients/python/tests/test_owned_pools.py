"""Owned pools: a pool that belongs to its creator, kept alive in the
background on the KeepAlive stream and deleted when the creator closes it,
dies or goes silent (the same tests in the TypeScript and Rust suites)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Iterator, List

import pytest

import sandpool
from sandpool.v1 import pool_pb2

from conftest import IMAGE, BlackholeProxy, Server, python_env, wait_for

OWNER_TTL = 2.0
"""Seconds: renewals every 2/3 s."""

MARGIN = 0.5
"""How late past the TTL the client may notice a silent connection."""


def pool_names(client: sandpool.Client) -> List[str]:
    return [p.spec.name for p in client.list_pools()]


def unique(base: str) -> str:
    return f"{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def admin(server: Server) -> Iterator[sandpool.Client]:
    """Another client of the same server: it sees the pools from outside."""
    c = sandpool.Client(server.addr, timeout=15)
    try:
        yield c
    finally:
        c.close()


def test_an_owned_pool_lives_while_its_client_renews_it_and_close_deletes_it_at_once(
    client: sandpool.Client, admin: sandpool.Client
) -> None:
    name = unique("owned")
    with client.create_owned_pool(
        name, owner_ttl=OWNER_TTL, image=IMAGE, max_pool_size=2, min_pool_size=1, wait_ready=True
    ) as pool:
        assert pool.name == name and pool.pool.spec.name == name
        assert pool.pool.phase == pool_pb2.POOL_PHASE_READY
        assert pool.pool.owner != "" and pool.pool.HasField("owner_expire_time")
        assert pool.owner_ttl == OWNER_TTL and pool.lost is None and not pool.closed
        # The deadline moves on with every renewal, across more than two TTLs.
        seen = [admin.get_pool(name).owner_expire_time.ToNanoseconds()]
        until = time.monotonic() + 2.5 * OWNER_TTL
        while time.monotonic() < until:
            time.sleep(OWNER_TTL / 2)
            seen.append(admin.get_pool(name).owner_expire_time.ToNanoseconds())
        assert all(b > a for a, b in zip(seen, seen[1:])), seen
        assert name in pool_names(admin)
        listed = next(p for p in admin.list_pools() if p.spec.name == name)
        assert listed.owner == pool.pool.owner and listed.HasField("owner_expire_time")
        assert pool.lost is None and pool.renewals >= 6, pool.renewals
        with pool.acquire(ttl=5) as s:
            assert s.execute("print('in an owned pool')").stdout == "in an owned pool\n"
        assert pool.get().phase == pool_pb2.POOL_PHASE_READY
        assert pool.stats().max_size == 2
    # Leaving the block deleted it at once: no new lease, gone as soon as its
    # containers are.
    assert pool.closed
    try:
        assert admin.get_pool(name).phase == pool_pb2.POOL_PHASE_DRAINING
    except sandpool.NotFound:
        pass
    wait_for("the deleted pool to be gone", lambda: name not in pool_names(admin), timeout=10)
    with pytest.raises(sandpool.PoolLost) as err:
        pool.acquire()
    assert err.value.pool == name and "deleted by this client" in err.value.reason
    assert pool.delete() == 0  # idempotent


def test_a_pool_created_without_owner_ttl_has_no_owner_deadline(
    client: sandpool.Client, admin: sandpool.Client
) -> None:
    name = unique("plain")
    created = client.create_pool(name, image=IMAGE, max_pool_size=1, min_pool_size=0)
    try:
        assert created.owner != "" and not created.HasField("owner_expire_time")
        time.sleep(1.0)
        assert name in pool_names(admin)
    finally:
        client.delete_pool(name, wait=True, timeout=60)


def test_an_owner_ttl_out_of_range_is_refused_and_nothing_is_kept_alive(client: sandpool.Client) -> None:
    name = unique("badttl")
    with pytest.raises(sandpool.InvalidArgument) as err:
        client.create_owned_pool(name, owner_ttl=0.5, image=IMAGE)
    assert err.value.field == "owner_ttl"
    with pytest.raises(sandpool.InvalidArgument):
        client.create_owned_pool(name, owner_ttl=10, image=IMAGE, max_lease_ttl=5)
    assert name not in pool_names(client)


def test_a_pool_deleted_behind_the_owners_back_is_lost_with_not_found(
    client: sandpool.Client, admin: sandpool.Client
) -> None:
    name = unique("behind")
    pool = client.create_owned_pool(name, owner_ttl=OWNER_TTL, image=IMAGE, max_pool_size=1, min_pool_size=0)
    try:
        admin.delete_pool(name, wait=True, timeout=30)
        reason = wait_for("the keepalive to hear the pool is gone", lambda: pool.lost, OWNER_TTL / 3 + 2 * MARGIN)
        assert reason.startswith("the server answered the keepalive with NOT_FOUND"), reason
        with pytest.raises(sandpool.PoolLost) as err:
            pool.acquire()
        assert err.value.state is sandpool.LeaseState.NOT_FOUND and err.value.reason == reason
    finally:
        t0 = time.monotonic()
        assert pool.delete() == 0  # gone already: nothing to send
        assert time.monotonic() - t0 < MARGIN


def test_asyncio_owned_pool(server: Server) -> None:
    async def main() -> None:
        name = unique("aio-owned")
        async with sandpool.AsyncClient(server.addr, timeout=15) as client:
            async with client.create_owned_pool(
                name, owner_ttl=OWNER_TTL, image=IMAGE, max_pool_size=1, min_pool_size=1, wait_ready=True
            ) as pool:
                assert isinstance(pool, sandpool.AsyncOwnedPool)
                first = (await pool.get()).owner_expire_time.ToNanoseconds()
                await asyncio.sleep(1.5 * OWNER_TTL)
                assert pool.lost is None
                assert (await pool.get()).owner_expire_time.ToNanoseconds() > first
                async with pool.acquire() as s:
                    assert (await s.run_collect("print(2 + 2)")).stdout == "4\n"
            assert pool.closed
            try:
                assert (await client.get_pool(name)).phase == pool_pb2.POOL_PHASE_DRAINING
            except sandpool.NotFound:
                pass

    asyncio.run(main())


def test_a_killed_llm_sandbox_process_leaves_no_pool_and_its_leases_end(
    server: Server, client: sandpool.Client, admin: sandpool.Client
) -> None:
    """A program that creates its pool through sandpool.llm_sandbox and is
    killed with SIGKILL: the server deletes the pool within its owner TTL,
    and a lease another client held on it ends with POOL_DELETED."""
    script = textwrap.dedent(
        f"""
        import time
        from sandpool.llm_sandbox.pool import PoolConfig, create_pool_manager
        manager = create_pool_manager(
            lang="python", image={IMAGE!r}, config=PoolConfig(max_pool_size=2, min_pool_size=1),
            owner_ttl={OWNER_TTL!r},
        )
        print("POOL", manager.name, flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=python_env(server), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("POOL "), line
        name = line.split()[1]
        pool = admin.get_pool(name)
        assert pool.owner != "" and pool.HasField("owner_expire_time")
        session = client.acquire(name, ttl=3)
        assert session.execute("print('held')").stdout == "held\n"
        time.sleep(OWNER_TTL + 0.5)  # the child's keepalive holds the pool past its TTL
        assert name in pool_names(admin) and session.lost is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed = time.monotonic()
    wait_for("the server to delete the dead client's pool", lambda: name not in pool_names(admin), OWNER_TTL + 2.0)
    assert time.monotonic() - killed <= OWNER_TTL + 2.0
    # The lease on it ended with a typed reason.
    reason = wait_for("the lease to be lost", lambda: session.lost, timeout=5)
    assert "POOL_DELETED" in reason, reason
    with pytest.raises(sandpool.LeaseLost) as err:
        session.execute("print(1)")
    assert err.value.state is sandpool.LeaseState.POOL_DELETED
    session.release()
    # The server serves on.
    other = unique("after")
    with client.create_owned_pool(other, owner_ttl=OWNER_TTL, image=IMAGE, max_pool_size=1, min_pool_size=0) as p:
        with p.acquire() as s:
            assert s.execute("print('still serving')").stdout == "still serving\n"


def test_an_exiting_llm_sandbox_process_deletes_its_pool(server: Server, admin: sandpool.Client) -> None:
    """A program that never calls close(): its pool is deleted at interpreter
    exit, long before the owner TTL would end it."""
    script = textwrap.dedent(
        f"""
        from sandpool.llm_sandbox.pool import PoolConfig, create_pool_manager
        manager = create_pool_manager(lang="python", image={IMAGE!r},
                                      config=PoolConfig(max_pool_size=1, min_pool_size=0), owner_ttl=60)
        print(manager.name)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=python_env(server), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.strip()
    wait_for("the pool of the exited process to be gone", lambda: name not in pool_names(admin), timeout=10)


def test_a_silent_connection_loses_the_owned_pool_within_its_ttl(
    proxy: BlackholeProxy, admin: sandpool.Client
) -> None:
    client = sandpool.Client(proxy.addr, timeout=OWNER_TTL + 1)
    name = unique("silent")
    try:
        pool = client.create_owned_pool(
            name, owner_ttl=OWNER_TTL, image=IMAGE, max_pool_size=1, min_pool_size=1, wait_ready=True,
            acquisition_timeout=60,
        )
        # Renewals at about TTL/3: six in two TTLs (some ran while the pool warmed up).
        before = pool.renewals
        time.sleep(2 * OWNER_TTL)
        assert 5 <= pool.renewals - before <= 7, pool.renewals - before
        assert pool.lost is None
        # Another client holds the only container, on a connection of its own.
        held = admin.acquire(name, ttl=3)

        # An acquire waiting for that container when the connection goes silent.
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            waiting = executor.submit(pool.acquire, wait=60)
            # Until the call waits at the server (a fixed pause may end before it got
            # there on a busy machine, and then nothing is in flight to cut).
            wait_for("the acquire to wait at the server", lambda: admin.get_stats(name).waiting > 0, timeout=10)
            proxy.blackhole()
            silent_at = time.monotonic()
            renewals = pool.renewals
            reason = wait_for("the owner to give up on its pool", lambda: pool.lost, OWNER_TTL + 2 * MARGIN)
            noticed = time.monotonic() - silent_at
            assert noticed <= OWNER_TTL + MARGIN, f"noticed {noticed:.2f}s after the connection went silent"
            assert "keepalive failed for longer than the 2s owner TTL" in reason, reason
            assert pool.renewals == renewals
            # The call in flight ends with the loss, not at its deadline.
            with pytest.raises(sandpool.PoolLost) as cut:
                waiting.result(timeout=MARGIN)
            assert cut.value.pool == name and cut.value.state is None

        # Every call raises PoolLost at once, without a round trip.
        t0 = time.monotonic()
        with pytest.raises(sandpool.PoolLost) as lost:
            pool.acquire()
        assert lost.value.reason == reason
        with pytest.raises(sandpool.PoolLost):
            pool.stats()
        assert pool.delete() == 0  # lost: nothing to send
        assert time.monotonic() - t0 < MARGIN

        # The server heard no keepalive either: it deleted the pool, and the
        # lease on it ended with a typed reason.
        wait_for("the server to delete the silent owner's pool", lambda: name not in pool_names(admin), 4.0)
        wait_for("the lease on it to be lost", lambda: held.lost, timeout=3)
        with pytest.raises(sandpool.LeaseLost) as ended:
            held.execute("print(1)")
        assert ended.value.state is sandpool.LeaseState.POOL_DELETED
        held.release()
    finally:
        client.close()
