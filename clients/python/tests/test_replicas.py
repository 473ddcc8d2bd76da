"""Several replicas, one address: three sandpool-server processes that are
replicas of one cluster (a static peer list, one config) behind a real nginx
(``grpc_pass``, round-robin, HTTP/2 without TLS), used through the Python
client as a user would. Every call through the balancer lands on the next
replica; those that reach a replica which does not own the lease are
forwarded to the owner, so the client sees what one server would show it.

Needs nginx (scripts/lb-up.sh installs it). The tests share one set of
replicas; the last one kills a replica, so it stays last."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

import sandpool
from sandpool import LeaseState
from sandpool.v1.pool_pb2 import PoolStats

from conftest import IMAGE, Server, containers_of, free_port, stop_checked, wait_for

REPLICAS = ("a", "b", "c")

TTL = 3.0
"""Seconds: the sessions' lease TTL, short so that a pause longer than it
proves the keepalives (on a stream of their own, which the balancer puts on
any replica) reach the lease's owner."""

POOL = "py"
"""The config pool every replica has, with its own sizes (min 1, max 3)."""


def owner_of(lease_id: str) -> str:
    """The replica a lease id names (``<replica>.<hex>``)."""
    replica, dot, rest = lease_id.partition(".")
    assert dot and rest, f"lease id {lease_id!r} names no replica"
    return replica


def find_nginx() -> str:
    for path in ("/usr/sbin/nginx", "/usr/bin/nginx"):
        if os.path.exists(path):
            return path
    found = shutil.which("nginx")
    if found is None:
        pytest.fail("nginx is missing: run scripts/lb-up.sh (scripts/test.sh does)")
    return found


def start_nginx(directory: Path, upstreams: List[str]) -> "Tuple[subprocess.Popen[bytes], str]":
    """nginx in front of ``upstreams``, with a prefix directory of its own; in
    one process (``master_process off``), so that killing it leaves no worker
    behind. The same configuration as the Rust harness (tests/src/replicas.rs)."""
    nginx = find_nginx()
    prefix = directory / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "".join(f"    server {addr};\n" for addr in upstreams)
    p = str(prefix)
    conf = (
        f"daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\n"
        f"error_log {p}/error.log info;\nevents {{ worker_connections 256; }}\nhttp {{\n"
        f"access_log {p}/access.log;\n"
        f"client_body_temp_path {p}/tmp/body;\nproxy_temp_path {p}/tmp/proxy;\n"
        f"fastcgi_temp_path {p}/tmp/fastcgi;\nuwsgi_temp_path {p}/tmp/uwsgi;\n"
        f"scgi_temp_path {p}/tmp/scgi;\n"
        f"upstream replicas {{\n{servers}  }}\n"
        f"server {{\n    listen 127.0.0.1:{port} http2;\n    client_max_body_size 0;\n"
        f"grpc_read_timeout 300s;\n    grpc_send_timeout 300s;\n"
        f"location / {{ grpc_pass grpc://replicas; }}\n  }}\n}}\n"
    )
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(
        [nginx, "-p", p, "-c", str(conf_path), "-e", f"{p}/error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"127.0.0.1:{port}"


@dataclass
class Cluster:
    token: str
    replicas: Dict[str, Server]
    lb: str
    """The balancer's address."""
    nginx: "subprocess.Popen[bytes]"
    killed: Set[str] = field(default_factory=set)
    _clients: List[sandpool.Client] = field(default_factory=list)

    def client(self, replica: Optional[str] = None, timeout: float = 15) -> sandpool.Client:
        """A client of the balancer, or of one replica's own address; closed
        at the end of the module."""
        addr = self.lb if replica is None else self.replicas[replica].addr
        c = sandpool.Client(addr, token=self.token, timeout=timeout)
        self._clients.append(c)
        return c

    def kill(self, replica: str) -> None:
        """SIGKILL: no drain, no cleanup of its own."""
        proc = self.replicas[replica].proc
        proc.kill()
        proc.wait()
        self.killed.add(replica)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    find_nginx()  # fail before starting anything
    token = uuid.uuid4().hex
    peer_token = uuid.uuid4().hex
    ports = {name: free_port() for name in REPLICAS}
    peers = ", ".join(f'{{ name = "{n}", address = "http://127.0.0.1:{p}" }}' for n, p in ports.items())
    # One config for all (each replica's copy is the same text): the
    # environment names the replica and carries the peers' secret.
    config = (
        f'[auth]\ntokens = ["{token}"]\n'
        f"[cluster]\npeers = [{peers}]\n"
        f'[[pools]]\nname = "{POOL}"\nlanguage = "python"\nimage = "{IMAGE}"\n'
        "min_pool_size = 2\nmax_pool_size = 3\n"
    )

    # Made here: mktemp is not safe to call from several threads.
    dirs = {name: tmp_path_factory.mktemp(f"replica-{name}") for name in REPLICAS}

    def start(name: str) -> Server:
        return Server(
            dirs[name],
            client_kwargs={"token": token},
            config_extra=config,
            env={"SANDPOOL_REPLICA": name, "SANDPOOL_PEER_TOKEN": peer_token},
            port=ports[name],
        )

    # Started together: each waits until it answers, and the peers it asks
    # meanwhile are simply left out until they listen.
    replicas: Dict[str, Server] = {}
    errors: List[BaseException] = []
    with ThreadPoolExecutor(len(REPLICAS)) as pool:
        futures = {name: pool.submit(start, name) for name in REPLICAS}
        for name, future in futures.items():
            try:
                replicas[name] = future.result()
            except BaseException as e:  # noqa: BLE001 - the others are stopped first
                errors.append(e)
    nginx: Optional["subprocess.Popen[bytes]"] = None
    cluster: Optional[Cluster] = None
    try:
        if errors:
            raise errors[0]
        nginx, lb = start_nginx(tmp_path_factory.mktemp("balancer"), [r.addr for r in replicas.values()])
        cluster = Cluster(token, replicas, lb, nginx)

        def listening() -> bool:
            assert nginx is not None and nginx.poll() is None, "nginx exited"
            with socket.create_connection(("127.0.0.1", int(lb.rsplit(":", 1)[1])), timeout=1):
                return True

        wait_for("nginx to listen", listening, timeout=10)
        probe = cluster.client(timeout=5)
        wait_for("the balancer to answer", lambda: probe.get_stats(POOL), timeout=10)
        yield cluster
    finally:
        if cluster is not None:
            for c in cluster._clients:
                c.close()
        killed = cluster.killed if cluster is not None else set()
        failures: List[str] = []
        for name, srv in replicas.items():
            if name in killed:
                srv.stop()  # closes its client and log
                continue
            try:
                stop_checked(srv)
            except AssertionError as e:
                failures.append(str(e))
        if nginx is not None:
            nginx.kill()
            nginx.wait()
        # A killed replica removes nothing: its containers are the
        # survivors' to remove (its liveness marker died with it), which
        # they do within seconds; the test that killed it waited for that.
        for name in killed:
            srv = replicas[name]
            left = containers_of(srv.server_id)
            if left:
                subprocess.run(["docker", "rm", "-f", *left], capture_output=True, timeout=60)
                failures.append(f"containers of killed replica {name} ({srv.server_id}) left behind: {left}")
        assert not failures, "\n".join(failures)


def test_stats_of_the_config_pool_are_summed_over_the_replicas(cluster: Cluster) -> None:
    # First in the module: the sessions below may grow a replica's pool
    # past min_pool_size, and its idle containers stay.
    client = cluster.client()

    def warm() -> Optional[PoolStats]:
        stats = client.get_stats(POOL)
        return stats if stats.total_size == 6 and stats.state_counts.idle == 6 else None

    summed = wait_for("two warm containers on every replica", warm, timeout=30)
    assert (summed.min_size, summed.max_size) == (6, 9), summed
    own = {name: client.get_stats(POOL, replica=name) for name in REPLICAS}
    for name, stats in own.items():
        # Through the balancer, whichever replica answers asks b (or a, c)
        # for its own.
        assert (stats.total_size, stats.state_counts.idle) == (2, 2), (name, stats)
        assert (stats.min_size, stats.max_size) == (2, 3), (name, stats)
    assert summed.total_size == sum(s.total_size for s in own.values())
    assert client.get_stats(POOL, replica="b").total_size == 2
    # The same sum whichever replica is asked directly.
    for name in REPLICAS:
        assert cluster.client(name).get_stats(POOL).total_size == 6, name
    with pytest.raises(sandpool.InvalidArgument) as unknown:
        client.get_stats(POOL, replica="zz")
    assert "zz" in unknown.value.message


def test_a_pool_made_at_run_time_is_found_through_every_replica(cluster: Cluster) -> None:
    name = f"rt-{uuid.uuid4().hex[:6]}"

    async def main() -> None:
        lb = sandpool.AsyncClient(cluster.lb, token=cluster.token, timeout=15)
        direct = {r: sandpool.AsyncClient(cluster.replicas[r].addr, token=cluster.token, timeout=15) for r in REPLICAS}
        created: Optional[str] = None
        try:
            pool = await lb.create_pool(name, image=IMAGE, min_pool_size=1, max_pool_size=1, wait_ready=True)
            created = pool.replica
            assert created in REPLICAS, pool
            # It lives on the replica that created it; every replica finds it
            # there, and lists it once.
            for r, c in direct.items():
                got = await c.get_pool(name)
                assert got.replica == created, (r, got)
                listed = [p.spec.name for p in await c.list_pools()]
                assert listed.count(name) == 1, (r, listed)
            # Acquired through the balancer, the lease is the creator's (its
            # Acquires are not forwarded elsewhere), and runs.
            async with lb.acquire(name) as s:
                assert owner_of(s.lease_id) == created, s.lease_id
                out = await s.run_collect("print(6 * 7)")
                assert out.stdout == "42\n", out
            # Deleted through another replica.
            other = next(r for r in REPLICAS if r != created)
            await direct[other].delete_pool(name, wait=True, timeout=60)
            created = None
            for r, c in direct.items():
                with pytest.raises(sandpool.NotFound):
                    await c.get_pool(name)
                assert name not in [p.spec.name for p in await c.list_pools()], r
        finally:
            if created is not None:
                with contextlib.suppress(sandpool.SandpoolError):
                    await direct[created].delete_pool(name, wait=True, timeout=60)
            for c in [lb, *direct.values()]:
                await c.close()

    asyncio.run(main())


def test_sessions_spread_over_the_replicas_and_keep_their_leases(cluster: Cluster) -> None:
    seen: List[str] = []
    lock = threading.Lock()

    # Six leases at once with the asyncio API (the pool's default TTL), one
    # per warm container of the replicas (two each: min_pool_size), so that
    # the short-TTL sessions below find warm containers: the client counts a
    # lease's TTL from when its Acquire was sent, so a short lease whose
    # Acquire waited as long for a container to be made would arrive lost.
    async def grow() -> None:
        async with sandpool.AsyncClient(cluster.lb, token=cluster.token, timeout=15) as lb:
            sessions = await asyncio.gather(*(lb.acquire(POOL) for _ in range(6)))
            outs = await asyncio.gather(*(s.run_collect(f"print({i})") for i, s in enumerate(sessions)))
            assert [o.stdout for o in outs] == [f"{i}\n" for i in range(6)], outs
            seen.extend(s.lease_id for s in sessions)
            await asyncio.gather(*(s.release() for s in sessions))

    asyncio.run(grow())
    client = cluster.client()

    def warm() -> Optional[PoolStats]:
        stats = client.get_stats(POOL)
        return stats if stats.state_counts.idle == 6 else None

    wait_for("six warm containers over the replicas", warm, timeout=30)

    def worker(i: int) -> None:
        t0 = time.monotonic()
        with client.acquire(POOL, ttl=TTL) as s:
            acquired = time.monotonic() - t0
            assert acquired < TTL / 2, f"the Acquire took {acquired:.2f}s"
            with lock:
                seen.append(s.lease_id)
            out = s.run_collect(f"print({i} * 7)")
            assert out.stdout == f"{i * 7}\n", out
            data = os.urandom(200_000)
            path = f"/tmp/replicas/{i}.bin"
            assert s.upload(path, data).size == len(data)
            out = s.run_collect(f"import hashlib; print(hashlib.sha256(open({path!r}, 'rb').read()).hexdigest())")
            assert out.stdout.strip() == hashlib.sha256(data).hexdigest(), out
            assert s.download(path) == data
            # Paused for longer than the TTL, twice: only keepalives that
            # reach the owner keep the lease.
            for pause in range(2):
                time.sleep(TTL + 0.5)
                assert s.lost is None, s.lost
                out = s.run_collect(f"print('still here', {pause})")
                assert out.stdout == f"still here {pause}\n", out
            assert s.renewals >= 4, s.renewals

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(worker, i) for i in range(6)]:
            future.result()

    assert len(seen) == 12
    assert len(set(seen)) == len(seen), f"a lease id was granted twice: {sorted(seen)}"
    owners = {owner_of(lease_id) for lease_id in seen[6:]}
    assert owners <= set(REPLICAS), seen
    assert len(owners) >= 2, f"every lease was granted by one replica: {seen}"


def test_a_killed_replicas_lease_is_lost_and_the_balancer_still_serves(cluster: Cluster) -> None:
    # Last in the module: it kills a replica of the shared cluster.
    client = cluster.client()
    s = client.acquire(POOL)
    owner = owner_of(s.lease_id)
    assert s.run_collect("print('before')").stdout == "before\n"
    dead_id = cluster.replicas[owner].server_id
    cluster.kill(owner)

    # The run goes to a survivor (or, once, to the dead replica: nginx then
    # answers UNAVAILABLE, and the client's resumable run simply calls
    # again), which finds the owner gone.
    with pytest.raises(sandpool.LeaseLost) as lost:
        s.run_collect("print('after')")
    assert lost.value.lease_id == s.lease_id
    assert lost.value.state is LeaseState.REPLICA_GONE, lost.value
    assert s.lost is not None
    # The lease is gone: its Release is answered LEASE_ENDED as well (which
    # the client raises as FailedPrecondition, not LeaseLost).
    with contextlib.suppress(sandpool.SandpoolError):
        s.release()

    # A new lease through the balancer, from a survivor. nginx may send the
    # first call after the kill to the dead replica itself before marking it
    # failed, and an Acquire is not resumable: that one call is UNAVAILABLE,
    # and retrying is what a client does.
    fresh: Optional[sandpool.Session] = None
    for attempt in range(3):
        try:
            fresh = client.acquire(POOL)
            break
        except sandpool.Unavailable:
            if attempt == 2:
                raise
            time.sleep(0.2)
    assert fresh is not None
    with fresh:
        assert owner_of(fresh.lease_id) != owner, fresh.lease_id
        assert fresh.run_collect("print('alive')").stdout == "alive\n"

    # The survivors remove what the killed replica left.
    wait_for(
        f"the killed replica {owner}'s containers to be removed by the survivors",
        lambda: containers_of(dead_id) == [],
        timeout=20,
        every=0.25,
    )
