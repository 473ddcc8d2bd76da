"""llm-sandbox's session entry points: ``SandboxSession`` (``create_session``)
and ``ArtifactSandboxSession``, served by sandpool pools."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

from .._common import resolve_addr
from ..client import Client
from .data import ExecutionResult, StreamCallback
from .exceptions import UnsupportedBackendError
from ..types import seconds_of
from ..v1 import pool_pb2
from .pool import (
    ArtifactPooledSandboxSession,
    ExhaustionStrategy,
    PoolConfig,
    PooledSandboxSession,
    SandpoolPoolManager,
    _Facade,
    _lang_name,
)

__all__ = ["ArtifactSandboxSession", "SandboxSession", "create_session"]

_BACKENDS = ("docker", "podman", "kubernetes")


class _ServerPool(SandpoolPoolManager):
    """A pool that already exists on the server (named after the language),
    for sessions created without ``pool=``. Never created nor deleted here."""

    def __init__(self, client: Client, name: str, lang: str) -> None:
        # Not SandpoolPoolManager.__init__: nothing is created on the server.
        pool = client.get_pool(name)
        cfg = pool.spec.config
        strategies = {
            pool_pb2.EXHAUSTION_STRATEGY_FAIL_FAST: ExhaustionStrategy.FAIL_FAST,
            pool_pb2.EXHAUSTION_STRATEGY_TEMPORARY: ExhaustionStrategy.TEMPORARY,
        }
        self._init_state(
            config=PoolConfig(
                max_pool_size=cfg.max_pool_size,
                min_pool_size=cfg.min_pool_size,
                idle_timeout=seconds_of(cfg.idle_timeout) or None,
                acquisition_timeout=seconds_of(cfg.acquisition_timeout) or None,
                health_check_interval=seconds_of(cfg.health_check_interval) or 60.0,
                max_container_lifetime=seconds_of(cfg.max_container_lifetime) or None,
                max_container_uses=cfg.max_container_uses or None,
                exhaustion_strategy=strategies.get(cfg.exhaustion_strategy, ExhaustionStrategy.WAIT),
                enable_prewarming=cfg.enable_prewarming,
            ),
            lang=lang,
            image=pool.spec.image,
            libraries=list(pool.spec.libraries),
            runtime_configs={},
            backend="docker",
            client=client,
            own_client=False,
            name=name,
            lease_ttl=None,
        )
        self.pool = pool

    def close(self) -> None:
        """Releases this process's leases; the server's pool stays."""
        with self._lock:
            live = list(self._live)
            self._live.clear()
        for session in live:
            session.release()


_default: Dict[str, _ServerPool] = {}
_default_lock = threading.Lock()


def _server_pool(lang: str) -> _ServerPool:
    addr = resolve_addr(None)
    key = f"{addr}/{lang}"
    with _default_lock:
        pool = _default.get(key)
        if pool is None:
            pool = _ServerPool(Client(addr), lang, lang)
            _default[key] = pool
        return pool


def _check_backend(backend: Any) -> None:
    if _lang_name(backend) not in _BACKENDS:
        raise UnsupportedBackendError(f"backend {_lang_name(backend)!r} does not support container pooling")


def create_session(
    backend: Any = "docker",
    pool: Optional[SandpoolPoolManager] = None,
    *args: Any,
    **kwargs: Any,
) -> PooledSandboxSession:
    """llm-sandbox's ``SandboxSession``: a session on a container of ``pool``
    (a manager from ``create_pool_manager``). Without ``pool``, the
    session leases from the server's pool named after ``lang`` (the server's
    built-in configuration has a ``python`` pool)."""
    _check_backend(backend)
    if args:
        raise TypeError("pass session options by keyword")
    if pool is None:
        lang = _lang_name(kwargs.get("lang", "python"))
        pool = _server_pool(lang)
    return PooledSandboxSession(pool_manager=pool, **kwargs)


SandboxSession = create_session


class ArtifactSandboxSession(_Facade):
    """llm-sandbox's ``ArtifactSandboxSession``: a session whose runs also
    return their plots. With ``pool=`` it is an
    :class:`ArtifactPooledSandboxSession`; without, it leases from the
    server's pool named after ``lang``."""

    _inner = "_pooled_impl"

    def __init__(
        self,
        backend: Any = "docker",
        image: Optional[str] = None,
        dockerfile: Optional[str] = None,
        lang: str = "python",
        *,
        pool: Optional[SandpoolPoolManager] = None,
        keep_template: bool = False,
        commit_container: bool = False,
        verbose: bool = False,
        runtime_configs: Optional[Dict[str, Any]] = None,
        workdir: Optional[str] = "/sandbox",
        enable_plotting: bool = True,
        security_policy: Any = None,
        container_id: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        _check_backend(backend)
        if dockerfile:
            raise ValueError("dockerfile is not supported: build the image and name it in the pool")
        if container_id:
            raise ValueError("container_id is not supported: sandpool leases containers from pools")
        if pool is None:
            pool = _server_pool(_lang_name(lang))
        if image:
            kwargs["image"] = image
        self._pooled_impl = ArtifactPooledSandboxSession(
            pool_manager=pool,
            verbose=verbose,
            workdir=workdir or "/sandbox",
            enable_plotting=enable_plotting,
            security_policy=security_policy,
            lang=lang if pool.lang == _lang_name(lang) else pool.lang,
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
        return self._pooled_impl.run(
            code,
            libraries=libraries,
            timeout=timeout,
            clear_plots=clear_plots,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )

    def clear_plots(self) -> None:
        self._pooled_impl.clear_plots()
