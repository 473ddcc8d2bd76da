"""The asyncio client: :class:`AsyncClient`, :class:`AsyncSession`,
:class:`AsyncRunStream`. Same calls as the sync client, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

import grpc
import grpc.aio

from . import _common as c
from .errors import LeaseLost, NotFound, SandpoolError, from_rpc_error, lease_lost_of, status_of
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

__all__ = ["AsyncClient", "AsyncContext", "AsyncRunStream", "AsyncSession"]

T = TypeVar("T")

# The end-of-stream marker of grpc.aio reads (missing from the type stubs).
_EOF: object = getattr(grpc.aio, "EOF")


class AsyncClient:
    """A connection to a sandpool server for asyncio code.

    Arguments as for :class:`sandpool.Client`. The channel is opened on first
    use, inside the running event loop; close it with ``await
    client.close()`` or ``async with AsyncClient() as client``.
    """

    def __init__(
        self,
        addr: Optional[str] = None,
        token: Optional[str] = None,
        tls: c.TLS = None,
        timeout: float = c.DEFAULT_TIMEOUT,
    ) -> None:
        self.addr = c.resolve_addr(addr)
        self.timeout = float(timeout)
        self._metadata = c.metadata_for(c.resolve_token(token))
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
        return self._metadata

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
            return await fn(request, timeout=timeout or self.timeout, metadata=self._metadata)
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
    ) -> _Acquiring:
        """Leases a warm container of ``pool``: ``session = await
        client.acquire(pool)`` or ``async with client.acquire(pool) as
        session``. Arguments as for :meth:`sandpool.Client.acquire`."""
        return _Acquiring(self._acquire(c.acquire_request(pool, ttl=ttl, env=env, files=files), wait))

    async def _acquire(self, req: session_pb2.AcquireRequest, wait: Optional[c.Seconds]) -> AsyncSession:
        deadline = c.DEFAULT_ACQUIRE_WAIT if wait is None else c.to_seconds(wait)
        started = time.monotonic()
        resp = await self._unary(self.sessions.Acquire, req, deadline)
        return AsyncSession(self, resp.lease, started)

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
        wait_ready: bool = False,
        timeout: Optional[float] = None,
    ) -> pool_pb2.Pool:
        """See :meth:`sandpool.Client.create_pool`."""
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
        )
        req = pool_pb2.CreatePoolRequest(spec=spec, wait_ready=wait_ready)
        deadline = timeout or (max(self.timeout, 120.0) if wait_ready else self.timeout)
        return (await self._unary(self.pools.CreatePool, req, deadline)).pool

    async def get_pool(self, name: str) -> pool_pb2.Pool:
        return (await self._unary(self.pools.GetPool, pool_pb2.GetPoolRequest(name=name))).pool

    async def list_pools(self) -> List[pool_pb2.Pool]:
        return list((await self._unary(self.pools.ListPools, pool_pb2.ListPoolsRequest())).pools)

    async def delete_pool(self, name: str, *, wait: bool = False, timeout: Optional[float] = None) -> int:
        req = pool_pb2.DeletePoolRequest(name=name, wait=wait)
        deadline = timeout or (max(self.timeout, 60.0) if wait else self.timeout)
        return (await self._unary(self.pools.DeletePool, req, deadline)).busy_remaining

    async def get_stats(self, name: str) -> pool_pb2.PoolStats:
        return (await self._unary(self.pools.GetPoolStats, pool_pb2.GetPoolStatsRequest(name=name))).stats

    async def watch_stats(self, name: str, *, timeout: Optional[float] = None) -> AsyncIterator[pool_pb2.PoolStats]:
        """See :meth:`sandpool.Client.watch_stats`."""
        call = self.pools.WatchPoolStats(
            pool_pb2.WatchPoolStatsRequest(name=name), timeout=timeout, metadata=self._metadata
        )
        try:
            async for resp in call:
                yield resp.stats
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


class _Acquiring:
    """What :meth:`AsyncClient.acquire` returns: awaitable, or an async
    context manager that releases the session on exit."""

    def __init__(self, coro: Awaitable[AsyncSession]) -> None:
        self._coro = coro
        self._session: Optional[AsyncSession] = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._coro
        return self._session

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._session is not None:
            await self._session.__aexit__(exc_type, exc, tb)


class _AsyncKeeper:
    """The keepalive of one lease, as an asyncio task (see the sync
    ``_Keeper``). It holds only a weak reference to its session: when the
    session is garbage collected unreleased, the task releases the lease and
    ends."""

    def __init__(self, client: AsyncClient, session: AsyncSession, ttl: float, started: float) -> None:
        self._client = client
        self._session_ref = weakref.ref(session)
        self.lease_id = session.lease.id
        self.ttl = ttl
        self._lost: Optional[str] = None
        self._confirmed_until = started + ttl
        self._call: Any = None
        self.renewals = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    def lost_reason(self) -> Optional[str]:
        if self._lost is None and time.monotonic() > self._confirmed_until:
            self._lost = f"no keepalive was confirmed within the lease TTL ({self.ttl:g}s)"
        return self._lost

    def mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason

    def _close_stream(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def stop(self) -> None:
        self._close_stream()
        if self._task is not asyncio.current_task():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        interval = max(self.ttl / 3.0, c.MIN_KEEPALIVE)
        retry = min(interval, 1.0)
        wait = interval
        request = session_pb2.KeepAliveRequest(lease_id=self.lease_id)
        lifetime = max(c.KEEPALIVE_STREAM_LIFETIME, 10 * self.ttl)
        try:
            while True:
                await asyncio.sleep(wait)
                if self._session_ref() is None:
                    # Dropped without release(): release it ourselves.
                    with contextlib.suppress(Exception):
                        await self._client.sessions.Release(
                            session_pb2.ReleaseRequest(lease_id=self.lease_id),
                            timeout=self._client.timeout,
                            metadata=self._client.metadata,
                        )
                    return
                try:
                    if self._call is None:
                        self._call = self._client.sessions.KeepAlive(
                            None, timeout=lifetime, metadata=self._client.metadata
                        )
                    call = self._call
                    sent = time.monotonic()
                    await call.write(request)
                    resp = await asyncio.wait_for(call.read(), timeout=max(self.ttl, 1.0))
                except asyncio.TimeoutError:
                    self._close_stream()
                    wait = 0.0
                    if self.lost_reason() is not None:
                        return
                    continue
                except grpc.RpcError as e:
                    self._close_stream()
                    code, message = status_of(e)
                    if code in c.lease_codes():
                        self.mark_lost(message)
                        return
                    wait = 0.0 if code == grpc.StatusCode.DEADLINE_EXCEEDED else retry
                    if self.lost_reason() is not None:
                        return
                    continue
                except Exception:  # noqa: BLE001 - e.g. the client's channel was closed
                    self._close_stream()
                    wait = retry
                    if self.lost_reason() is not None:
                        return
                    continue
                if resp is _EOF:
                    self._close_stream()
                    wait = retry
                    continue
                state = LeaseState.from_pb(resp.state)
                if state is LeaseState.ACTIVE:
                    ttl = seconds_of(resp.ttl) if resp.HasField("ttl") else self.ttl
                    self._confirmed_until = sent + ttl
                    self.renewals += 1
                    wait = interval
                else:
                    self.mark_lost(f"the server answered the keepalive with {state.name}")
                    return
        finally:
            self._close_stream()


class AsyncSession:
    """A lease on one warm container, kept alive by a background task.

    Use ``async with client.acquire(pool) as s`` or ``await s.release()``.
    After the lease is lost every call raises :class:`LeaseLost`.
    """

    def __init__(self, client: AsyncClient, lease: session_pb2.Lease, started: float) -> None:
        self._client = client
        self.lease = LeaseInfo.from_pb(lease)
        ttl = self.lease.ttl if self.lease.ttl > 0 else 30.0
        self._released = False
        self._keeper = _AsyncKeeper(client, self, ttl, started)

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
        return self._keeper.renewals

    @property
    def lost(self) -> Optional[str]:
        if self._released:
            return "the lease was released by this client"
        return self._keeper.lost_reason()

    def _check(self) -> None:
        reason = self.lost
        if reason is not None:
            raise LeaseLost(self.lease.id, reason)

    def _error(self, err: BaseException) -> SandpoolError:
        lost = lease_lost_of(err, self.lease.id)
        if lost is not None:
            self._keeper.mark_lost(lost.reason)
            return lost
        return from_rpc_error(err)

    async def release(self) -> LeaseState:
        """Ends the lease (idempotent); returns how it stood before."""
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
            raise from_rpc_error(e) from None
        return LeaseState.from_pb(resp.previous_state)

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            await self.release()
            return
        try:
            await self.release()
        except SandpoolError:
            pass

    # --- runs ---------------------------------------------------------------

    def _start(self, request: session_pb2.RunRequest, timeout: Optional[c.Seconds]) -> AsyncRunStream:
        self._check()
        call = self._client.sessions.Run(request, timeout=c.run_deadline(timeout), metadata=self._client.metadata)
        return AsyncRunStream(call, self._error)

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
        """Runs code; ``async for event in session.run(code)``."""
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
        """Runs a command: a string through ``/bin/sh -c``, a sequence as argv."""
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

    async def run_collect(
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
    ) -> RunResult:
        """Runs code and returns everything it produced (see
        :meth:`sandpool.Session.run_collect`)."""
        return await self.run(
            code,
            stdin=stdin,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            language=language,
            output_limit_bytes=output_limit_bytes,
            plot_format=plot_format,
        ).collect()

    execute = run_collect

    async def execute_command(
        self,
        command: Union[str, Sequence[str]],
        *,
        stdin: Optional[Union[str, bytes]] = None,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
    ) -> RunResult:
        return await self.run_command(
            command,
            stdin=stdin,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
        ).collect()

    async def cancel(self, run_id: str) -> bool:
        self._check()
        try:
            resp = await self._client.sessions.Cancel(
                session_pb2.CancelRequest(lease_id=self.lease.id, run_id=run_id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return resp.cancelled

    # --- contexts and libraries -----------------------------------------------

    def context(self, language: Optional[str] = None) -> _OpeningContext:
        """Opens a persistent interpreter context: ``ctx = await
        session.context()`` or ``async with session.context() as ctx`` (which
        deletes it on exit). See :meth:`sandpool.Session.context`."""
        return _OpeningContext(self._create_context(language))

    async def _create_context(self, language: Optional[str]) -> AsyncContext:
        self._check()
        try:
            resp = await self._client.sessions.CreateContext(
                session_pb2.CreateContextRequest(lease_id=self.lease.id, language=language or ""),
                timeout=max(self._client.timeout, 60.0),
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return AsyncContext(self, resp.context_id, language or self.lease.language)

    async def _delete_context(self, context_id: str) -> None:
        self._check()
        try:
            await self._client.sessions.DeleteContext(
                session_pb2.DeleteContextRequest(lease_id=self.lease.id, context_id=context_id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None

    async def install_libraries(self, libraries: Sequence[str], *, timeout: Optional[float] = None) -> InstallResult:
        """Installs libraries for this lease only; see
        :meth:`sandpool.Session.install_libraries`."""
        self._check()
        if isinstance(libraries, str):
            raise TypeError("libraries must be a list of names or paths, not a string")
        try:
            resp = await self._client.sessions.InstallLibraries(
                session_pb2.InstallLibrariesRequest(lease_id=self.lease.id, libraries=list(libraries)),
                timeout=timeout or max(self._client.timeout, c.DEFAULT_INSTALL_TIMEOUT),
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
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
        """See :meth:`sandpool.Session.upload` (a local file is read in a
        blocking way, chunk by chunk)."""
        self._check()
        requests = c.upload_requests(self.lease.id, dest, source, mode=mode)
        try:
            resp = await self._client.artifacts.Upload(
                iter(requests), timeout=timeout, metadata=self._client.metadata
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return UploadResult(resp.path, resp.size, resp.sha256)

    async def upload_dir(
        self, local_dir: Union[str, "os.PathLike[str]"], dest: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> UploadResult:
        self._check()
        requests = c.upload_requests(self.lease.id, dest, c.tar_of_directory(local_dir), tar=True)
        try:
            resp = await self._client.artifacts.Upload(
                iter(requests), timeout=timeout, metadata=self._client.metadata
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return UploadResult(resp.path, resp.size, resp.sha256)

    async def _download(self, path: str, timeout: float) -> Tuple[Optional[FileInfo], bytes]:
        self._check()
        call = self._client.artifacts.Download(
            artifact_pb2.DownloadRequest(lease_id=self.lease.id, path=path),
            timeout=timeout,
            metadata=self._client.metadata,
        )
        info: Optional[FileInfo] = None
        out = bytearray()
        try:
            async for resp in call:
                part = resp.WhichOneof("part")
                if part == "header":
                    h = resp.header
                    info = FileInfo(h.path, c.kind_name(h.kind), h.mode, h.size)
                elif part == "chunk":
                    out += resp.chunk
        except grpc.RpcError as e:
            raise self._error(e) from None
        return info, bytes(out)

    async def download(self, path: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT) -> bytes:
        return (await self._download(path, timeout))[1]

    async def download_file(
        self, path: str, dest: Union[str, "os.PathLike[str]"], *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> FileInfo:
        info, data = await self._download(path, timeout)
        if info is None:
            raise SandpoolError(f"download of {path} ended without a header")
        with open(dest, "wb") as f:
            f.write(data)
        return info

    async def list_artifacts(self, run_id: Optional[str] = None) -> List[ArtifactInfo]:
        self._check()
        try:
            resp = await self._client.artifacts.ListArtifacts(
                artifact_pb2.ListArtifactsRequest(lease_id=self.lease.id, run_id=run_id or ""),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return [ArtifactInfo.from_pb(a) for a in resp.artifacts]


class AsyncContext:
    """A persistent interpreter in the session's container, for asyncio
    code; see :class:`sandpool.Context`."""

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
        """Runs code in the context: ``async for event in ctx.run(code)``."""
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

    async def run_collect(
        self,
        code: Union[str, bytes],
        *,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
        plot_format: c.PlotFormatArg = None,
    ) -> RunResult:
        return await self.run(
            code, timeout=timeout, output_limit_bytes=output_limit_bytes, plot_format=plot_format
        ).collect()

    execute = run_collect

    async def delete(self) -> None:
        """Ends the context (idempotent)."""
        if self._deleted:
            return
        self._deleted = True
        try:
            await self._session._delete_context(self.id)
        except (NotFound, LeaseLost):
            pass

    close = delete

    async def __aenter__(self) -> AsyncContext:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            await self.delete()
            return
        try:
            await self.delete()
        except SandpoolError:
            pass


class _OpeningContext:
    """What :meth:`AsyncSession.context` returns: awaitable, or an async
    context manager that deletes the context on exit."""

    def __init__(self, coro: Awaitable[AsyncContext]) -> None:
        self._coro = coro
        self._context: Optional[AsyncContext] = None

    def __await__(self) -> Generator[Any, None, AsyncContext]:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncContext:
        self._context = await self._coro
        return self._context

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._context is not None:
            await self._context.__aexit__(exc_type, exc, tb)


class AsyncRunStream:
    """The events of one run: ``async for event in stream`` or ``await
    stream.collect()``. :meth:`cancel` drops the stream, which kills the run."""

    def __init__(self, call: Any, on_error: Callable[[BaseException], SandpoolError]) -> None:
        self._call = call
        self._on_error = on_error
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
                if self._cancelled:
                    raise StopAsyncIteration from None
                raise
            except grpc.RpcError as e:
                code, _ = status_of(e)
                if self._cancelled and code == grpc.StatusCode.CANCELLED:
                    raise StopAsyncIteration from None
                raise self._on_error(e) from None
            if resp is _EOF:
                if self._cancelled:
                    raise StopAsyncIteration
                raise SandpoolError("the run's stream ended without an exit event")
            event = event_from_pb(resp)
            if event is None:
                continue
            self._collector.add(event)
            if isinstance(event, Started):
                self.run_id = event.run_id
            elif isinstance(event, Exit):
                self.exit = event
            return event

    async def collect(self) -> RunResult:
        async for _ in self:
            pass
        if self.exit is None:
            raise SandpoolError("the run was cancelled before it ended")
        return self._collector.result()

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncRunStream:
        return self

    def __del__(self) -> None:
        if getattr(self, "exit", True) is None:
            try:
                self._call.cancel()
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
