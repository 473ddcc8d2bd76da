"""Exceptions with the names of llm-sandbox's (``llm_sandbox.exceptions`` and
``llm_sandbox.pool``)."""

from __future__ import annotations

from typing import Optional

from ..errors import PoolExhausted, SandpoolError

__all__ = [
    "ContainerError",
    "DuplicateClientError",
    "LanguageNotSupportPlotError",
    "LibraryInstallationNotSupportedError",
    "NotOpenSessionError",
    "PoolClosedError",
    "PoolExhaustedError",
    "PoolHealthCheckError",
    "SandboxError",
    "SandboxTimeoutError",
    "SessionNotOpenError",
    "UnsupportedBackendError",
]


class SandboxError(SandpoolError):
    """Base class of the compatibility layer's own errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class SandboxTimeoutError(SandboxError, TimeoutError):
    """The code ran past its timeout and was killed."""


class NotOpenSessionError(SandboxError):
    """The session is not open: use it in a ``with`` block or call open()."""

    def __init__(self, message: str = "Session not open - call open() first or use context manager") -> None:
        super().__init__(message)


class SessionNotOpenError(NotOpenSessionError, RuntimeError):
    """llm-sandbox's pool module raises this name."""


class ContainerError(SandboxError):
    """The pool cannot make containers, e.g. installing its ``libraries``
    failed at warm-up (the message has the installer's words)."""


class LibraryInstallationNotSupportedError(SandboxError):
    """The pool does not allow this install on a lease: package names need a
    pool made with ``lease_installs=True`` (and a reachable index); package
    files already in the container always install. Name libraries when
    creating the pool instead."""


class LanguageNotSupportPlotError(SandboxError):
    """Plot capture is not available for the language."""


class UnsupportedBackendError(SandboxError, ValueError):
    """The backend is not one the server offers."""


class DuplicateClientError(ValueError):
    """``client`` was given to a pooled session; the pool manager owns it."""

    def __init__(self) -> None:
        super().__init__(
            "Cannot specify 'client' parameter when using pooling mode; "
            "configure the client in the pool manager instead."
        )


class PoolExhaustedError(PoolExhausted):
    """Every container of the pool is busy and the exhaustion strategy gave
    up (FAIL_FAST at once, WAIT after ``acquisition_timeout``)."""

    def __init__(self, pool_size: int, timeout: Optional[float] = None, detail: Optional[str] = None) -> None:
        if timeout is not None:
            message = f"All {pool_size} containers in pool are busy and timeout of {timeout}s exceeded"
        else:
            message = f"All {pool_size} containers in pool are busy"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)
        self.pool_size = pool_size
        self.timeout = timeout


class PoolHealthCheckError(SandboxError):
    """A container failed its health check (the server replaces such
    containers itself; kept for imports)."""

    def __init__(self, container_id: str, reason: str) -> None:
        super().__init__(f"Health check failed for container {container_id}: {reason}")
        self.container_id = container_id
        self.reason = reason


class PoolClosedError(SandboxError):
    """The pool manager has been closed, or its pool is gone from the server
    (``detail`` says why)."""

    def __init__(self, detail: Optional[str] = None) -> None:
        message = "Container pool has been closed"
        super().__init__(f"{message} ({detail})" if detail else message)
