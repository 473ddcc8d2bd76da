"""llm-sandbox's container pooling (``llm_sandbox.pool``) on a sandpool server.

``create_pool_manager`` creates a pool on the server named by
``SANDPOOL_ADDR`` (default ``127.0.0.1:50051``); sessions lease its warm
containers, keep the lease alive in the background and give the container
back on exit. Code written for llm-sandbox runs after changing its imports::

    from sandpool.llm_sandbox import SandboxSession
    from sandpool.llm_sandbox.pool import create_pool_manager, PoolConfig

See COMPAT.md for what differs.
"""

from __future__ import annotations

import base64
import codecs
import enum
import io
import os
import shlex
import tarfile
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Type, TypeVar, Union

from .. import _common as c
from ..client import Client, OwnedPool, RunStream, Session
from ..errors import FailedPrecondition, NotFound, PoolExhausted, PoolLost, SandpoolError
from ..v1 import pool_pb2
from ..types import EndReason, RunResult, Stderr, Stdout
from .data import PLOT_MIME_TYPES, ConsoleOutput, ExecutionResult, PlotOutput, StreamCallback
from .exceptions import (
    ContainerError,
    DuplicateClientError,
    LanguageNotSupportPlotError,
    LibraryInstallationNotSupportedError,
    PoolClosedError,
    PoolExhaustedError,
    PoolHealthCheckError,
    SandboxError,
    SandboxTimeoutError,
    SessionNotOpenError,
    UnsupportedBackendError,
)

__all__ = [
    "ArtifactPooledSandboxSession",
    "ContainerPoolManager",
    "ContainerState",
    "ExhaustionStrategy",
    "PoolClosedError",
    "PoolConfig",
    "PoolExhaustedError",
    "PoolHealthCheckError",
    "PooledContainer",
    "PooledSandboxSession",
    "SandpoolPoolManager",
    "SessionNotOpenError",
    "create_pool_manager",
]

DEFAULT_OWNER_TTL = 30.0
"""Seconds after which the server deletes the pool of a process that died
(``owner_ttl`` of :func:`create_pool_manager`)."""

PLOT_LANGUAGES = ("python", "r")
"""Languages whose pools capture plots."""


class ExhaustionStrategy(str, enum.Enum):
    """What acquiring does when every container is busy."""

    FAIL_FAST = "fail_fast"
    WAIT = "wait"
    TEMPORARY = "temporary"


class ContainerState(str, enum.Enum):
    """llm-sandbox's container states (get_stats' ``state_counts`` keys)."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"
    REMOVING = "removing"


def _positive_or_none(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds or None, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0 (or None for no limit), got {value!r}")
    return float(value)


def _int_at_least(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be greater than or equal to {low}, got {value!r}")
    return value


@dataclass
class PoolConfig:
    """Sizing and lifecycle of a pool: llm-sandbox's fields, defaults and
    validation (a bad value, or ``min_pool_size > max_pool_size``, raises
    ``ValueError`` when the config is made, as pydantic's ValidationError
    does, which is a ValueError too)."""

    max_pool_size: int = 10
    min_pool_size: int = 0
    idle_timeout: Optional[float] = 300.0
    acquisition_timeout: Optional[float] = 30.0
    health_check_interval: float = 60.0
    max_container_lifetime: Optional[float] = 3600.0
    max_container_uses: Optional[int] = None
    exhaustion_strategy: ExhaustionStrategy = ExhaustionStrategy.WAIT
    enable_prewarming: bool = True

    def __post_init__(self) -> None:
        self.max_pool_size = _int_at_least("max_pool_size", self.max_pool_size, 1)
        self.min_pool_size = _int_at_least("min_pool_size", self.min_pool_size, 0)
        self.idle_timeout = _positive_or_none("idle_timeout", self.idle_timeout)
        self.acquisition_timeout = _positive_or_none("acquisition_timeout", self.acquisition_timeout)
        interval = _positive_or_none("health_check_interval", self.health_check_interval)
        if interval is None:
            raise ValueError("health_check_interval must be a positive number of seconds")
        self.health_check_interval = interval
        self.max_container_lifetime = _positive_or_none("max_container_lifetime", self.max_container_lifetime)
        if self.max_container_uses is not None:
            self.max_container_uses = _int_at_least("max_container_uses", self.max_container_uses, 1)
        try:
            self.exhaustion_strategy = ExhaustionStrategy(
                getattr(self.exhaustion_strategy, "value", self.exhaustion_strategy)
            )
        except ValueError:
            raise ValueError(
                f"exhaustion_strategy must be one of wait, fail_fast, temporary, got {self.exhaustion_strategy!r}"
            ) from None
        if not isinstance(self.enable_prewarming, bool):
            raise ValueError(f"enable_prewarming must be a bool, got {self.enable_prewarming!r}")
        if self.min_pool_size > self.max_pool_size:
            raise ValueError(
                f"min_pool_size ({self.min_pool_size}) cannot be greater than max_pool_size ({self.max_pool_size})"
            )

    def model_dump(self) -> Dict[str, Any]:
        """The fields as a dict (pydantic's name)."""
        return asdict(self)


@dataclass
class PooledContainer:
    """A leased container, as ``ContainerPoolManager.acquire()`` returns it."""

    container_id: str
    container: Session
    state: ContainerState = ContainerState.BUSY
    created_at: float = field(default_factory=time.time)
    last_used_at: float = field(default_factory=time.time)
    use_count: int = 1


# runtime_configs keys of llm-sandbox's Docker backend -> RuntimeConfig fields.
_RUNTIME_KEYS = {
    "mem_limit": "mem_limit",
    "cpu_period": "cpu_period",
    "cpu_quota": "cpu_quota",
    "cpus": "cpus",
    "pids_limit": "pids_limit",
    "network": "network",
    "network_mode": "network",
    "user": "user",
    "read_only": "read_only_root",
    "read_only_root": "read_only_root",
    "runtime": "oci_runtime",
    "oci_runtime": "oci_runtime",
    "tmpfs_size": "tmpfs_size",
    "environment": "env",
    "env": "env",
}


def runtime_from_configs(runtime_configs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """llm-sandbox's ``runtime_configs`` as sandpool RuntimeConfig fields.
    Keys the server has no equivalent for raise ``ValueError``."""
    out: Dict[str, Any] = {}
    for key, value in (runtime_configs or {}).items():
        if key == "nano_cpus":
            out["cpus"] = float(value) / 1e9
        elif key == "network_disabled":
            if value:
                out["network"] = "none"
        elif key in _RUNTIME_KEYS:
            target = _RUNTIME_KEYS[key]
            if target == "env" and isinstance(value, (list, tuple)):
                value = dict(str(item).split("=", 1) for item in value)
            out[target] = value
        else:
            known = ", ".join(sorted([*_RUNTIME_KEYS, "nano_cpus", "network_disabled"]))
            raise ValueError(f"runtime_configs key {key!r} is not supported by sandpool; supported: {known}")
    return out


def _lang_name(lang: Any) -> str:
    return str(getattr(lang, "value", lang)).lower()


def _engine_client(client: Any, backend: str) -> Optional[Client]:
    """The sandpool client among ``client=``: llm-sandbox passes an engine
    client there (a ``docker.DockerClient``, ``podman.PodmanClient`` or
    ``kubernetes.client.CoreV1Api``). The sandpool server owns the engine,
    so such an object is not used (a warning says so) and the manager
    connects to the server as without it. Told apart by type only: the
    engines' packages are never imported."""
    if client is None or isinstance(client, Client):
        return client
    kind = type(client)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if kind.__module__.split(".")[0] == "sandpool":
        # One of ours that the blocking manager cannot use (an AsyncClient).
        raise TypeError(f"client must be a sandpool.Client, not {name}")
    warnings.warn(
        f"create_pool_manager ignores client={name}: the sandpool server owns the {backend} engine "
        "and creates the pool's containers itself; the manager connects to the server "
        "(addr=/token= or $SANDPOOL_ADDR) instead of using this client",
        UserWarning,
        stacklevel=4,
    )
    return None


class SandpoolPoolManager:
    """A pool on a sandpool server, with the interface of llm-sandbox's
    ``ContainerPoolManager``: ``acquire``/``release``, ``get_stats``,
    ``close`` and context-manager use. Thread-safe."""

    owned: Optional[OwnedPool]
    """The pool this manager created and keeps alive (``None`` for a pool
    that exists on the server already)."""

    namespace: Optional[str]
    """Kubernetes pools: the namespace their pods were asked for (``None``:
    the server's own)."""

    def __init__(
        self,
        config: Optional[PoolConfig] = None,
        lang: Any = "python",
        image: Optional[str] = None,
        *,
        backend: Any = "docker",
        client: Any = None,
        namespace: Optional[str] = None,
        libraries: Optional[Sequence[str]] = None,
        runtime_configs: Optional[Mapping[str, Any]] = None,
        addr: Optional[str] = None,
        token: Optional[str] = None,
        tls: c.TLS = None,
        pool_name: Optional[str] = None,
        lease_ttl: Optional[float] = None,
        reuse: Optional[bool] = None,
        package_index_url: Optional[str] = None,
        install_network: Optional[str] = None,
        lease_installs: Optional[bool] = None,
        owner_ttl: float = DEFAULT_OWNER_TTL,
        **session_kwargs: Any,
    ) -> None:
        backend_name = _lang_name(backend)
        if backend_name not in ("docker", "podman", "kubernetes"):
            raise UnsupportedBackendError(f"backend {backend_name!r} is not one of docker, podman, kubernetes")
        client = _engine_client(client, backend_name)
        if namespace is not None and backend_name != "kubernetes":
            # llm-sandbox's Docker and Podman managers take it among their
            # session arguments and never read it.
            warnings.warn(
                f"create_pool_manager ignores namespace={namespace!r}: only kubernetes pools have one "
                f"(this pool's backend is {backend_name})",
                UserWarning,
                stacklevel=3,
            )
            namespace = None
        if session_kwargs.pop("dockerfile", None):
            raise ValueError("dockerfile is not supported: build the image and pass image=")
        session_kwargs.pop("verbose", None)
        if session_kwargs:
            warnings.warn(
                f"create_pool_manager ignores {sorted(session_kwargs)} (not supported by sandpool)",
                stacklevel=3,
            )
        self._init_state(
            config=config if config is not None else PoolConfig(),
            lang=_lang_name(lang),
            image=image,
            libraries=list(libraries or []),
            runtime_configs=dict(runtime_configs or {}),
            backend=backend_name,
            client=client if client is not None else Client(addr, token, tls),
            own_client=client is None,
            name=pool_name or f"llmsb-{_lang_name(lang)}-{uuid.uuid4().hex[:12]}",
            lease_ttl=lease_ttl,
        )
        cfg = self.config
        spec = c.pool_spec_pb(
            self.name,
            language=self.lang,
            image=image,
            backend=self.backend,
            libraries=self.libraries,
            config=c.pool_config_pb(
                max_pool_size=cfg.max_pool_size,
                min_pool_size=cfg.min_pool_size,
                idle_timeout=cfg.idle_timeout or 0,
                acquisition_timeout=cfg.acquisition_timeout or 0,
                health_check_interval=cfg.health_check_interval,
                max_container_lifetime=cfg.max_container_lifetime or 0,
                max_container_uses=cfg.max_container_uses or 0,
                exhaustion_strategy=cfg.exhaustion_strategy,
                enable_prewarming=cfg.enable_prewarming,
            ),
            runtime=runtime_from_configs(self.runtime_configs),
            reuse=reuse,
            install_network=install_network,
            lease_installs=lease_installs,
            package_index_url=package_index_url,
            namespace=namespace,
        )
        self.namespace = namespace
        warm = cfg.enable_prewarming and cfg.min_pool_size > 0
        # Installing libraries at warm-up can take a while.
        timeout = 600.0 if self.libraries else None
        try:
            # The pool belongs to this process: kept alive in the background,
            # deleted by the server within owner_ttl when the process dies.
            owned = self.client.create_owned_pool_from_spec(
                spec, owner_ttl=owner_ttl, wait_ready=warm, timeout=timeout
            )
            self.owned = owned
            self.pool = owned.pool
            if self.pool.phase == pool_pb2.POOL_PHASE_FAILING:
                message = self.pool.status_message
                try:
                    owned.delete(wait=True, timeout=60.0)
                except SandpoolError:
                    pass
                raise ContainerError(f"pool {self.name} failed to warm up: {message}")
        except BaseException:
            if self._own_client:
                self.client.close()
            raise

    def _init_state(
        self,
        *,
        config: PoolConfig,
        lang: str,
        image: Optional[str],
        libraries: List[str],
        runtime_configs: Dict[str, Any],
        backend: str,
        client: Client,
        own_client: bool,
        name: str,
        lease_ttl: Optional[float],
    ) -> None:
        self.config = config
        self.lang = lang
        self.image = image
        self.libraries = libraries
        self.runtime_configs = runtime_configs
        self.backend = backend
        self.client = client
        self._own_client = own_client
        self.name = name
        self.lease_ttl = lease_ttl
        self._lock = threading.Lock()
        self._closed = False
        self._live: Set[Session] = set()
        self.owned = None
        self.namespace = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lost(self) -> Optional[str]:
        """Why the server's pool is gone although this manager was not
        closed (its keepalive was not confirmed within ``owner_ttl``, or the
        server deleted it), else ``None``."""
        return None if self._closed or self.owned is None else self.owned.lost

    def _pool_closed(self, lost: PoolLost) -> PoolClosedError:
        return PoolClosedError(f"the pool {self.name} is gone from the server: {lost.reason}")

    # --- leases ---------------------------------------------------------------

    def acquire_session(self) -> Session:
        """Leases a container as a sandpool :class:`~sandpool.Session`."""
        if self._closed:
            raise PoolClosedError()
        cfg = self.config
        if cfg.exhaustion_strategy is ExhaustionStrategy.WAIT:
            wait = (cfg.acquisition_timeout or 86400.0) + 10.0
        else:
            wait = 120.0
        try:
            if self.owned is not None:
                session = self.owned.acquire(ttl=self.lease_ttl, wait=wait)
            else:
                session = self.client.acquire(self.name, ttl=self.lease_ttl, wait=wait)
        except PoolLost as e:
            raise self._pool_closed(e) from e
        except PoolExhausted as e:
            timeout = cfg.acquisition_timeout if cfg.exhaustion_strategy is ExhaustionStrategy.WAIT else None
            raise PoolExhaustedError(cfg.max_pool_size, timeout, detail=e.message) from e
        except (FailedPrecondition, NotFound) as e:
            if self._closed or "being deleted" in e.message or "does not exist" in e.message:
                raise PoolClosedError() from e
            if any(kind == "POOL_FAILING" for kind, _, _ in e.details.precondition_violations):
                raise ContainerError(str(e.message)) from e
            raise
        with self._lock:
            if self._closed:
                closing = True
            else:
                closing = False
                self._live.add(session)
        if closing:
            session.release()
            raise PoolClosedError()
        return session

    def release_session(self, session: Session) -> None:
        with self._lock:
            self._live.discard(session)
        session.release()

    def acquire(self) -> PooledContainer:
        """llm-sandbox's low-level acquire: a leased container."""
        session = self.acquire_session()
        return PooledContainer(container_id=session.container_id, container=session)

    def release(self, container: PooledContainer) -> None:
        """Gives a container from :meth:`acquire` back."""
        self.release_session(container.container)
        container.state = ContainerState.IDLE

    # --- stats and lifecycle --------------------------------------------------

    def get_stats(self) -> Dict[str, Any]:
        """llm-sandbox's statistics dict: total_size, max_size, min_size,
        state_counts (its five state names) and closed. Containers the server
        is resetting after a lease count as busy. A pool that is gone
        (``lost``) counts as closed."""
        if self._closed or self.lost is not None:
            return self._closed_stats()
        try:
            s = self.owned.stats() if self.owned is not None else self.client.get_stats(self.name)
        except PoolLost:
            return self._closed_stats()
        sc = s.state_counts
        return {
            "total_size": s.total_size,
            "max_size": s.max_size,
            "min_size": s.min_size,
            "state_counts": {
                ContainerState.INITIALIZING.value: sc.initializing,
                ContainerState.IDLE.value: sc.idle,
                ContainerState.BUSY.value: sc.busy + sc.resetting,
                ContainerState.UNHEALTHY.value: sc.unhealthy,
                ContainerState.REMOVING.value: sc.removing,
            },
            "closed": s.closed,
        }

    def _closed_stats(self) -> Dict[str, Any]:
        return {
            "total_size": 0,
            "max_size": self.config.max_pool_size,
            "min_size": self.config.min_pool_size,
            "state_counts": {s.value: 0 for s in ContainerState},
            "closed": True,
        }

    def close(self) -> None:
        """Releases the leases this manager handed out that are still held,
        deletes the pool on the server and waits (bounded) until its
        containers are removed. Idempotent. A pool that is gone already
        (``lost``) needs no delete."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live)
            self._live.clear()
        for session in live:
            try:
                session.release()
            except SandpoolError:
                pass
        try:
            if self.owned is not None:
                self.owned.delete(wait=True, timeout=60.0)
        finally:
            if self._own_client:
                self.client.close()

    def __enter__(self) -> SandpoolPoolManager:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


ContainerPoolManager = SandpoolPoolManager
"""llm-sandbox's name of the pool manager base class."""


def create_pool_manager(
    client: Any = None,
    backend: Any = "docker",
    config: Optional[PoolConfig] = None,
    lang: Any = "python",
    **kwargs: Any,
) -> SandpoolPoolManager:
    """Creates a pool on the sandpool server and returns its manager.

    llm-sandbox's arguments: ``backend`` ("docker", "podman", "kubernetes"),
    ``client`` (a ``sandpool.Client``; an engine client such as llm-sandbox
    takes, ``docker.DockerClient``, ``podman.PodmanClient`` or
    ``kubernetes.client.CoreV1Api``, is not used: the server owns the engine,
    and a warning says so), ``namespace`` (kubernetes pools: the namespace
    of their pods, which the server's operator must allow; default the
    server's; ignored with a warning on other backends), ``config``,
    ``lang``, ``image``, ``libraries`` (installed into every container while
    it warms up: the containers must reach a package index then, pip's own
    or ``package_index_url``; a failed install raises ``ContainerError``),
    ``runtime_configs`` (mem_limit, cpu_period, cpu_quota, nano_cpus,
    pids_limit, network_mode, user, read_only, runtime, environment). sandpool
    additions: ``addr``, ``token``, ``tls`` (default ``$SANDPOOL_ADDR``),
    ``pool_name`` (default: a unique generated one), ``lease_ttl``, ``reuse``,
    ``package_index_url``, ``install_network`` (the engine network used while
    installing, default "bridge"), ``lease_installs`` (let per-session
    installs of package names use the network) and ``owner_ttl`` (seconds,
    default 30: the pool belongs to this process, which keeps it alive in
    the background; when the process dies the server deletes the pool
    within that time).
    """
    return SandpoolPoolManager(config=config, lang=lang, backend=backend, client=client, **kwargs)


# --- sessions -----------------------------------------------------------------


class _Decoder:
    """Decodes a byte stream chunk by chunk without splitting characters."""

    def __init__(self, errors: str) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors)

    def __call__(self, data: bytes, final: bool = False) -> str:
        return self._dec.decode(data, final)


def _consume(
    stream: RunStream,
    on_stdout: Optional[StreamCallback],
    on_stderr: Optional[StreamCallback],
    encoding_errors: str,
) -> Tuple[RunResult, str, str]:
    """Runs a stream to its end, feeding callbacks; returns the result and
    stdout/stderr decoded with ``encoding_errors``."""
    out_dec, err_dec = _Decoder(encoding_errors), _Decoder(encoding_errors)
    out: List[str] = []
    err: List[str] = []
    with stream:
        for event in stream:
            if isinstance(event, Stdout):
                text = out_dec(event.data)
                out.append(text)
                if on_stdout is not None and text:
                    on_stdout(text)
            elif isinstance(event, Stderr):
                text = err_dec(event.data)
                err.append(text)
                if on_stderr is not None and text:
                    on_stderr(text)
        result = stream.collect()
    out.append(out_dec(b"", True))
    err.append(err_dec(b"", True))
    return result, "".join(out), "".join(err)


_SESSION_KWARGS_IGNORED = ("backend", "keep_template", "commit_container", "verbose", "runtime_configs", "container_id")


class PooledSandboxSession:
    """A session on a container leased from a pool manager; the lease is
    kept alive in the background and given back on exit."""

    def __init__(
        self,
        pool_manager: SandpoolPoolManager,
        verbose: bool = False,
        stream: bool = False,
        workdir: str = "/sandbox",
        security_policy: Any = None,
        default_timeout: Optional[float] = None,
        execution_timeout: Optional[float] = None,
        session_timeout: Optional[float] = None,
        encoding_errors: str = "strict",
        **kwargs: Any,
    ) -> None:
        if security_policy is not None:
            raise SandboxError(
                "security_policy is not supported by sandpool: code runs isolated (no network, "
                "no capabilities, non-root); filter code before calling run()"
            )
        if "client" in kwargs:
            raise DuplicateClientError()
        lang = _lang_name(kwargs.pop("lang", pool_manager.lang))
        if lang != pool_manager.lang:
            raise ValueError(f"lang {lang!r} differs from the pool's language {pool_manager.lang!r}")
        image = kwargs.pop("image", None)
        if image and pool_manager.image and image != pool_manager.image:
            raise ValueError(f"image {image!r} differs from the pool's image {pool_manager.image!r}")
        for key in _SESSION_KWARGS_IGNORED:
            kwargs.pop(key, None)
        if kwargs:
            warnings.warn(f"sandpool sessions ignore {sorted(kwargs)}", stacklevel=2)
        self._pool_manager = pool_manager
        self.lang = lang
        self.verbose = verbose
        self.stream = stream
        self.workdir = workdir or "/sandbox"
        self.default_timeout = default_timeout
        self.execution_timeout = execution_timeout
        self.session_timeout = session_timeout
        self.encoding_errors = encoding_errors
        self._session: Optional[Session] = None
        self._opened_at = 0.0

    # lifecycle

    def open(self) -> None:
        """Leases a container from the pool."""
        if self._session is None:
            self._session = self._pool_manager.acquire_session()
            self._opened_at = time.monotonic()

    def close(self) -> None:
        """Gives the container back to the pool."""
        session, self._session = self._session, None
        if session is not None:
            self._pool_manager.release_session(session)

    def __enter__(self) -> PooledSandboxSession:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except SandpoolError:
            pass

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @property
    def backend_session(self) -> Session:
        """The underlying sandpool :class:`~sandpool.Session`."""
        if self._session is None:
            raise SessionNotOpenError()
        return self._session

    @property
    def container_id(self) -> str:
        return self.backend_session.container_id

    def _live(self) -> Session:
        session = self.backend_session
        if self.session_timeout is not None and time.monotonic() - self._opened_at > self.session_timeout:
            raise SandboxTimeoutError(f"session exceeded its session_timeout of {self.session_timeout}s")
        return session

    def _timeout(self, timeout: Optional[float]) -> Optional[float]:
        return timeout or self.execution_timeout or self.default_timeout

    @staticmethod
    def _check_timeout(result: RunResult, timeout: Optional[float]) -> None:
        if result.end_reason is EndReason.TIMEOUT:
            raise SandboxTimeoutError(result.message or f"execution timed out after {timeout}s")

    # running code

    def _run_result(
        self,
        code: str,
        libraries: Optional[List[str]],
        timeout: Optional[float],
        on_stdout: Optional[StreamCallback],
        on_stderr: Optional[StreamCallback],
    ) -> Tuple[RunResult, ConsoleOutput]:
        if libraries:
            self.install(libraries)
        session = self._live()
        actual = self._timeout(timeout)
        stream = session.run(code, working_dir=self.workdir, timeout=actual)
        result, out, err = _consume(stream, on_stdout, on_stderr, self.encoding_errors)
        self._check_timeout(result, actual)
        return result, ConsoleOutput(exit_code=result.exit_code, stderr=err, stdout=out)

    def run(
        self,
        code: str,
        libraries: Optional[List[str]] = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[StreamCallback] = None,
        on_stderr: Optional[StreamCallback] = None,
    ) -> ConsoleOutput:
        """Runs code in the pool's language; returns stdout, stderr and exit
        code. A run past ``timeout`` raises :class:`SandboxTimeoutError`."""
        return self._run_result(code, libraries, timeout, on_stdout, on_stderr)[1]

    def execute_command(
        self,
        command: str,
        workdir: Optional[str] = None,
        on_stdout: Optional[StreamCallback] = None,
        on_stderr: Optional[StreamCallback] = None,
    ) -> ConsoleOutput:
        """Runs a command, split into words like the Docker SDK does (no
        shell: use ``sh -c "..."`` for pipes and redirections)."""
        session = self._live()
        argv = shlex.split(command)
        if not argv:
            raise SandboxError("the command is empty")
        actual = self._timeout(None)
        stream = session.run_command(argv, working_dir=workdir or self.workdir, timeout=actual)
        result, out, err = _consume(stream, on_stdout, on_stderr, self.encoding_errors)
        self._check_timeout(result, actual)
        return ConsoleOutput(exit_code=result.exit_code, stderr=err, stdout=out)

    def execute_commands(
        self,
        commands: Sequence[Union[str, Tuple[str, Optional[str]]]],
        workdir: Optional[str] = None,
        on_stdout: Optional[StreamCallback] = None,
        on_stderr: Optional[StreamCallback] = None,
    ) -> ConsoleOutput:
        """Runs commands in order; returns the output of the first that fails,
        else of the last."""
        output = ConsoleOutput(exit_code=0)
        for command in commands:
            if isinstance(command, (tuple, list)):
                cmd, cmd_workdir = command[0], command[1]
                output = self.execute_command(cmd, workdir=cmd_workdir, on_stdout=on_stdout, on_stderr=on_stderr)
            else:
                output = self.execute_command(command, workdir=workdir, on_stdout=on_stdout, on_stderr=on_stderr)
            if output.exit_code:
                return output
        return output

    def install(self, libraries: Optional[List[str]] = None) -> None:
        """Installs libraries into this session's container only (the reset
        removes them). Paths of package files in the container always work;
        names need a pool made with ``lease_installs=True`` that reaches an
        index, else :class:`LibraryInstallationNotSupportedError`."""
        if not libraries:
            return
        session = self._live()
        try:
            session.install_libraries(list(libraries))
        except FailedPrecondition as e:
            raise LibraryInstallationNotSupportedError(
                f"{e.message}; pass libraries= to create_pool_manager() so that they are installed "
                "while the pool warms up"
            ) from e

    # files

    def copy_to_runtime(self, src: str, dest: str) -> None:
        """Copies a local file or directory into the container."""
        session = self._live()
        if os.path.isdir(src):
            session.upload_dir(src, dest)
        else:
            session.upload(dest, src)

    def copy_from_runtime(self, src: str, dest: str) -> None:
        """Copies a file (or a directory, unpacked into ``dest``) out of the
        container."""
        session = self._live()
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        data = session.download(src)
        # A directory comes as a tar archive.
        if _looks_like_tar(data):
            os.makedirs(dest, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in member.name.split("/"):
                        raise SandboxError(f"unsafe path {member.name!r} in the archive of {src}")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(dest, filter="data")
                else:  # Python before 3.10.12 / 3.11.4: members checked above
                    tar.extractall(dest)
            return
        with open(dest, "wb") as f:
            f.write(data)


def _looks_like_tar(data: bytes) -> bool:
    return len(data) >= 512 and data[257:262] == b"ustar"


class _Facade:
    """A session that stands in front of another (named by ``_inner``):
    entering, leaving, opening and closing are the other's, and what this
    one does not have is read from it."""

    _inner = ""

    def __enter__(self: _F) -> _F:
        getattr(self, self._inner).__enter__()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        getattr(self, self._inner).__exit__(exc_type, exc, tb)

    def __getattr__(self, name: str) -> Any:
        if name == self._inner:  # not set yet
            raise AttributeError(name)
        return getattr(getattr(self, self._inner), name)

    def open(self) -> None:
        getattr(self, self._inner).open()

    def close(self) -> None:
        getattr(self, self._inner).close()


_F = TypeVar("_F", bound=_Facade)


class ArtifactPooledSandboxSession(_Facade):
    """A pooled session that also returns the plots a run produced."""

    _inner = "_session"

    def __init__(
        self,
        pool_manager: SandpoolPoolManager,
        *,
        verbose: bool = False,
        stream: bool = False,
        workdir: str = "/sandbox",
        enable_plotting: bool = True,
        security_policy: Any = None,
        **kwargs: Any,
    ) -> None:
        self._session = PooledSandboxSession(
            pool_manager=pool_manager,
            verbose=verbose,
            stream=stream,
            workdir=workdir,
            security_policy=security_policy,
            **kwargs,
        )
        self.enable_plotting = enable_plotting

    def run(
        self,
        code: str,
        libraries: Optional[List[str]] = None,
        timeout: Optional[float] = None,
        clear_plots: bool = False,
        on_stdout: Optional[StreamCallback] = None,
        on_stderr: Optional[StreamCallback] = None,
    ) -> ExecutionResult:
        """Runs code; ``plots`` holds the images the run produced (each
        run's own: ``clear_plots`` has nothing to clear)."""
        if self.enable_plotting and self._session.lang not in PLOT_LANGUAGES:
            raise LanguageNotSupportPlotError(f"plot capture is not available for {self._session.lang}")
        result, console = self._session._run_result(code, libraries, timeout, on_stdout, on_stderr)
        plots: List[PlotOutput] = []
        if self.enable_plotting:
            for art in result.artifacts:
                fmt = PLOT_MIME_TYPES.get(art.mime_type)
                if fmt is None:
                    continue
                data = self._session.backend_session.download(art.info.path) if art.omitted else art.data
                plots.append(PlotOutput(format=fmt, content_base64=base64.b64encode(data).decode("ascii")))
        return ExecutionResult(
            exit_code=console.exit_code, stderr=console.stderr, stdout=console.stdout, plots=plots
        )

    def clear_plots(self) -> None:
        """Nothing to do: plots are per run."""
