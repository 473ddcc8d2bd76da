"""The asyncio client: :class:`AsyncClient`, :class:`AsyncSession`,
:class:`AsyncRunStream`, :class:`AsyncContext`.

This is the one implementation of the client: the sync API
(:mod:`sandpool.client`) drives these same objects on a background event
loop, so a call behaves the same whichever API makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import time
import uuid
import weakref
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Generic,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import grpc
import grpc.aio

from . import _common as c
from .errors import (
    LeaseLost,
    NotFound,
    PoolLost,
    SandpoolError,
    details_of,
    from_rpc_error,
    lease_lost_of,
    pool_lost_of,
    status_of,
)
from .types import (
    ArtifactInfo,
    Exit,
    FileInfo,
    InstallResult,
    LeaseInfo,
    LeaseState,
    RunCollector,
    RunEvent,
    RunResult,
    Started,
    UploadResult,
    event_from_pb,
    seconds_of,
)
from .v1 import (
    artifact_pb2,
    artifact_pb2_grpc,
    pool_pb2,
    pool_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

if TYPE_CHECKING:
    from typing_extensions import Concatenate, ParamSpec, Unpack

    P = ParamSpec("P")

__all__ = ["AsyncClient", "AsyncContext", "AsyncOwnedPool", "AsyncRunStream", "AsyncSession"]

T = TypeVar("T")
S = TypeVar("S")

# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
_EOF: object = getattr(grpc.aio, "EOF")


class AsyncClient:
    """A connection to a sandpool server for asyncio code.

    ``addr`` defaults to ``$SANDPOOL_ADDR``, else ``127.0.0.1:50051``;
    ``token`` (default ``$SANDPOOL_TOKEN``) is sent as a bearer token; ``tls``
    is ``None``/``False`` for plaintext, ``True`` for TLS with the system
    roots, or ``grpc.ChannelCredentials``. Every unary call has a deadline of
    ``timeout`` seconds. The channel is opened on first use, inside the
    running event loop; close it with ``await client.close()`` or ``async
    with AsyncClient() as client``.

    Every call carries the W3C trace context of the caller's current
    OpenTelemetry span when ``opentelemetry-api`` is installed (``pip
    install sandpool[otel]``), so the server's spans join the caller's
    trace; ``traceparent`` (and ``tracestate``) pass one explicitly instead.
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        token: Optional[str] = None,
        tls: c.TLS = None,
        timeout: float = c.DEFAULT_TIMEOUT,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
    ) -> None:
        self.addr = c.resolve_addr(addr)
        self.timeout = float(timeout)
        self._metadata = c.metadata_for(c.resolve_token(token))
        self._traceparent = c.check_traceparent(traceparent)
        self._tracestate = tracestate
        self._creds = c.channel_credentials(tls)
        self._channel: Optional[grpc.aio.Channel] = None
        self._closed = False
        self._pools: Optional[pool_pb2_grpc.PoolServiceAsyncStub] = None
        self._sessions: Optional[session_pb2_grpc.SessionServiceAsyncStub] = None
        self._artifacts: Optional[artifact_pb2_grpc.ArtifactServiceAsyncStub] = None

    def _open(self) -> grpc.aio.Channel:
        if self._closed:
            raise SandpoolError("the client is closed")
        if self._channel is None:
            if self._creds is None:
                self._channel = grpc.aio.insecure_channel(self.addr, options=c.CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.secure_channel(self.addr, self._creds, options=c.CHANNEL_OPTIONS)
        return self._channel

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """Metadata of a call made now: the token, and the W3C trace context
        (the explicit ``traceparent``, else the current OpenTelemetry span's)."""
        return self._metadata + c.trace_metadata(self._traceparent, self._tracestate)

    @property
    def pools(self) -> pool_pb2_grpc.PoolServiceAsyncStub:
        if self._pools is None:
            self._pools = pool_pb2_grpc.PoolServiceStub(self._open())
        return self._pools

    @property
    def sessions(self) -> session_pb2_grpc.SessionServiceAsyncStub:
        if self._sessions is None:
            self._sessions = session_pb2_grpc.SessionServiceStub(self._open())
        return self._sessions

    @property
    def artifacts(self) -> artifact_pb2_grpc.ArtifactServiceAsyncStub:
        if self._artifacts is None:
            self._artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._open())
        return self._artifacts

    async def close(self) -> None:
        """Closes the channel; sessions still open lose their keepalive."""
        self._closed = True
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._pools = self._sessions = self._artifacts = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def _unary(self, fn: Callable[..., Awaitable[T]], request: Any, timeout: Optional[float] = None) -> T:
        try:
            return await fn(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # --- sessions -----------------------------------------------------------

    def acquire(
        self,
        pool: str,
        ttl: Optional[c.Seconds] = None,
        wait: Optional[c.Seconds] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[c.LeaseFiles] = None,
    ) -> _Opening[AsyncSession]:
        """Leases a warm container of ``pool``: ``session = await
        client.acquire(pool)`` or ``async with client.acquire(pool) as
        session``. Arguments as for :meth:`sandpool.Client.acquire`."""
        return _Opening(self._acquire(pool, ttl, wait, env, files))

    async def _acquire(
        self,
        pool: str,
        ttl: Optional[c.Seconds],
        wait: Optional[c.Seconds],
        env: Optional[Mapping[str, str]],
        files: Optional[c.LeaseFiles],
    ) -> AsyncSession:
        lease, started = await self._acquire_lease(pool, ttl, wait, env, files)
        return AsyncSession(self, lease, started)

    async def _acquire_lease(
        self,
        pool: str,
        ttl: Optional[c.Seconds],
        wait: Optional[c.Seconds],
        env: Optional[Mapping[str, str]],
        files: Optional[c.LeaseFiles],
    ) -> Tuple[session_pb2.Lease, float]:
        """The Acquire call: the lease, and the earliest it can have been
        granted (its TTL counts from then): when it was asked for, plus how
        long the server says it waited for a container."""
        req = c.acquire_request(pool, ttl=ttl, env=env, files=files)
        deadline = c.DEFAULT_ACQUIRE_WAIT if wait is None else c.to_seconds(wait)
        sent = time.monotonic()
        resp = await self._unary(self.sessions.Acquire, req, deadline)
        return resp.lease, _granted_from(sent, resp)

    # --- pools --------------------------------------------------------------

    async def create_pool(
        self,
        name: str,
        *,
        language: str = "python",
        image: Optional[str] = None,
        backend: object = None,
        libraries: Optional[Sequence[str]] = None,
        max_pool_size: Optional[int] = None,
        min_pool_size: Optional[int] = None,
        idle_timeout: Optional[c.Seconds] = None,
        acquisition_timeout: Optional[c.Seconds] = None,
        health_check_interval: Optional[c.Seconds] = None,
        max_container_lifetime: Optional[c.Seconds] = None,
        max_container_uses: Optional[int] = None,
        exhaustion_strategy: object = None,
        enable_prewarming: Optional[bool] = None,
        runtime: Optional[Mapping[str, Any]] = None,
        reuse: Optional[bool] = None,
        default_lease_ttl: Optional[c.Seconds] = None,
        max_lease_ttl: Optional[c.Seconds] = None,
        default_run_timeout: Optional[c.Seconds] = None,
        max_run_timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
        output_dir: Optional[str] = None,
        install_network: Optional[str] = None,
        lease_installs: Optional[bool] = None,
        package_index_url: Optional[str] = None,
        namespace: Optional[str] = None,
        run_buffer_bytes: Optional[int] = None,
        resident_runner: Optional[bool] = None,
        wait_ready: bool = False,
        timeout: Optional[float] = None,
    ) -> pool_pb2.Pool:
        """Creates a pool. The PoolConfig fields are keyword arguments (``None``
        takes the server's default, which is llm-sandbox's); ``runtime`` maps
        RuntimeConfig field names (``mem_limit``, ``cpus``, ``network``, ...).
        ``libraries`` are installed into every container at warm-up, over
        ``install_network`` (default "bridge") from ``package_index_url``
        (default: the installer's own index); ``lease_installs`` lets
        :meth:`Session.install_libraries` fetch names over the network too.
        ``namespace`` (Kubernetes pools only) is the namespace of the pool's
        pods; default the server's, and the server allows only those its
        operator listed. ``run_buffer_bytes`` is what the server keeps of each
        run's events for a client whose connection broke (default 4 MiB).
        ``resident_runner=False`` makes every run of the pool an engine exec
        (default: the server's setting, on: a resident runner per container).
        With ``wait_ready`` the call returns once ``min_pool_size`` containers
        are warm (or warming failed: then ``phase`` is FAILING and
        ``status_message`` says why). Returns the pool with every default
        filled in."""
        config = c.pool_config_pb(
            max_pool_size=max_pool_size,
            min_pool_size=min_pool_size,
            idle_timeout=idle_timeout,
            acquisition_timeout=acquisition_timeout,
            health_check_interval=health_check_interval,
            max_container_lifetime=max_container_lifetime,
            max_container_uses=max_container_uses,
            exhaustion_strategy=exhaustion_strategy,
            enable_prewarming=enable_prewarming,
        )
        spec = c.pool_spec_pb(
            name,
            language=language,
            image=image,
            backend=backend,
            libraries=libraries,
            config=config,
            runtime=runtime,
            reuse=reuse,
            default_lease_ttl=default_lease_ttl,
            max_lease_ttl=max_lease_ttl,
            default_run_timeout=default_run_timeout,
            max_run_timeout=max_run_timeout,
            output_limit_bytes=output_limit_bytes,
            output_dir=output_dir,
            install_network=install_network,
            lease_installs=lease_installs,
            package_index_url=package_index_url,
            namespace=namespace,
            run_buffer_bytes=run_buffer_bytes,
            resident_runner=resident_runner,
        )
        return await self.create_pool_from_spec(spec, wait_ready=wait_ready, timeout=timeout)

    async def create_pool_from_spec(
        self, spec: pool_pb2.PoolSpec, *, wait_ready: bool = False, timeout: Optional[float] = None
    ) -> pool_pb2.Pool:
        """Creates a pool from a ready-made ``PoolSpec`` message."""
        req = pool_pb2.CreatePoolRequest(spec=spec, wait_ready=wait_ready)
        deadline = timeout or (max(self.timeout, 120.0) if wait_ready else self.timeout)
        return (await self._unary(self.pools.CreatePool, req, deadline)).pool

    def create_owned_pool(
        self,
        name: str,
        *,
        owner_ttl: c.Seconds = c.DEFAULT_OWNER_TTL,
        wait_ready: bool = False,
        timeout: Optional[float] = None,
        **options: Unpack[c.PoolOptions],
    ) -> _Opening[AsyncOwnedPool]:
        """Creates a pool that belongs to this client: ``pool = await
        client.create_owned_pool(name, ...)``, or ``async with
        client.create_owned_pool(name, ...) as pool`` (which deletes it on
        exit). ``options`` are the keyword arguments of :meth:`create_pool`.

        The pool is kept alive in the background over the KeepAlive stream at
        a third of ``owner_ttl`` (at least 1 s, at most the pool's
        max_lease_ttl), as a lease is. When this process dies or stops
        renewing, the server deletes the pool within ``owner_ttl`` (its
        leases end with ``LeaseState.POOL_DELETED``); :meth:`AsyncOwnedPool.delete`
        deletes it at once. A pool the keepalive loses (the server answers
        that it has no such pool, or no renewal is confirmed within the TTL)
        is reported by ``pool.lost``, and its calls raise :class:`PoolLost`.
        """
        spec = c.spec_of(name, options)
        return self.create_owned_pool_from_spec(spec, owner_ttl=owner_ttl, wait_ready=wait_ready, timeout=timeout)

    def create_owned_pool_from_spec(
        self,
        spec: pool_pb2.PoolSpec,
        *,
        owner_ttl: c.Seconds = c.DEFAULT_OWNER_TTL,
        wait_ready: bool = False,
        timeout: Optional[float] = None,
    ) -> _Opening[AsyncOwnedPool]:
        """:meth:`create_owned_pool` from a ready-made ``PoolSpec`` message."""
        return _Opening(self._create_owned(spec, c.to_seconds(owner_ttl), wait_ready, timeout))

    async def _create_owned(
        self, spec: pool_pb2.PoolSpec, owner_ttl: float, wait_ready: bool, timeout: Optional[float]
    ) -> AsyncOwnedPool:
        req = pool_pb2.CreatePoolRequest(spec=spec, wait_ready=wait_ready, owner_ttl=c.owner_ttl_pb(owner_ttl))
        deadline = timeout or (max(self.timeout, 120.0) if wait_ready else self.timeout)
        # The keepalive starts with the call: the server's clock for the pool
        # starts when it makes the pool, and a wait_ready call may outlast
        # the owner TTL.
        started = time.monotonic()
        owned = AsyncOwnedPool(self, spec.name, owner_ttl, started)
        try:
            resp = await self._unary(self.pools.CreatePool, req, deadline)
        except BaseException:
            # Nothing keeps a pool made half-way alive: the server deletes it
            # within owner_ttl.
            await owned._keeper.stop()
            raise
        owned._exists(resp.pool)
        return owned

    async def get_pool(self, name: str) -> pool_pb2.Pool:
        """One pool: its effective spec, phase and stats."""
        return (await self._unary(self.pools.GetPool, pool_pb2.GetPoolRequest(name=name))).pool

    async def list_pools(self) -> List[pool_pb2.Pool]:
        """Every pool, sorted by name."""
        return list((await self._unary(self.pools.ListPools, pool_pb2.ListPoolsRequest())).pools)

    async def delete_pool(self, name: str, *, wait: bool = False, timeout: Optional[float] = None) -> int:
        """Deletes (drains) a pool; returns the containers still busy. With
        ``wait``, returns once every container of the pool is removed."""
        req = pool_pb2.DeletePoolRequest(name=name, wait=wait)
        deadline = timeout or (max(self.timeout, 60.0) if wait else self.timeout)
        return (await self._unary(self.pools.DeletePool, req, deadline)).busy_remaining

    async def get_stats(self, name: str, *, replica: str = "") -> pool_pb2.PoolStats:
        """A pool's statistics: sizes, state counts, counters, latencies.
        With several replicas behind the address, a config pool's are summed
        over them; ``replica`` (its name, as lease ids carry it) asks for
        that replica's own."""
        req = pool_pb2.GetPoolStatsRequest(name=name, replica=replica)
        return (await self._unary(self.pools.GetPoolStats, req)).stats

    async def watch_stats(self, name: str, *, timeout: Optional[float] = None) -> AsyncIterator[pool_pb2.PoolStats]:
        """Yields the pool's stats now and after every change, until the pool
        is deleted (the last one has ``closed`` set) or the caller closes the
        generator. With ``timeout``, the stream's deadline: when it passes,
        :class:`DeadlineExceeded` is raised (``None``: no deadline)."""
        call = self.pools.WatchPoolStats(
            pool_pb2.WatchPoolStatsRequest(name=name), timeout=timeout, metadata=self.metadata
        )
        try:
            async for resp in call:
                yield resp.stats
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


class _Ends:
    """``async with`` support for what ends with ``_end()`` (a session's
    release, a context's delete): on an exception in the body, a failing end
    never hides it."""

    async def _end(self) -> Any:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            await self._end()
            return
        try:
            await self._end()
        except SandpoolError:
            pass


E = TypeVar("E", bound=_Ends)


class _Opening(Generic[E]):
    """What :meth:`AsyncClient.acquire` and :meth:`AsyncSession.context`
    return: awaitable, or an async context manager that ends what it opened
    on exit."""

    def __init__(self, coro: Awaitable[E]) -> None:
        self._coro = coro
        self._opened: Optional[E] = None

    def __await__(self) -> Generator[Any, None, E]:
        return self._coro.__await__()

    async def __aenter__(self) -> E:
        self._opened = await self._coro
        return self._opened

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._opened is not None:
            await self._opened.__aexit__(exc_type, exc, tb)


def _granted_from(sent: float, resp: session_pb2.AcquireResponse) -> float:
    """The earliest the lease of an Acquire sent at ``sent`` can have been
    granted, its TTL counting from then: the server says how long the
    request waited for a container (a lease that waited longer than its TTL
    is not lost on arrival)."""
    queued = seconds_of(resp.queued) if resp.HasField("queued") else 0.0
    # Never later than the answer: a lease cannot be granted after it.
    return min(sent + max(0.0, queued), time.monotonic())


# --- the keepalive ----------------------------------------------------------

_STATE_REASONS = {
    LeaseState.EXPIRED: "the lease expired on the server (no keepalive arrived within its TTL)",
    LeaseState.RELEASED: "the lease was released",
    LeaseState.REVOKED: "the server revoked the lease (its pool was deleted or the server is stopping)",
    LeaseState.NOT_FOUND: "the server does not know the lease",
    LeaseState.CONTAINER_LOST: "the lease's container died or was removed outside sandpool (acquire a new one)",
    LeaseState.POOL_DELETED: "the lease's pool was deleted because its owner stopped keeping it alive",
    LeaseState.LIFETIME_EXCEEDED: "the lease reached its pool's max_lease_lifetime (acquire a new one)",
    LeaseState.REPLICA_GONE: "the server replica that owned the lease is gone (acquire a new one)",
}
"""Why a lease is lost, by the state a keepalive answer gives."""

_POOL_STATE_REASONS = {
    LeaseState.NOT_FOUND: (
        "the server has no such pool owned by this caller"
        " (deleted, or lapsed: no keepalive arrived within its owner TTL)"
    ),
}
"""Why an owned pool is lost, by the state a keepalive answer gives."""

L = TypeVar("L", bound=SandpoolError)


class _Target(Generic[L]):
    """What a keepalive renews: a lease (:class:`_Lease`) or an owned pool
    (:class:`_OwnedPool`), with the loss (``L``) it raises once it is gone."""

    def __init__(self, name: str) -> None:
        self.name = name

    def request(self) -> session_pb2.KeepAliveRequest:
        raise NotImplementedError

    def loss(self, reason: str, state: Optional[LeaseState] = None) -> L:
        """The loss, for a reason the client found (or a keepalive answer)."""
        raise NotImplementedError

    def expired(self, ttl: float) -> L:
        """The loss when no renewal was confirmed within the TTL."""
        raise NotImplementedError

    def answered(self, state: LeaseState) -> L:
        """The loss when a keepalive is answered with ``state``."""
        raise NotImplementedError

    def gone(self, err: BaseException) -> Optional[L]:
        """The loss when the error of a call says the target is gone."""
        raise NotImplementedError

    def copy(self, lost: L) -> L:
        """A fresh exception for a loss raised again."""
        raise NotImplementedError

    async def abandon(self, client: AsyncClient) -> None:
        """Tells the server, best effort, that this client gave the target up
        (a Release, a DeletePool): bounded by the client's deadline."""
        raise NotImplementedError


def _answer_reason(state: LeaseState, reasons: Mapping[LeaseState, str]) -> str:
    reason = f"the server answered the keepalive with {state.name}"
    return f"{reason}: {reasons[state]}" if state in reasons else reason


class _Lease(_Target[LeaseLost]):
    """A lease, kept alive by its session."""

    def request(self) -> session_pb2.KeepAliveRequest:
        return session_pb2.KeepAliveRequest(lease_id=self.name)

    def loss(self, reason: str, state: Optional[LeaseState] = None) -> LeaseLost:
        return LeaseLost(self.name, reason, state=state)

    def expired(self, ttl: float) -> LeaseLost:
        return self.loss(f"keepalive failed for longer than the {ttl:g}s TTL: the lease counts as expired")

    def answered(self, state: LeaseState) -> LeaseLost:
        return self.loss(_answer_reason(state, _STATE_REASONS), state)

    def gone(self, err: BaseException) -> Optional[LeaseLost]:
        return lease_lost_of(err, self.name)

    def copy(self, lost: LeaseLost) -> LeaseLost:
        return _copy(lost)

    async def abandon(self, client: AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await client.sessions.Release(
                session_pb2.ReleaseRequest(lease_id=self.name), timeout=client.timeout, metadata=client.metadata
            )


class _OwnedPool(_Target[PoolLost]):
    """A pool created with an owner TTL, kept alive by its creator."""

    def request(self) -> session_pb2.KeepAliveRequest:
        return session_pb2.KeepAliveRequest(pool=self.name)

    def loss(self, reason: str, state: Optional[LeaseState] = None) -> PoolLost:
        return PoolLost(self.name, reason, state=state)

    def expired(self, ttl: float) -> PoolLost:
        return self.loss(
            f"keepalive failed for longer than the {ttl:g}s owner TTL: the server deletes the pool by itself"
        )

    def answered(self, state: LeaseState) -> PoolLost:
        return self.loss(_answer_reason(state, _POOL_STATE_REASONS), state)

    def gone(self, err: BaseException) -> Optional[PoolLost]:
        return pool_lost_of(err, self.name)

    def copy(self, lost: PoolLost) -> PoolLost:
        return PoolLost(lost.pool, lost.reason, code=lost.code, details=lost.details, state=lost.state)

    async def abandon(self, client: AsyncClient) -> None:
        with contextlib.suppress(Exception):
            await client.pools.DeletePool(
                pool_pb2.DeletePoolRequest(name=self.name), timeout=client.timeout, metadata=client.metadata
            )


class _Keeper(Generic[L]):
    """The keepalive of one lease or owned pool (its ``target``): an asyncio
    task on the loop of the object that holds it (its ``holder``: a session,
    an owned pool).

    The contract, the same in the TypeScript and Rust clients:

    - a renewal goes out a third of the TTL after the last confirmed one was
      sent (the first, a third of the TTL after Acquire or CreatePool was
      sent, plus the time Acquire's answer says it waited for a container),
      on one KeepAlive stream that is reopened when it breaks;
    - an ACTIVE answer confirms the target until that renewal's send time
      plus the TTL the server answers;
    - no wait (opening the stream, sending, the answer) outlasts that time:
      when it passes unconfirmed the target is lost ("keepalive failed for
      longer than the TTL"), in-flight calls of the holder end with the loss
      (:class:`LeaseLost`, :class:`PoolLost`), and the server is told with a
      best-effort Release or DeletePool;
    - an answer in another state (EXPIRED, RELEASED, REVOKED, NOT_FOUND...),
      or an error saying the target is gone, loses it with that state; a
      NOT_FOUND answer to a renewal sent before the target was known to exist
      (an owned pool whose CreatePool has not answered yet) only means "not
      yet": the renewal is tried again;
    - the clock decides too: once the time has passed, the holder reports the
      loss and every call raises it without a round trip, even before this
      task has run.

    It holds only a weak reference to its holder: when the holder is garbage
    collected unclosed, the task abandons the target (releases the lease,
    deletes the pool) and ends.
    """

    def __init__(
        self,
        client: AsyncClient,
        holder: object,
        target: _Target[L],
        ttl: float,
        started: float,
        *,
        exists: bool = True,
    ) -> None:
        self._client = client
        self._holder_ref = weakref.ref(holder)
        self.target = target
        self.ttl = ttl
        self._lost: Optional[L] = None
        self._confirmed_until = started + ttl
        # Since when the target is known to exist on the server (+inf: not yet).
        self._exists_since = float("-inf") if exists else float("inf")
        self._call: Any = None
        self._on_give_up: Optional[Callable[[], None]] = None
        self.renewals = 0
        # Set by stop(): the task ends at its next turn even if the
        # cancellation is lost (Python 3.11's asyncio.wait_for returns the
        # inner result, and drops the cancel, when both come at once).
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def exists(self) -> None:
        """The target is known to exist from now on (its CreatePool answered)."""
        self._exists_since = time.monotonic()

    def lost(self) -> Optional[L]:
        """The loss, once the target is lost (by the clock, too)."""
        if self._lost is None and time.monotonic() > self._confirmed_until:
            self._lost = self.target.expired(self.ttl)
        return self._lost

    def mark_lost(self, lost: L) -> None:
        if self._lost is None:
            self._lost = lost

    def _close_stream(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def stop(self) -> None:
        self._stopped = True
        self._close_stream()
        if self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _renew(self) -> Any:
        """One renewal on the stream (opened when there is none): the answer,
        or ``None`` when the server ended the stream."""
        if self._call is None:
            lifetime = max(c.KEEPALIVE_STREAM_LIFETIME, 10 * self.ttl)
            self._call = self._client.sessions.KeepAlive(None, timeout=lifetime, metadata=self._client.metadata)
        await self._call.write(self.target.request())
        resp = await self._call.read()
        return None if resp is _EOF else resp

    async def _run(self) -> None:
        interval = max(self.ttl / 3.0, c.MIN_KEEPALIVE)
        next_at = self._confirmed_until - self.ttl + interval
        try:
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if self._stopped:
                    return
                if self._holder_ref() is None:
                    await self.target.abandon(self._client)  # dropped unclosed
                    return
                # The time first: a caller that asked `lost` once the time was
                # up has recorded the loss by the clock already, and the
                # give-up below (cutting in-flight calls) is still owed.
                left = self._confirmed_until - time.monotonic()
                if left <= 0:
                    break
                if self._lost is not None:
                    return  # lost by the server's answer or error: its calls end by themselves
                sent = time.monotonic()
                next_at = sent + c.KEEPALIVE_RETRY
                try:
                    resp = await asyncio.wait_for(self._renew(), timeout=left)
                except asyncio.TimeoutError:
                    self._close_stream()
                    next_at = sent + left  # the target's time is up: give up there
                    continue
                except grpc.RpcError as e:
                    self._close_stream()
                    lost = self.target.gone(e)
                    if lost is not None:
                        self.mark_lost(lost)
                        return
                    if status_of(e)[0] == grpc.StatusCode.DEADLINE_EXCEEDED:
                        next_at = sent  # the stream's own lifetime ended: reopen now
                    continue
                except Exception:  # noqa: BLE001 - e.g. the client's channel was closed
                    self._close_stream()
                    continue
                if resp is None:  # the server ended the stream (say, it is stopping): reopen
                    self._close_stream()
                    continue
                state = LeaseState.from_pb(resp.state)
                if state is LeaseState.NOT_FOUND and sent < self._exists_since:
                    # Not there yet (its CreatePool is still on its way): a
                    # target made after this answer lives at least a TTL.
                    self._confirmed_until = max(self._confirmed_until, sent + self.ttl)
                    continue
                if state is not LeaseState.ACTIVE:
                    self.mark_lost(self.target.answered(state))
                    return
                if resp.HasField("ttl") and seconds_of(resp.ttl) > 0:
                    self.ttl = seconds_of(resp.ttl)
                    interval = max(self.ttl / 3.0, c.MIN_KEEPALIVE)
                self._confirmed_until = sent + self.ttl
                self.renewals += 1
                next_at = sent + interval
            # No renewal was confirmed within the TTL.
            self.lost()
            if self._on_give_up is not None:
                self._on_give_up()
            self._close_stream()
            await self.target.abandon(self._client)
        finally:
            self._close_stream()


# --- sessions ---------------------------------------------------------------


def _collected(
    run: "Callable[Concatenate[S, P], AsyncRunStream]", name: str, doc: str
) -> "Callable[Concatenate[S, P], Coroutine[Any, Any, RunResult]]":
    """The method ``name``: it makes the run that ``run`` makes (same
    arguments) and returns its collected result."""

    async def collected(self: S, /, *args: "P.args", **kwargs: "P.kwargs") -> RunResult:
        return await run(self, *args, **kwargs).collect()

    functools.update_wrapper(collected, run)
    collected.__doc__ = doc
    collected.__name__ = name
    collected.__qualname__ = f"{run.__qualname__.rsplit('.', 1)[0]}.{name}"
    setattr(collected, "__signature__", inspect.signature(run).replace(return_annotation="RunResult"))
    return collected


class _Calls:
    """The in-flight calls of a session, which are cut when the keepalive
    gives up on the lease: no call waits on a dead connection past the TTL."""

    def __init__(self) -> None:
        self._live: Set[Any] = set()
        self._cut: Set[Any] = set()

    def add(self, call: Any) -> None:
        self._live.add(call)

    def discard(self, call: Any) -> None:
        self._live.discard(call)

    def was_cut(self, call: Any) -> bool:
        return call in self._cut

    def cut(self) -> None:
        live, self._live = self._live, set()
        self._cut.update(live)
        for call in live:
            call.cancel()


class AsyncSession(_Ends):
    """A lease on one warm container, kept alive by a background task.

    Use ``async with client.acquire(pool) as s`` or ``await s.release()``.
    After the lease is lost every call raises :class:`LeaseLost`.
    """

    def __init__(self, client: AsyncClient, lease: session_pb2.Lease, started: float) -> None:
        self._client = client
        self.lease = LeaseInfo.from_pb(lease)
        ttl = self.lease.ttl if self.lease.ttl > 0 else 30.0
        self._released = False
        self._calls = _Calls()
        self._keeper: _Keeper[LeaseLost] = _Keeper(client, self, _Lease(self.lease.id), ttl, started)
        self._keeper._on_give_up = self._calls.cut

    # --- the lease ------------------------------------------------------------

    @property
    def lease_id(self) -> str:
        return self.lease.id

    @property
    def container_id(self) -> str:
        return self.lease.container_id

    @property
    def pool(self) -> str:
        return self.lease.pool

    @property
    def renewals(self) -> int:
        """Keepalives the server confirmed so far."""
        return self._keeper.renewals

    @property
    def lost(self) -> Optional[str]:
        """Why the lease is lost, or ``None`` while it is held."""
        lost = self._lost()
        return lost.reason if lost is not None else None

    def _lost(self) -> Optional[LeaseLost]:
        if self._released:
            return LeaseLost(self.lease.id, "the lease was released by this client", state=LeaseState.RELEASED)
        return self._keeper.lost()

    def _check(self) -> None:
        lost = self._lost()
        if lost is not None:
            raise _copy(lost)

    def _error(self, err: BaseException) -> SandpoolError:
        """The exception of a failed call on the lease; one that says the
        lease is gone marks the session lost."""
        mapped = from_rpc_error(err, self.lease.id)
        if isinstance(mapped, LeaseLost):
            self._keeper.mark_lost(mapped)
        return mapped

    def _cut_error(self) -> LeaseLost:
        """The exception of a call cut because the keepalive gave up."""
        return _copy(self._keeper.lost() or LeaseLost(self.lease.id, "the keepalive gave up on the lease"))

    async def _call(self, fn: Callable[..., Any], request: Any, timeout: float) -> Any:
        """A unary (or stream-unary) call on the lease: checked first, cut
        when the keepalive gives up on the lease, its error mapped."""
        self._check()
        call = fn(request, timeout=timeout, metadata=self._client.metadata)
        self._calls.add(call)
        try:
            return await call
        except grpc.RpcError as e:
            raise self._error(e) from None
        except asyncio.CancelledError:
            if not self._calls.was_cut(call):
                raise
            raise self._cut_error() from None
        finally:
            self._calls.discard(call)

    async def release(self) -> LeaseState:
        """Ends the lease (idempotent). Returns how it stood before: ACTIVE
        when this call ended it; NOT_FOUND when the server does not know it
        (say, it restarted): gone already, which is not an error here, as in
        the TypeScript, Rust and Go clients. Raises only when the server
        could not be told (the lease then expires at its TTL)."""
        if self._released:
            return LeaseState.RELEASED
        self._released = True
        await self._keeper.stop()
        try:
            resp = await self._client.sessions.Release(
                session_pb2.ReleaseRequest(lease_id=self.lease.id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            gone = lease_lost_of(e, self.lease.id)
            if gone is not None:
                return gone.state or LeaseState.NOT_FOUND
            raise from_rpc_error(e) from None
        return LeaseState.from_pb(resp.previous_state)

    _end = release

    async def __aenter__(self) -> AsyncSession:
        return self

    # --- runs ---------------------------------------------------------------

    def _start(self, request: session_pb2.RunRequest, timeout: Optional[c.Seconds]) -> AsyncRunStream:
        """Starts a resumable run: it gets a run id of its own, and a broken
        connection is picked up again (Run repeated with the same id, or
        Attach after the last event) for as long as the lease lives."""
        self._check()
        if not request.run_id:
            request.run_id = "p" + uuid.uuid4().hex
        resume = _Resume(self, request, c.run_deadline(timeout))
        return AsyncRunStream(resume.call(0), self._error, (self._calls, self._cut_error), resume)

    def run(
        self,
        code: Union[str, bytes],
        *,
        stdin: Optional[Union[str, bytes]] = None,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout: Optional[c.Seconds] = None,
        language: Optional[str] = None,
        output_limit_bytes: Optional[int] = None,
        plot_format: c.PlotFormatArg = None,
    ) -> AsyncRunStream:
        """Runs code in the pool's language (or ``language``); iterate the
        returned stream (``async for`` in the asyncio API) for the events as
        they are produced. Figures the code shows or leaves open come back as
        plot artifacts in ``plot_format`` (``"png"`` by default, ``"svg"``,
        ``"pdf"``)."""
        req = c.run_request(
            self.lease.id,
            code=code,
            language=language,
            stdin=stdin,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
            plot_format=plot_format,
        )
        return self._start(req, timeout)

    def run_command(
        self,
        command: Union[str, Sequence[str]],
        *,
        stdin: Optional[Union[str, bytes]] = None,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
    ) -> AsyncRunStream:
        """Runs a command: a string is a shell command line (``/bin/sh -c``), a
        sequence is an argv executed without a shell."""
        req = c.run_request(
            self.lease.id,
            command=command,
            stdin=stdin,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
        )
        return self._start(req, timeout)

    def interact(
        self,
        code: Optional[Union[str, bytes]] = None,
        *,
        command: Optional[Union[str, Sequence[str]]] = None,
        terminal: Optional[Tuple[int, int]] = None,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout: Optional[c.Seconds] = None,
        language: Optional[str] = None,
        output_limit_bytes: Optional[int] = None,
        plot_format: c.PlotFormatArg = None,
    ) -> AsyncInteraction:
        """Starts an interactive run of ``code`` or ``command`` (a string is
        a shell command line, a sequence an argv): :meth:`AsyncInteraction.write`
        its input while it runs, ``close_stdin()``, ``signal(signal.SIGINT)``
        and, with ``terminal=(rows, columns)``, ``resize(rows, columns)``;
        iterate it for the events as they are produced. With a terminal the
        program's output arrives as one stdout stream, shaped by the terminal
        (echo, ``\\r\\n``), and a ``"\\x03"`` written interrupts its
        foreground job as Ctrl-C does."""
        req = c.run_request(
            self.lease.id,
            code=code,
            command=command,
            language=language,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
            plot_format=plot_format,
        )
        start = session_pb2.InteractRequest(start=session_pb2.InteractStart(run=req))
        if terminal is not None:
            rows, columns = terminal
            start.start.terminal.CopyFrom(session_pb2.TerminalSize(rows=rows, columns=columns))
        self._check()
        # Without a request iterator grpc.aio takes the requests by write()
        # (which the generated typing does not know).
        call = self._client.sessions.Interact(  # type: ignore[call-arg]
            timeout=c.run_deadline(timeout), metadata=self._client.metadata
        )
        return AsyncInteraction(call, start, self._error, (self._calls, self._cut_error))

    run_collect = _collected(
        run,
        "run_collect",
        """Runs code and returns everything it produced: output, exit, and
        ``artifacts`` (whole files, reassembled from their chunks; ``plots``
        are the captured figures among them).""",
    )
    execute = run_collect
    execute_command = _collected(
        run_command, "execute_command", """Runs a command (see :meth:`run_command`) and collects its output."""
    )

    async def cancel(self, run_id: str) -> bool:
        """Kills a run and everything it started; ``False`` if it had ended."""
        req = session_pb2.CancelRequest(lease_id=self.lease.id, run_id=run_id)
        resp = await self._call(self._client.sessions.Cancel, req, self._client.timeout)
        return bool(resp.cancelled)

    # --- contexts and libraries -----------------------------------------------

    def context(self, language: Optional[str] = None) -> _Opening[AsyncContext]:
        """Opens a persistent interpreter context (like a notebook kernel):
        variables, imports and functions survive between its runs. ``ctx =
        await session.context()``, or ``async with session.context() as
        ctx`` (which deletes it on exit); the lease's end ends it too.
        ``language`` defaults to the pool's."""
        return _Opening(self._create_context(language))

    async def _create_context(self, language: Optional[str]) -> AsyncContext:
        req = session_pb2.CreateContextRequest(lease_id=self.lease.id, language=language or "")
        resp = await self._call(self._client.sessions.CreateContext, req, max(self._client.timeout, 60.0))
        return AsyncContext(self, resp.context_id, language or self.lease.language)

    async def _delete_context(self, context_id: str) -> None:
        req = session_pb2.DeleteContextRequest(lease_id=self.lease.id, context_id=context_id)
        await self._call(self._client.sessions.DeleteContext, req, self._client.timeout)

    async def install_libraries(self, libraries: Sequence[str], *, timeout: Optional[float] = None) -> InstallResult:
        """Installs libraries for this lease only (the reset removes them).
        Absolute paths of package files already in the container (a wheel
        uploaded with :meth:`upload`) always work; package names need a pool
        with ``lease_installs`` (else :class:`FailedPrecondition`)."""
        if isinstance(libraries, str):
            raise TypeError("libraries must be a list of names or paths, not a string")
        req = session_pb2.InstallLibrariesRequest(lease_id=self.lease.id, libraries=list(libraries))
        deadline = timeout or max(self._client.timeout, c.DEFAULT_INSTALL_TIMEOUT)
        resp = await self._call(self._client.sessions.InstallLibraries, req, deadline)
        return InstallResult(resp.log, seconds_of(resp.duration))

    # --- files --------------------------------------------------------------

    async def upload(
        self,
        dest: str,
        source: c.Source,
        *,
        mode: Optional[int] = None,
        timeout: float = c.DEFAULT_TRANSFER_TIMEOUT,
    ) -> UploadResult:
        """Writes ``source`` (bytes, a local file path or a binary file object)
        to the absolute path ``dest`` in the container, in chunks."""
        requests = c.upload_requests(self.lease.id, dest, source, mode=mode)
        resp = await self._call(self._client.artifacts.Upload, iter(requests), timeout)
        return UploadResult(resp.path, resp.size, resp.sha256)

    async def upload_dir(
        self, local_dir: Union[str, "os.PathLike[str]"], dest: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> UploadResult:
        """Copies a local directory's contents into ``dest`` (as a tar)."""
        requests = c.upload_requests(self.lease.id, dest, c.tar_of_directory(local_dir), tar=True)
        resp = await self._call(self._client.artifacts.Upload, iter(requests), timeout)
        return UploadResult(resp.path, resp.size, resp.sha256)

    async def _download(self, path: str, timeout: float) -> AsyncIterator[Union[FileInfo, bytes]]:
        """The header, then the chunks, of a download."""
        self._check()
        call = self._client.artifacts.Download(
            artifact_pb2.DownloadRequest(lease_id=self.lease.id, path=path),
            timeout=timeout,
            metadata=self._client.metadata,
        )
        self._calls.add(call)
        try:
            async for resp in call:
                part = resp.WhichOneof("part")
                if part == "header":
                    h = resp.header
                    yield FileInfo(h.path, c.kind_name(h.kind), h.mode, h.size)
                elif part == "chunk":
                    yield resp.chunk
        except grpc.RpcError as e:
            raise self._error(e) from None
        except asyncio.CancelledError:
            if not self._calls.was_cut(call):
                raise
            raise self._cut_error() from None
        finally:
            self._calls.discard(call)
            call.cancel()

    async def download(self, path: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT) -> bytes:
        """The bytes of a file in the container (a directory comes as a tar)."""
        out = bytearray()
        async for part in self._download(path, timeout):
            if isinstance(part, bytes):
                out += part
        return bytes(out)

    async def download_file(
        self, path: str, dest: Union[str, "os.PathLike[str]"], *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> FileInfo:
        """Streams a file of the container into the local file ``dest``."""
        info: Optional[FileInfo] = None
        with open(dest, "wb") as f:
            async for part in self._download(path, timeout):
                if isinstance(part, FileInfo):
                    info = part
                else:
                    f.write(part)
        if info is None:
            raise SandpoolError(f"download of {path} ended without a header")
        return info

    async def list_artifacts(self, run_id: Optional[str] = None) -> List[ArtifactInfo]:
        """Files in the pool's output directory (of one run, or of all)."""
        req = artifact_pb2.ListArtifactsRequest(lease_id=self.lease.id, run_id=run_id or "")
        resp = await self._call(self._client.artifacts.ListArtifacts, req, self._client.timeout)
        return [ArtifactInfo.from_pb(a) for a in resp.artifacts]


class AsyncOwnedPool(_Ends):
    """A pool that belongs to this client, made by
    :meth:`AsyncClient.create_owned_pool`: kept alive in the background at a
    third of its owner TTL, deleted by :meth:`delete` (or on leaving ``async
    with``), by the server when this client stops keeping it alive, and, when
    garbage collected undeleted, by its keepalive task.

    ``pool`` is the pool as CreatePool (or the last :meth:`get`) answered.
    Once the pool is lost (``lost`` says why), every call raises
    :class:`PoolLost`.
    """

    def __init__(self, client: AsyncClient, name: str, owner_ttl: float, started: float) -> None:
        self._client = client
        self.name = name
        self.pool = pool_pb2.Pool()
        self._deleted = False
        self._calls = _Calls()
        self._keeper: _Keeper[PoolLost] = _Keeper(
            client, self, _OwnedPool(name), owner_ttl, started, exists=False
        )
        self._keeper._on_give_up = self._calls.cut

    def _exists(self, pool: pool_pb2.Pool) -> None:
        """CreatePool answered."""
        self.pool = pool
        self._keeper.exists()

    @property
    def owner_ttl(self) -> float:
        """Seconds without a keepalive after which the server deletes the pool."""
        return self._keeper.ttl

    @property
    def renewals(self) -> int:
        """Keepalives the server confirmed so far."""
        return self._keeper.renewals

    @property
    def lost(self) -> Optional[str]:
        """Why the pool is lost (or that this client deleted it), or ``None``
        while it is held."""
        lost = self._lost()
        return lost.reason if lost is not None else None

    @property
    def closed(self) -> bool:
        """True once :meth:`delete` was called."""
        return self._deleted

    def _lost(self) -> Optional[PoolLost]:
        if self._deleted:
            return PoolLost(self.name, "the pool was deleted by this client")
        return self._keeper.lost()

    def check(self) -> None:
        """Raises :class:`PoolLost` once the pool is lost or deleted."""
        lost = self._lost()
        if lost is not None:
            raise self._keeper.target.copy(lost)

    def _error(self, err: BaseException) -> SandpoolError:
        """The exception of a failed call about the pool; one that says the
        pool is gone marks it lost."""
        lost = pool_lost_of(err, self.name)
        if lost is not None:
            self._keeper.mark_lost(lost)
            return lost
        return from_rpc_error(err)

    async def _call(self, fn: Callable[..., Any], request: Any, timeout: float) -> Any:
        """A call about the pool: checked first, cut when the keepalive gives
        up on the pool, its error mapped."""
        self.check()
        call = fn(request, timeout=timeout, metadata=self._client.metadata)
        self._calls.add(call)
        try:
            return await call
        except grpc.RpcError as e:
            raise self._error(e) from None
        except asyncio.CancelledError:
            if not self._calls.was_cut(call):
                raise
            raise self._keeper.target.copy(
                self._keeper.lost() or PoolLost(self.name, "the keepalive gave up on the pool")
            ) from None
        finally:
            self._calls.discard(call)

    def acquire(
        self,
        ttl: Optional[c.Seconds] = None,
        wait: Optional[c.Seconds] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[c.LeaseFiles] = None,
    ) -> _Opening[AsyncSession]:
        """Leases a warm container of this pool, as :meth:`AsyncClient.acquire`
        does; raises :class:`PoolLost` once the pool is lost."""
        return _Opening(self._acquire(ttl, wait, env, files))

    async def _acquire(
        self,
        ttl: Optional[c.Seconds],
        wait: Optional[c.Seconds],
        env: Optional[Mapping[str, str]],
        files: Optional[c.LeaseFiles],
    ) -> AsyncSession:
        lease, started = await self._acquire_lease(ttl, wait, env, files)
        return AsyncSession(self._client, lease, started)

    async def _acquire_lease(
        self,
        ttl: Optional[c.Seconds],
        wait: Optional[c.Seconds],
        env: Optional[Mapping[str, str]],
        files: Optional[c.LeaseFiles],
    ) -> Tuple[session_pb2.Lease, float]:
        req = c.acquire_request(self.name, ttl=ttl, env=env, files=files)
        deadline = c.DEFAULT_ACQUIRE_WAIT if wait is None else c.to_seconds(wait)
        sent = time.monotonic()
        resp = await self._call(self._client.sessions.Acquire, req, deadline)
        return resp.lease, _granted_from(sent, resp)

    async def get(self) -> pool_pb2.Pool:
        """The pool now (its spec, phase, stats, ``owner_expire_time``); also
        kept as ``pool``."""
        req = pool_pb2.GetPoolRequest(name=self.name)
        resp: pool_pb2.GetPoolResponse = await self._call(self._client.pools.GetPool, req, self._client.timeout)
        self.pool = resp.pool
        return self.pool

    async def stats(self) -> pool_pb2.PoolStats:
        """The pool's statistics."""
        req = pool_pb2.GetPoolStatsRequest(name=self.name)
        resp: pool_pb2.GetPoolStatsResponse = await self._call(
            self._client.pools.GetPoolStats, req, self._client.timeout
        )
        return resp.stats

    async def delete(self, *, wait: bool = False, timeout: Optional[float] = None) -> int:
        """Deletes the pool now (idempotent) and stops its keepalive; returns
        the containers still busy (their leases end with the drain). With
        ``wait``, returns once every container is removed. Without, the call
        waits at most the owner TTL (or the client's timeout, if shorter):
        past it the server deletes the pool by itself. A lost pool is gone
        already: nothing is sent."""
        if self._deleted:
            return 0
        lost = self._keeper.lost()
        self._deleted = True
        await self._keeper.stop()
        if lost is not None:
            return 0
        req = pool_pb2.DeletePoolRequest(name=self.name, wait=wait)
        if timeout is not None:
            deadline = timeout
        elif wait:
            deadline = max(self._client.timeout, 60.0)
        else:
            deadline = min(self._client.timeout, max(self.owner_ttl, 1.0))
        try:
            resp = await self._client.pools.DeletePool(req, timeout=deadline, metadata=self._client.metadata)
        except grpc.RpcError as e:
            if status_of(e)[0] == grpc.StatusCode.NOT_FOUND:
                return 0
            raise from_rpc_error(e) from None
        return int(resp.busy_remaining)

    close = delete
    _end = delete

    async def __aenter__(self) -> AsyncOwnedPool:
        return self


def _copy(lost: LeaseLost) -> LeaseLost:
    """A fresh exception for a loss raised again."""
    return LeaseLost(lost.lease_id, lost.reason, code=lost.code, details=lost.details, state=lost.state)


class AsyncContext(_Ends):
    """A persistent interpreter in the session's container: what a run
    defines stays for the next, like cells of a notebook. An exception ends
    its run (traceback on stderr, exit code 1) and keeps the context; a
    timeout interrupts the run, or, if the code ignores the interrupt,
    restarts the context (``result.context_restarted``).

    ``async with session.context() as ctx: await ctx.run_collect("x = 1")``;
    leaving the block deletes the context. Contexts are private to their
    lease."""

    def __init__(self, session: AsyncSession, context_id: str, language: str) -> None:
        self._session = session
        self.id = context_id
        self.language = language
        self._deleted = False

    def run(
        self,
        code: Union[str, bytes],
        *,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
        plot_format: c.PlotFormatArg = None,
    ) -> AsyncRunStream:
        """Runs code in the context; events stream as for a session's run."""
        if self._deleted:
            raise SandpoolError(f"context {self.id} was deleted")
        req = c.run_request(
            self._session.lease_id,
            code=code,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
            plot_format=plot_format,
            context_id=self.id,
        )
        return self._session._start(req, timeout)

    run_collect = _collected(run, "run_collect", """Runs code in the context and returns everything it produced.""")
    execute = run_collect

    async def delete(self) -> None:
        """Ends the context and its interpreter (idempotent; a context whose
        lease is gone is gone with it)."""
        if self._deleted:
            return
        self._deleted = True
        try:
            await self._session._delete_context(self.id)
        except (NotFound, LeaseLost):
            pass

    close = delete
    _end = delete

    async def __aenter__(self) -> AsyncContext:
        return self


_RECONNECT_FIRST_DELAY = 0.05
"""First wait before calling again after a run's connection broke; it
doubles up to ``_RECONNECT_MAX_DELAY``. The lease's TTL bounds the retry."""
_RECONNECT_MAX_DELAY = 1.0


def _transport_failure(err: grpc.RpcError) -> bool:
    """Whether a failed call says the connection broke rather than anything
    about the run: UNAVAILABLE, UNKNOWN or INTERNAL made up by the transport.
    The server's own errors carry a sandpool ErrorInfo and are final (its
    UNAVAILABLE says the engine is down or the server stopping)."""
    code, _ = status_of(err)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        return details_of(err).error_info is None
    return False


class _Resume:
    """How a resumable run's stream is picked up after a broken connection:
    its Run again (same run id: it never runs twice) until an event came,
    then Attach after the last event; within the run's own deadline."""

    def __init__(self, session: AsyncSession, request: session_pb2.RunRequest, deadline: float) -> None:
        self.session = session
        self.request = request
        self.deadline_at = time.monotonic() + deadline

    def call(self, after_seq: int) -> Any:
        client = self.session._client
        timeout = max(0.001, self.deadline_at - time.monotonic())
        if after_seq == 0:
            return client.sessions.Run(self.request, timeout=timeout, metadata=client.metadata)
        attach = session_pb2.AttachRequest(
            lease_id=self.request.lease_id, run_id=self.request.run_id, after_seq=after_seq
        )
        return client.sessions.Attach(attach, timeout=timeout, metadata=client.metadata)

    def cancel(self) -> None:
        """Cancels the run on the server (it outlives its stream there)."""
        client = self.session._client
        request = session_pb2.CancelRequest(lease_id=self.request.lease_id, run_id=self.request.run_id)

        async def cancel() -> None:
            with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
                await client.sessions.Cancel(request, timeout=client.timeout, metadata=client.metadata)

        with contextlib.suppress(RuntimeError):  # no running loop: nothing to cancel with
            task = asyncio.get_running_loop().create_task(cancel())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)


_BACKGROUND: Set["asyncio.Task[None]"] = set()
"""Cancels in flight (a task must be referenced until it is done)."""


class AsyncRunStream:
    """The events of one run, as they arrive: ``async for event in stream``
    or ``await stream.collect()``. A session's runs survive a broken
    connection: the stream resumes where it was (a :class:`Gap` event says
    what the server could not keep meanwhile).

    Leaving an ``async with`` block (or calling :meth:`cancel`) before the
    run ended cancels the run.
    """

    def __init__(
        self,
        call: Any,
        on_error: Callable[[BaseException], SandpoolError],
        cut: Optional[Tuple[_Calls, Callable[[], SandpoolError]]] = None,
        resume: Optional[_Resume] = None,
    ) -> None:
        self._resume = resume
        self._last_seq = 0
        self._delay = _RECONNECT_FIRST_DELAY
        self._call = call
        self._on_error = on_error
        # The session's in-flight calls, which the run is one of until it
        # ends, and the error of a call cut by the keepalive giving up.
        self._calls, self._on_cut = cut if cut is not None else (_Calls(), lambda: SandpoolError("the call was cut"))
        self._calls.add(call)
        self._collector = RunCollector()
        self._cancelled = False
        self.run_id: Optional[str] = None
        self.exit: Optional[Exit] = None

    def __aiter__(self) -> AsyncRunStream:
        return self

    async def __anext__(self) -> RunEvent:
        while True:
            if self.exit is not None:
                raise StopAsyncIteration
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                self._calls.discard(self._call)
                if self._cancelled:
                    raise StopAsyncIteration from None
                if self._calls.was_cut(self._call):
                    raise self._on_cut() from None
                raise
            except grpc.RpcError as e:
                self._calls.discard(self._call)
                code, _ = status_of(e)
                if self._cancelled and code == grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                if self._resume is not None and _transport_failure(e):
                    await self._reconnect()
                    continue
                raise self._on_error(e) from None
            if resp is _EOF:
                self._calls.discard(self._call)
                if self._cancelled:
                    raise StopAsyncIteration
                if self._resume is not None:
                    # Cut short without the exit: a proxy closed it.
                    await self._reconnect()
                    continue
                raise SandpoolError("the run's stream ended without an exit event")
            self._delay = _RECONNECT_FIRST_DELAY
            self._last_seq = resp.seq
            event = event_from_pb(resp)
            if event is None:
                continue
            self._collector.add(event)
            if isinstance(event, Started):
                self.run_id = event.run_id
            elif isinstance(event, Exit):
                self.exit = event
                self._calls.discard(self._call)
            return event

    async def _reconnect(self) -> None:
        """Calls again after a wait (growing while calls keep failing), unless
        the lease is lost (the keepalive gave up: its TTL passed without a
        renewal) or the run's deadline passed."""
        resume = self._resume
        assert resume is not None
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, _RECONNECT_MAX_DELAY)
        resume.session._check()
        if time.monotonic() >= resume.deadline_at:
            raise SandpoolError(f"the run's connection broke and did not come back before its deadline (run {resume.request.run_id})")
        self._call = resume.call(self._last_seq)
        self._calls.add(self._call)

    async def collect(self) -> RunResult:
        """Consumes the remaining events and returns the run's result."""
        async for _ in self:
            pass
        if self.exit is None:
            raise SandpoolError("the run was cancelled before it ended")
        return self._collector.result()

    def cancel(self) -> None:
        """Cancels the run and drops its stream."""
        self._cancelled = True
        self._calls.discard(self._call)
        self._call.cancel()
        if self._resume is not None and self.exit is None:
            self._resume.cancel()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    def __del__(self) -> None:
        # An abandoned stream must not keep its run going.
        if getattr(self, "exit", True) is None:
            try:
                self._calls.discard(self._call)
                self._call.cancel()
                if self._resume is not None and not self._cancelled:
                    self._resume.cancel()
            except Exception:  # noqa: BLE001 - loop already closed
                pass

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.exit is None:
            self.cancel()


class AsyncInteraction(AsyncRunStream):
    """An interactive run (from :meth:`AsyncSession.interact`): send it input,
    end of input, signals and terminal sizes while iterating its events as an
    :class:`AsyncRunStream`. Leaving an ``async with`` block before the run
    ended kills it."""

    def __init__(
        self,
        call: Any,
        start: session_pb2.InteractRequest,
        on_error: Callable[[BaseException], SandpoolError],
        cut: Optional[Tuple[_Calls, Callable[[], SandpoolError]]] = None,
    ) -> None:
        super().__init__(call, on_error, cut)
        # Sent at once; every later request waits for it, so they keep
        # their order.
        self._sent: asyncio.Future[None] = asyncio.ensure_future(call.write(start))
        self._sent.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._stdin_closed = False

    async def _send(self, request: session_pb2.InteractRequest) -> None:
        try:
            await self._sent
            self._sent = asyncio.ensure_future(self._call.write(request))
            await self._sent
        except (grpc.RpcError, asyncio.InvalidStateError, asyncio.CancelledError):
            if self.exit is None and not self._cancelled:
                # The call ended: reading says how (its error, or the exit).
                raise SandpoolError("the interactive run is over; read its events for how it ended") from None
            raise SandpoolError("the interactive run is over") from None

    async def write(self, data: Union[str, bytes]) -> None:
        """Writes to the program's standard input (waits while the program
        does not read)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        await self._send(session_pb2.InteractRequest(stdin=payload))

    async def close_stdin(self) -> None:
        """Closes the program's standard input: it reads end of file."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        await self._send(session_pb2.InteractRequest(close_stdin=session_pb2.CloseStdin()))

    async def signal(self, signum: int) -> None:
        """Sends a signal (``signal.SIGINT``, or its number) to every
        process of the run."""
        await self._send(session_pb2.InteractRequest(signal=int(signum)))

    async def resize(self, rows: int, columns: int) -> None:
        """Resizes the run's terminal (a run started with ``terminal``)."""
        await self._send(session_pb2.InteractRequest(resize=session_pb2.TerminalSize(rows=rows, columns=columns)))

    async def __aenter__(self) -> AsyncInteraction:
        return self
