"""The synchronous client: :class:`Client`, :class:`Session`, :class:`RunStream`,
:class:`Context`.

A thin blocking layer over the asyncio client (:mod:`sandpool.aio`), which
is the one implementation: every call runs on one background event loop
thread that this module starts on first use, and the caller's thread waits
for its result. Keepalives are tasks on that loop, so a process holds one
extra thread however many sessions it has.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import inspect
import os
import threading
import weakref
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
)

import grpc

from . import _common as c
from .aio import AsyncClient, AsyncContext, AsyncInteraction, AsyncOwnedPool, AsyncRunStream, AsyncSession
from .types import Exit, LeaseInfo, LeaseState, RunEvent
from .v1 import (
    artifact_pb2_grpc,
    pool_pb2,
    pool_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

if TYPE_CHECKING:
    from typing_extensions import Concatenate, ParamSpec

    P = ParamSpec("P")

__all__ = ["Client", "Context", "OwnedPool", "RunStream", "Session"]

T = TypeVar("T")


# --- the event loop thread --------------------------------------------------


class _Loop:
    """One event loop on a daemon thread, started on first use (and again
    in a forked child), that runs the calls of every sync client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._pid = 0

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=main, name="sandpool-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, aw: Awaitable[T]) -> T:
        """Runs ``aw`` on the loop and waits for its result."""
        if self.on_loop_thread():
            raise RuntimeError("a sync sandpool call was made on the client's own event loop thread")
        # In the caller's context (a copy): its current OpenTelemetry span
        # is what the call's trace context is taken from.
        future = asyncio.run_coroutine_threadsafe(_in_context(contextvars.copy_context(), aw), self.loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: the call must not go on
            raise

    def call(self, fn: Callable[[], T]) -> T:
        """Calls ``fn`` on the loop thread (it may create calls there) and
        returns its result."""

        async def on_loop() -> T:
            return fn()

        return self.run(on_loop())

    def submit(self, aw: Awaitable[Any]) -> None:
        """Runs ``aw`` on the loop without waiting for it (when the loop is
        still there)."""
        loop = self._loop
        if loop is not None and self._pid == os.getpid() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(_awaited(aw), loop)
        elif asyncio.iscoroutine(aw):
            aw.close()

    def stop(self) -> None:
        """Stops the loop at interpreter exit."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or self._pid != os.getpid():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


async def _in_context(context: contextvars.Context, aw: Awaitable[T]) -> T:
    """Awaits ``aw`` as a task created in ``context`` (a task runs in a copy
    of the context it is created in; Python 3.9 has no ``context=``)."""
    loop = asyncio.get_running_loop()
    return await context.run(loop.create_task, _awaited(aw))


_LOOP = _Loop()
_LIVE_CLIENTS: "weakref.WeakSet[Client]" = weakref.WeakSet()
_LIVE_SESSIONS: "weakref.WeakSet[Session]" = weakref.WeakSet()
_LIVE_POOLS: "weakref.WeakSet[OwnedPool]" = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    """Releases the leases of sessions still open, deletes the owned pools
    still open, closes the clients' channels, then stops the loop.
    Registered at import, so it runs after the atexit functions of code that
    uses the client. (Their finalizers are run from here: weakref's own exit
    hook may have run already, after which a finalizer does nothing when
    called.)"""
    finalizers = (
        [s._finalizer for s in list(_LIVE_SESSIONS)]
        + [p._finalizer for p in list(_LIVE_POOLS)]
        + [c._finalizer for c in list(_LIVE_CLIENTS)]
    )
    for finalizer in finalizers:
        pending = finalizer.detach()
        if pending is not None:
            _, func, args, kwargs = pending
            func(*args, **kwargs)
    _LOOP.stop()


def _like(sync: Callable[..., Any], method: Callable[..., Any]) -> None:
    """Gives a sync method the name, docs and signature of the async one."""
    functools.update_wrapper(sync, method)
    sync.__module__ = __name__
    sync.__qualname__ = method.__qualname__.replace("Async", "", 1)


def _blocking(method: "Callable[Concatenate[Any, P], Awaitable[T]]") -> "Callable[Concatenate[Any, P], T]":
    """The blocking form of an async method of the asyncio class that the
    sync object wraps (as ``self._aio``): same signature and docs."""

    def blocking(self: Any, /, *args: "P.args", **kwargs: "P.kwargs") -> T:
        return _LOOP.run(method(self._aio, *args, **kwargs))

    _like(blocking, method)
    return blocking


def _owned(
    method: "Callable[Concatenate[Any, P], Awaitable[AsyncOwnedPool]]",
) -> "Callable[Concatenate[Client, P], OwnedPool]":
    """The sync form of a method of AsyncClient that creates an owned pool."""

    def owned(self: Client, /, *args: "P.args", **kwargs: "P.kwargs") -> OwnedPool:
        return OwnedPool(self, _LOOP.run(method(self._aio, *args, **kwargs)))

    _like(owned, method)
    setattr(owned, "__signature__", inspect.signature(method).replace(return_annotation="OwnedPool"))
    return owned


def _streaming(method: "Callable[Concatenate[Any, P], AsyncRunStream]") -> "Callable[Concatenate[Any, P], RunStream]":
    """The sync form of a method that starts a run: the call is made on the
    loop, its events are read through a :class:`RunStream`."""

    def streaming(self: Any, /, *args: "P.args", **kwargs: "P.kwargs") -> RunStream:
        return RunStream(_LOOP.call(lambda: method(self._aio, *args, **kwargs)))

    _like(streaming, method)
    setattr(streaming, "__signature__", inspect.signature(method).replace(return_annotation="RunStream"))
    return streaming


# --- the client -------------------------------------------------------------


class Client:
    """A connection to a sandpool server.

    ``addr`` defaults to ``$SANDPOOL_ADDR``, else ``127.0.0.1:50051``;
    ``token`` (default ``$SANDPOOL_TOKEN``) is sent as a bearer token; ``tls``
    is ``None``/``False`` for plaintext, ``True`` for TLS with the system
    roots, or ``grpc.ChannelCredentials``. Every unary call has a deadline of
    ``timeout`` seconds. The client is thread-safe; share one per process.

    Every call carries the W3C trace context of the calling thread's current
    OpenTelemetry span when ``opentelemetry-api`` is installed (``pip
    install sandpool[otel]``); ``traceparent`` (and ``tracestate``) pass one
    explicitly instead.
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
        self._aio = AsyncClient(addr, token, tls, timeout, traceparent, tracestate)
        self.addr = self._aio.addr
        self.timeout = self._aio.timeout
        self._tls = tls
        self._raw: Optional[grpc.Channel] = None
        self._raw_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_client, self._aio, None)
        self._finalizer.atexit = False
        _LIVE_CLIENTS.add(self)

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        return self._aio.metadata

    # The generated stubs, for calls this class does not wrap (on a blocking
    # channel of their own, opened on first use).

    def _raw_channel(self) -> grpc.Channel:
        with self._raw_lock:
            if self._raw is None:
                creds = c.channel_credentials(self._tls)
                if creds is None:
                    self._raw = grpc.insecure_channel(self.addr, options=c.CHANNEL_OPTIONS)
                else:
                    self._raw = grpc.secure_channel(self.addr, creds, options=c.CHANNEL_OPTIONS)
                self._finalizer.detach()
                self._finalizer = weakref.finalize(self, _close_client, self._aio, self._raw)
                self._finalizer.atexit = False
            return self._raw

    @property
    def pools(self) -> pool_pb2_grpc.PoolServiceStub:
        return pool_pb2_grpc.PoolServiceStub(self._raw_channel())

    @property
    def sessions(self) -> session_pb2_grpc.SessionServiceStub:
        return session_pb2_grpc.SessionServiceStub(self._raw_channel())

    @property
    def artifacts(self) -> artifact_pb2_grpc.ArtifactServiceStub:
        return artifact_pb2_grpc.ArtifactServiceStub(self._raw_channel())

    def close(self) -> None:
        """Closes the channel (sessions still open lose their keepalive)."""
        self._finalizer.detach()
        _close_client(self._aio, self._raw)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

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
        lease, started = _LOOP.run(self._aio._acquire_lease(pool, ttl, wait, env, files))
        return Session(self, lease, started)

    # --- pools --------------------------------------------------------------

    create_pool = _blocking(AsyncClient.create_pool)
    create_pool_from_spec = _blocking(AsyncClient.create_pool_from_spec)
    create_owned_pool = _owned(AsyncClient.create_owned_pool)
    create_owned_pool_from_spec = _owned(AsyncClient.create_owned_pool_from_spec)
    get_pool = _blocking(AsyncClient.get_pool)
    list_pools = _blocking(AsyncClient.list_pools)
    delete_pool = _blocking(AsyncClient.delete_pool)
    get_stats = _blocking(AsyncClient.get_stats)

    def watch_stats(self, name: str, *, timeout: Optional[float] = None) -> Iterator[pool_pb2.PoolStats]:
        """Yields the pool's stats now and after every change, until the pool
        is deleted (the last one has ``closed`` set) or the caller closes the
        generator. With ``timeout``, the stream's deadline: when it passes,
        :class:`DeadlineExceeded` is raised (``None``: no deadline)."""
        stats: Any = self._aio.watch_stats(name, timeout=timeout)  # an async generator
        try:
            while True:
                try:
                    yield _LOOP.run(stats.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            _LOOP.run(stats.aclose())


def _close_client(aio: AsyncClient, raw: Optional[grpc.Channel]) -> None:
    """Closes a client's channels (its own, and the stubs' one)."""
    if raw is not None:
        raw.close()
    if _LOOP.on_loop_thread():
        _LOOP.submit(aio.close())
        return
    try:
        _LOOP.run(aio.close())
    except RuntimeError:  # the loop is gone (interpreter exit)
        pass


# --- sessions ---------------------------------------------------------------


def _release_dropped(session: AsyncSession) -> None:
    """Releases the lease of a Session dropped without release(), when it is
    garbage collected or at interpreter exit."""
    if _LOOP.on_loop_thread():
        _LOOP.submit(session.release())
        return
    try:
        _LOOP.run(session.release())
    except Exception:  # noqa: BLE001 - best effort; the server expires it anyway
        pass


async def _session_of(client: AsyncClient, lease: session_pb2.Lease, started: float) -> AsyncSession:
    return AsyncSession(client, lease, started)


class Session:
    """A lease on one warm container, kept alive in the background.

    Use it as a context manager (``with client.acquire("python") as s:``) or
    call :meth:`release`; it is also released when garbage collected and at
    interpreter exit. After the lease is lost every call raises
    :class:`LeaseLost`.
    """

    def __init__(self, client: Client, lease: session_pb2.Lease, started: float) -> None:
        self._client = client
        self._aio = _LOOP.run(_session_of(client._aio, lease, started))
        self._finalizer = weakref.finalize(self, _release_dropped, self._aio)
        self._finalizer.atexit = False
        _LIVE_SESSIONS.add(self)

    # --- the lease ------------------------------------------------------------

    @property
    def lease(self) -> LeaseInfo:
        return self._aio.lease

    @property
    def lease_id(self) -> str:
        return self._aio.lease_id

    @property
    def container_id(self) -> str:
        return self._aio.container_id

    @property
    def pool(self) -> str:
        return self._aio.pool

    @property
    def renewals(self) -> int:
        """Keepalives the server confirmed so far."""
        return self._aio.renewals

    @property
    def lost(self) -> Optional[str]:
        """Why the lease is lost, or ``None`` while it is held."""
        return self._aio.lost

    def release(self) -> LeaseState:
        """Ends the lease (idempotent). Returns how it stood before: ACTIVE
        when this call ended it."""
        self._finalizer.detach()
        return _LOOP.run(self._aio.release())

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._finalizer.detach()
        _LOOP.run(self._aio.__aexit__(exc_type, exc, tb))

    # --- runs ---------------------------------------------------------------

    run = _streaming(AsyncSession.run)
    run_command = _streaming(AsyncSession.run_command)

    def interact(self, *args: Any, **kwargs: Any) -> Interaction:
        return Interaction(_LOOP.call(lambda: self._aio.interact(*args, **kwargs)))

    _like(interact, AsyncSession.interact)
    setattr(interact, "__signature__", inspect.signature(AsyncSession.interact).replace(return_annotation="Interaction"))
    run_collect = _blocking(AsyncSession.run_collect)
    execute = run_collect
    execute_command = _blocking(AsyncSession.execute_command)
    cancel = _blocking(AsyncSession.cancel)

    # --- contexts and libraries -----------------------------------------------

    def context(self, language: Optional[str] = None) -> Context:
        """Opens a persistent interpreter context (like a notebook kernel):
        variables, imports and functions survive between its runs. Use it
        as a context manager, or :meth:`Context.delete` it; the lease's end
        ends it too. ``language`` defaults to the pool's."""
        ctx = _LOOP.run(self._aio._create_context(language))
        return Context(self, ctx.id, ctx.language)

    install_libraries = _blocking(AsyncSession.install_libraries)

    # --- files --------------------------------------------------------------

    upload = _blocking(AsyncSession.upload)
    upload_dir = _blocking(AsyncSession.upload_dir)
    download = _blocking(AsyncSession.download)
    download_file = _blocking(AsyncSession.download_file)
    list_artifacts = _blocking(AsyncSession.list_artifacts)


# --- owned pools --------------------------------------------------------------


def _delete_dropped(pool: AsyncOwnedPool) -> None:
    """Deletes an owned pool dropped without delete(), when it is garbage
    collected or at interpreter exit."""
    if _LOOP.on_loop_thread():
        _LOOP.submit(pool.delete())
        return
    try:
        _LOOP.run(pool.delete())
    except Exception:  # noqa: BLE001 - best effort; the server lets it lapse anyway
        pass


class OwnedPool:
    """A pool that belongs to this client, made by
    :meth:`Client.create_owned_pool`: kept alive in the background at a third
    of its owner TTL; deleted by :meth:`delete` (or on leaving a ``with``
    block), when garbage collected, at interpreter exit, and by the server
    within the owner TTL when this process dies.

    ``pool`` is the pool as CreatePool (or the last :meth:`get`) answered.
    Once the pool is lost (``lost`` says why), every call raises
    :class:`PoolLost`.
    """

    def __init__(self, client: Client, pool: AsyncOwnedPool) -> None:
        self._client = client
        self._aio = pool
        self._finalizer = weakref.finalize(self, _delete_dropped, self._aio)
        self._finalizer.atexit = False
        _LIVE_POOLS.add(self)

    @property
    def name(self) -> str:
        return self._aio.name

    @property
    def pool(self) -> pool_pb2.Pool:
        """The pool as CreatePool (or the last :meth:`get`) answered."""
        return self._aio.pool

    @property
    def owner_ttl(self) -> float:
        """Seconds without a keepalive after which the server deletes the pool."""
        return self._aio.owner_ttl

    @property
    def renewals(self) -> int:
        """Keepalives the server confirmed so far."""
        return self._aio.renewals

    @property
    def lost(self) -> Optional[str]:
        """Why the pool is lost (or that this client deleted it), or ``None``
        while it is held."""
        return self._aio.lost

    @property
    def closed(self) -> bool:
        """True once :meth:`delete` was called."""
        return self._aio.closed

    def check(self) -> None:
        """Raises :class:`PoolLost` once the pool is lost or deleted."""
        self._aio.check()

    def acquire(
        self,
        ttl: Optional[c.Seconds] = None,
        wait: Optional[c.Seconds] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        files: Optional[c.LeaseFiles] = None,
    ) -> Session:
        """Leases a warm container of this pool, as :meth:`Client.acquire`
        does; raises :class:`PoolLost` once the pool is lost."""
        lease, started = _LOOP.run(self._aio._acquire_lease(ttl, wait, env, files))
        return Session(self._client, lease, started)

    get = _blocking(AsyncOwnedPool.get)
    stats = _blocking(AsyncOwnedPool.stats)

    def delete(self, *, wait: bool = False, timeout: Optional[float] = None) -> int:
        """Deletes the pool now (idempotent) and stops its keepalive; returns
        the containers still busy. With ``wait``, returns once every
        container is removed. Without, the call waits at most the owner TTL
        (or the client's timeout, if shorter): past it the server deletes
        the pool by itself. A lost pool is gone already: nothing is sent."""
        self._finalizer.detach()
        return _LOOP.run(self._aio.delete(wait=wait, timeout=timeout))

    close = delete

    def __enter__(self) -> OwnedPool:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._finalizer.detach()
        _LOOP.run(self._aio.__aexit__(exc_type, exc, tb))


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
        self._aio = AsyncContext(session._aio, context_id, language)

    @property
    def id(self) -> str:
        return self._aio.id

    @property
    def language(self) -> str:
        return self._aio.language

    run = _streaming(AsyncContext.run)
    run_collect = _blocking(AsyncContext.run_collect)
    execute = run_collect
    delete = _blocking(AsyncContext.delete)
    close = delete

    def __enter__(self) -> Context:
        return self

    __exit__ = _blocking(AsyncContext.__aexit__)


class RunStream:
    """The events of one run, as they arrive. Iterate it, or :meth:`collect`.
    The run survives a broken connection: the stream resumes where it was (a
    :class:`Gap` event says what the server could not keep meanwhile).

    Leaving a ``with`` block (or calling :meth:`cancel`) before the run ended
    cancels the run.
    """

    def __init__(self, stream: AsyncRunStream) -> None:
        self._aio = stream

    @property
    def run_id(self) -> Optional[str]:
        return self._aio.run_id

    @property
    def exit(self) -> Optional[Exit]:
        return self._aio.exit

    def __iter__(self) -> RunStream:
        return self

    def __next__(self) -> RunEvent:
        try:
            return _LOOP.run(self._aio.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    collect = _blocking(AsyncRunStream.collect)

    def cancel(self) -> None:
        """Cancels the run and drops its stream."""
        _LOOP.call(self._aio.cancel)

    def __enter__(self) -> RunStream:
        return self

    def __del__(self) -> None:
        # An abandoned stream must not keep its run going: it is cancelled
        # (and let go of) on the loop thread.
        stream = getattr(self, "_aio", None)
        if stream is not None and stream.exit is None:

            async def cancel() -> None:
                stream.cancel()

            try:
                _LOOP.submit(cancel())
            except Exception:  # noqa: BLE001 - interpreter teardown
                pass

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._aio.exit is None:
            self.cancel()



class Interaction(RunStream):
    """An interactive run (from :meth:`Session.interact`): send it input, end
    of input, signals and terminal sizes while iterating its events (from
    another thread, or between reads)."""

    _aio: AsyncInteraction

    def __init__(self, stream: AsyncInteraction) -> None:
        super().__init__(stream)

    write = _blocking(AsyncInteraction.write)
    close_stdin = _blocking(AsyncInteraction.close_stdin)
    signal = _blocking(AsyncInteraction.signal)
    resize = _blocking(AsyncInteraction.resize)

    def __enter__(self) -> Interaction:
        return self
