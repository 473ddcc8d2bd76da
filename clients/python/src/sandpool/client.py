"""The synchronous client: :class:`Client`, :class:`Session`, :class:`RunStream`."""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref
from types import TracebackType
from typing import (
    Any,
    Callable,
    Iterator,
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

__all__ = ["Client", "Context", "RunStream", "Session"]

T = TypeVar("T")


class Client:
    """A connection to a sandpool server.

    ``addr`` defaults to ``$SANDPOOL_ADDR``, else ``127.0.0.1:50051``;
    ``token`` (default ``$SANDPOOL_TOKEN``) is sent as a bearer token; ``tls``
    is ``None``/``False`` for plaintext, ``True`` for TLS with the system
    roots, or ``grpc.ChannelCredentials``. Every unary call has a deadline of
    ``timeout`` seconds. The client is thread-safe; share one per process.
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
        creds = c.channel_credentials(tls)
        if creds is None:
            self._channel = grpc.insecure_channel(self.addr, options=c.CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(self.addr, creds, options=c.CHANNEL_OPTIONS)
        self.pools = pool_pb2_grpc.PoolServiceStub(self._channel)
        self.sessions = session_pb2_grpc.SessionServiceStub(self._channel)
        self.artifacts = artifact_pb2_grpc.ArtifactServiceStub(self._channel)

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        return self._metadata

    def close(self) -> None:
        """Closes the channel (sessions still open lose their keepalive)."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def _unary(self, fn: Callable[..., T], request: Any, timeout: Optional[float] = None) -> T:
        try:
            return fn(request, timeout=timeout or self.timeout, metadata=self._metadata)
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
    ) -> Session:
        """Leases a warm container of ``pool``.

        ``ttl`` is the lease's TTL (default: the pool's); ``wait`` bounds how
        long the call may wait for a free container (the pool's
        ``acquisition_timeout`` applies too). ``env`` is set for every run of
        the lease; ``files`` (path -> content, or path -> (content, mode)) are
        placed in the container before the lease is handed out; the reset
        removes both. Raises :class:`PoolExhausted` when no container is to be
        had, :class:`NotFound` for an unknown pool.
        """
        req = c.acquire_request(pool, ttl=ttl, env=env, files=files)
        deadline = c.DEFAULT_ACQUIRE_WAIT if wait is None else c.to_seconds(wait)
        started = time.monotonic()
        resp = self._unary(self.sessions.Acquire, req, deadline)
        return Session(self, resp.lease, started)

    # --- pools --------------------------------------------------------------

    def create_pool(
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
        """Creates a pool. The PoolConfig fields are keyword arguments (``None``
        takes the server's default, which is llm-sandbox's); ``runtime`` maps
        RuntimeConfig field names (``mem_limit``, ``cpus``, ``network``, ...).
        ``libraries`` are installed into every container at warm-up, over
        ``install_network`` (default "bridge") from ``package_index_url``
        (default: the installer's own index); ``lease_installs`` lets
        :meth:`Session.install_libraries` fetch names over the network too.
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
        )
        return self.create_pool_from_spec(spec, wait_ready=wait_ready, timeout=timeout)

    def create_pool_from_spec(
        self, spec: pool_pb2.PoolSpec, *, wait_ready: bool = False, timeout: Optional[float] = None
    ) -> pool_pb2.Pool:
        """Creates a pool from a ready-made ``PoolSpec`` message."""
        req = pool_pb2.CreatePoolRequest(spec=spec, wait_ready=wait_ready)
        deadline = timeout or (max(self.timeout, 120.0) if wait_ready else self.timeout)
        return self._unary(self.pools.CreatePool, req, deadline).pool

    def get_pool(self, name: str) -> pool_pb2.Pool:
        return self._unary(self.pools.GetPool, pool_pb2.GetPoolRequest(name=name)).pool

    def list_pools(self) -> List[pool_pb2.Pool]:
        return list(self._unary(self.pools.ListPools, pool_pb2.ListPoolsRequest()).pools)

    def delete_pool(self, name: str, *, wait: bool = False, timeout: Optional[float] = None) -> int:
        """Deletes (drains) a pool; returns the containers still busy. With
        ``wait``, returns once every container of the pool is removed."""
        req = pool_pb2.DeletePoolRequest(name=name, wait=wait)
        deadline = timeout or (max(self.timeout, 60.0) if wait else self.timeout)
        return self._unary(self.pools.DeletePool, req, deadline).busy_remaining

    def get_stats(self, name: str) -> pool_pb2.PoolStats:
        return self._unary(self.pools.GetPoolStats, pool_pb2.GetPoolStatsRequest(name=name)).stats

    def watch_stats(self, name: str, *, timeout: Optional[float] = None) -> Iterator[pool_pb2.PoolStats]:
        """Yields the pool's stats now and after every change, until the pool
        is deleted (the last one has ``closed`` set) or the caller closes the
        generator. With ``timeout``, the stream's deadline: when it passes,
        :class:`DeadlineExceeded` is raised (``None``: no deadline)."""
        call: Any = self.pools.WatchPoolStats(
            pool_pb2.WatchPoolStatsRequest(name=name), timeout=timeout, metadata=self._metadata
        )
        try:
            for resp in call:
                yield resp.stats
        except grpc.RpcError as e:
            code, _ = status_of(e)
            if code == grpc.StatusCode.CANCELLED and not call.is_active():
                return
            raise from_rpc_error(e) from None
        finally:
            call.cancel()


# --- sessions ---------------------------------------------------------------


class _Keeper:
    """The keepalive of one lease, run by a background thread.

    It holds no reference to its :class:`Session`, so a session dropped
    without ``release()`` is garbage collected and its finalizer releases the
    lease. The lease counts as lost when the server answers a keepalive with a
    state other than ACTIVE, or says the lease is gone, or no keepalive was
    confirmed within the TTL.
    """

    def __init__(self, client: Client, lease_id: str, ttl: float, started: float) -> None:
        self._stub = client.sessions
        self._metadata = client.metadata
        self.lease_id = lease_id
        self.ttl = ttl
        self._lock = threading.Lock()
        self._lost: Optional[str] = None
        self._confirmed_until = started + ttl
        self._stop = threading.Event()
        self._requests: Optional["queue.Queue[Optional[session_pb2.KeepAliveRequest]]"] = None
        self._call: Any = None
        self.renewals = 0
        self._thread = threading.Thread(target=self._run, name=f"sandpool-keepalive-{lease_id[:8]}", daemon=True)
        self._thread.start()

    # what the session asks

    def lost_reason(self) -> Optional[str]:
        with self._lock:
            if self._lost is not None:
                return self._lost
            if time.monotonic() > self._confirmed_until:
                self._lost = f"no keepalive was confirmed within the lease TTL ({self.ttl:g}s)"
            return self._lost

    def mark_lost(self, reason: str) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = reason

    def stop(self) -> None:
        self._stop.set()
        self._close_stream()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    # the thread

    def _open_stream(self) -> Any:
        requests: "queue.Queue[Optional[session_pb2.KeepAliveRequest]]" = queue.Queue()

        def outgoing() -> Iterator[session_pb2.KeepAliveRequest]:
            while True:
                item = requests.get()
                if item is None:
                    return
                yield item

        lifetime = max(c.KEEPALIVE_STREAM_LIFETIME, 10 * self.ttl)
        call = self._stub.KeepAlive(outgoing(), timeout=lifetime, metadata=self._metadata)
        with self._lock:
            self._requests = requests
            self._call = call
        return call

    def _close_stream(self) -> None:
        with self._lock:
            requests, call = self._requests, self._call
            self._requests, self._call = None, None
        if requests is not None:
            requests.put(None)
        if call is not None:
            call.cancel()

    def _run(self) -> None:
        interval = max(self.ttl / 3.0, c.MIN_KEEPALIVE)
        retry = min(interval, 1.0)
        wait = interval
        request = session_pb2.KeepAliveRequest(lease_id=self.lease_id)
        while not self._stop.wait(wait):
            try:
                call = self._call if self._call is not None else self._open_stream()
                requests = self._requests
                if requests is None:
                    break
                sent = time.monotonic()
                requests.put(request)
                resp = next(call)
            except StopIteration:
                # The server ended the stream (say, it is stopping): reopen.
                self._close_stream()
                wait = retry
                continue
            except grpc.RpcError as e:
                if self._stop.is_set():
                    break
                self._close_stream()
                code, message = status_of(e)
                if code in c.lease_codes():
                    self.mark_lost(message)
                    break
                wait = 0.0 if code == grpc.StatusCode.DEADLINE_EXCEEDED else retry
                if self.lost_reason() is not None:
                    break
                continue
            except Exception:  # noqa: BLE001 - e.g. the client's channel was closed
                if self._stop.is_set():
                    break
                self._close_stream()
                wait = retry
                if self.lost_reason() is not None:
                    break
                continue
            state = LeaseState.from_pb(resp.state)
            if state is LeaseState.ACTIVE:
                ttl = seconds_of(resp.ttl) if resp.HasField("ttl") else self.ttl
                with self._lock:
                    self._confirmed_until = sent + ttl
                    self.renewals += 1
                wait = interval
            else:
                self.mark_lost(f"the server answered the keepalive with {state.name}")
                break
        self._close_stream()


def _finalize(keeper: _Keeper, stub: session_pb2_grpc.SessionServiceStub, metadata: Any, timeout: float) -> None:
    """Releases a lease whose Session was dropped without release()."""
    keeper.stop()
    try:
        stub.Release(session_pb2.ReleaseRequest(lease_id=keeper.lease_id), timeout=timeout, metadata=metadata)
    except Exception:  # noqa: BLE001 - best effort at garbage collection or exit
        pass


class Session:
    """A lease on one warm container, kept alive in the background.

    Use it as a context manager (``with client.acquire("python") as s:``) or
    call :meth:`release`; it is also released when garbage collected and at
    interpreter exit. After the lease is lost every call raises
    :class:`LeaseLost`.
    """

    def __init__(self, client: Client, lease: session_pb2.Lease, started: float) -> None:
        self._client = client
        self.lease = LeaseInfo.from_pb(lease)
        ttl = self.lease.ttl if self.lease.ttl > 0 else 30.0
        self._keeper = _Keeper(client, self.lease.id, ttl, started)
        self._released = False
        self._finalizer = weakref.finalize(
            self, _finalize, self._keeper, client.sessions, client.metadata, client.timeout
        )

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

    def release(self) -> LeaseState:
        """Ends the lease (idempotent). Returns how it stood before:
        ACTIVE when this call ended it."""
        if self._released:
            return LeaseState.RELEASED
        self._released = True
        self._finalizer.detach()
        self._keeper.stop()
        try:
            resp = self._client.sessions.Release(
                session_pb2.ReleaseRequest(lease_id=self.lease.id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return LeaseState.from_pb(resp.previous_state)

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.release()
            return
        # Never hide the body's own exception behind a failed release.
        try:
            self.release()
        except SandpoolError:
            pass

    # --- runs ---------------------------------------------------------------

    def _start(self, request: session_pb2.RunRequest, timeout: Optional[c.Seconds]) -> RunStream:
        self._check()
        call = self._client.sessions.Run(
            request, timeout=c.run_deadline(timeout), metadata=self._client.metadata
        )
        return RunStream(call, self._error)

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
    ) -> RunStream:
        """Runs code in the pool's language (or ``language``); iterate the
        returned stream for events as they are produced. Figures the code
        shows or leaves open come back as plot artifacts in ``plot_format``
        (``"png"`` by default, ``"svg"``, ``"pdf"``)."""
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
    ) -> RunStream:
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

    def run_collect(
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
        """Runs code and returns everything it produced: output, exit, and
        ``artifacts`` (whole files, reassembled from their chunks; ``plots``
        are the captured figures among them)."""
        return self.run(
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

    def execute_command(
        self,
        command: Union[str, Sequence[str]],
        *,
        stdin: Optional[Union[str, bytes]] = None,
        env: Optional[Mapping[str, str]] = None,
        working_dir: Optional[str] = None,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
    ) -> RunResult:
        """Runs a command (see :meth:`run_command`) and collects its output."""
        return self.run_command(
            command,
            stdin=stdin,
            env=env,
            working_dir=working_dir,
            timeout=timeout,
            output_limit_bytes=output_limit_bytes,
        ).collect()

    def cancel(self, run_id: str) -> bool:
        """Kills a run and everything it started; ``False`` if it had ended."""
        self._check()
        try:
            resp = self._client.sessions.Cancel(
                session_pb2.CancelRequest(lease_id=self.lease.id, run_id=run_id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return resp.cancelled

    # --- contexts and libraries -----------------------------------------------

    def context(self, language: Optional[str] = None) -> Context:
        """Opens a persistent interpreter context (like a notebook kernel):
        variables, imports and functions survive between its runs. Use it
        as a context manager, or :meth:`Context.delete` it; the lease's end
        ends it too. ``language`` defaults to the pool's."""
        self._check()
        try:
            resp = self._client.sessions.CreateContext(
                session_pb2.CreateContextRequest(lease_id=self.lease.id, language=language or ""),
                timeout=max(self._client.timeout, 60.0),
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return Context(self, resp.context_id, language or self.lease.language)

    def _delete_context(self, context_id: str) -> None:
        self._check()
        try:
            self._client.sessions.DeleteContext(
                session_pb2.DeleteContextRequest(lease_id=self.lease.id, context_id=context_id),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None

    def install_libraries(self, libraries: Sequence[str], *, timeout: Optional[float] = None) -> InstallResult:
        """Installs libraries for this lease only (the reset removes them).
        Absolute paths of package files already in the container (a wheel
        uploaded with :meth:`upload`) always work; package names need a pool
        with ``lease_installs`` (else :class:`FailedPrecondition`)."""
        self._check()
        if isinstance(libraries, str):
            raise TypeError("libraries must be a list of names or paths, not a string")
        try:
            resp = self._client.sessions.InstallLibraries(
                session_pb2.InstallLibrariesRequest(lease_id=self.lease.id, libraries=list(libraries)),
                timeout=timeout or max(self._client.timeout, c.DEFAULT_INSTALL_TIMEOUT),
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return InstallResult(resp.log, seconds_of(resp.duration))

    # --- files --------------------------------------------------------------

    def upload(
        self,
        dest: str,
        source: c.Source,
        *,
        mode: Optional[int] = None,
        timeout: float = c.DEFAULT_TRANSFER_TIMEOUT,
    ) -> UploadResult:
        """Writes ``source`` (bytes, a local file path or a binary file object)
        to the absolute path ``dest`` in the container, in chunks."""
        self._check()
        requests = c.upload_requests(self.lease.id, dest, source, mode=mode)
        try:
            resp = self._client.artifacts.Upload(requests, timeout=timeout, metadata=self._client.metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return UploadResult(resp.path, resp.size, resp.sha256)

    def upload_dir(
        self, local_dir: Union[str, "os.PathLike[str]"], dest: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> UploadResult:
        """Copies a local directory's contents into ``dest`` (as a tar)."""
        self._check()
        requests = c.upload_requests(self.lease.id, dest, c.tar_of_directory(local_dir), tar=True)
        try:
            resp = self._client.artifacts.Upload(requests, timeout=timeout, metadata=self._client.metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None
        return UploadResult(resp.path, resp.size, resp.sha256)

    def _download(self, path: str, timeout: float) -> Iterator[Union[FileInfo, bytes]]:
        self._check()
        call: Any = self._client.artifacts.Download(
            artifact_pb2.DownloadRequest(lease_id=self.lease.id, path=path),
            timeout=timeout,
            metadata=self._client.metadata,
        )
        try:
            for resp in call:
                part = resp.WhichOneof("part")
                if part == "header":
                    h = resp.header
                    yield FileInfo(h.path, c.kind_name(h.kind), h.mode, h.size)
                elif part == "chunk":
                    yield resp.chunk
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()

    def download(self, path: str, *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT) -> bytes:
        """The bytes of a file in the container (a directory comes as a tar)."""
        out = bytearray()
        for part in self._download(path, timeout):
            if isinstance(part, bytes):
                out += part
        return bytes(out)

    def download_file(
        self, path: str, dest: Union[str, "os.PathLike[str]"], *, timeout: float = c.DEFAULT_TRANSFER_TIMEOUT
    ) -> FileInfo:
        """Streams a file of the container into the local file ``dest``."""
        info: Optional[FileInfo] = None
        with open(dest, "wb") as f:
            for part in self._download(path, timeout):
                if isinstance(part, FileInfo):
                    info = part
                else:
                    f.write(part)
        if info is None:
            raise SandpoolError(f"download of {path} ended without a header")
        return info

    def list_artifacts(self, run_id: Optional[str] = None) -> List[ArtifactInfo]:
        """Files in the pool's output directory (of one run, or of all)."""
        self._check()
        try:
            resp = self._client.artifacts.ListArtifacts(
                artifact_pb2.ListArtifactsRequest(lease_id=self.lease.id, run_id=run_id or ""),
                timeout=self._client.timeout,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as e:
            raise self._error(e) from None
        return [ArtifactInfo.from_pb(a) for a in resp.artifacts]


class Context:
    """A persistent interpreter in the session's container: what a run
    defines stays for the next, like cells of a notebook. An exception ends
    its run (traceback on stderr, exit code 1) and keeps the context; a
    timeout interrupts the run, or, if the code ignores the interrupt,
    restarts the context (``result.context_restarted``).

    ``with session.context() as ctx: ctx.run_collect("x = 1")``; leaving the
    block deletes the context. Contexts are private to their lease."""

    def __init__(self, session: Session, context_id: str, language: str) -> None:
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
    ) -> RunStream:
        """Runs code in the context; events stream as for :meth:`Session.run`."""
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

    def run_collect(
        self,
        code: Union[str, bytes],
        *,
        timeout: Optional[c.Seconds] = None,
        output_limit_bytes: Optional[int] = None,
        plot_format: c.PlotFormatArg = None,
    ) -> RunResult:
        """Runs code in the context and returns everything it produced."""
        return self.run(code, timeout=timeout, output_limit_bytes=output_limit_bytes, plot_format=plot_format).collect()

    execute = run_collect

    def delete(self) -> None:
        """Ends the context and its interpreter (idempotent; a context whose
        lease is gone is gone with it)."""
        if self._deleted:
            return
        self._deleted = True
        try:
            self._session._delete_context(self.id)
        except (NotFound, LeaseLost):
            pass

    close = delete

    def __enter__(self) -> Context:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.delete()
            return
        try:
            self.delete()
        except SandpoolError:
            pass


class RunStream:
    """The events of one run, as they arrive. Iterate it, or :meth:`collect`.

    Leaving a ``with`` block (or calling :meth:`cancel`) before the run ended
    drops the stream, which kills the run.
    """

    def __init__(self, call: Any, on_error: Callable[[BaseException], SandpoolError]) -> None:
        self._call = call
        self._on_error = on_error
        self._collector = RunCollector()
        self._cancelled = False
        self.run_id: Optional[str] = None
        self.exit: Optional[Exit] = None

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> RunEvent:
        while True:
            if self.exit is not None:
                raise StopIteration
            try:
                resp = next(self._call)
            except StopIteration:
                if self._cancelled:
                    raise
                raise SandpoolError("the run's stream ended without an exit event") from None
            except grpc.RpcError as e:
                code, _ = status_of(e)
                if self._cancelled and code == grpc.StatusCode.CANCELLED:
                    raise StopIteration from None
                raise self._on_error(e) from None
            event = event_from_pb(resp)
            if event is None:
                continue
            self._collector.add(event)
            if isinstance(event, Started):
                self.run_id = event.run_id
            elif isinstance(event, Exit):
                self.exit = event
            return event

    def collect(self) -> RunResult:
        """Consumes the remaining events and returns the run's result."""
        for _ in self:
            pass
        if self.exit is None:
            raise SandpoolError("the run was cancelled before it ended")
        return self._collector.result()

    def cancel(self) -> None:
        """Drops the stream: the server kills the run."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> RunStream:
        return self

    def __del__(self) -> None:
        # An abandoned stream must not keep its run going.
        if getattr(self, "exit", True) is None:
            try:
                self._call.cancel()
            except Exception:  # noqa: BLE001 - interpreter teardown
                pass

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.exit is None:
            self.cancel()
