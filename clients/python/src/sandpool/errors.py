"""Exceptions of the sandpool client.

Every failed call raises a :class:`SandpoolError`; the subclass tells the gRPC
status code the server answered with, so callers never need to look at
``grpc.RpcError``.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Type

import grpc

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LeaseLost",
    "NotFound",
    "PermissionDenied",
    "PoolExhausted",
    "SandpoolError",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class SandpoolError(Exception):
    """Base class of every error raised by the sandpool client.

    ``code`` is the gRPC status code of the failed call (``None`` for errors
    found by the client itself) and ``message`` the server's explanation.
    """

    def __init__(self, message: str, *, code: Optional[grpc.StatusCode] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.message} ({self.code.name})"


class PoolExhausted(SandpoolError):
    """RESOURCE_EXHAUSTED: every container of the pool is leased (FAIL_FAST),
    or the wait for one ended (WAIT)."""


class LeaseLost(SandpoolError):
    """The session's lease is gone: released, expired, revoked, or not kept
    alive within its TTL. The session cannot be used any more."""

    def __init__(self, lease_id: str, reason: str) -> None:
        super().__init__(f"lease {lease_id} is lost: {reason}")
        self.lease_id = lease_id
        self.reason = reason


class NotFound(SandpoolError, LookupError):
    """NOT_FOUND: no such pool, lease, run or path."""


class InvalidArgument(SandpoolError, ValueError):
    """INVALID_ARGUMENT: the request is malformed. ``field`` names the field
    at fault when the server said which."""

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = grpc.StatusCode.INVALID_ARGUMENT,
        field: Optional[str] = None,
    ) -> None:
        super().__init__(message, code=code)
        if field is None:
            m = re.match(r"invalid ([A-Za-z0-9_.\[\]]+): ", message)
            field = m.group(1) if m else None
        self.field = field


class FailedPrecondition(SandpoolError):
    """FAILED_PRECONDITION: the server cannot do it in its current state (a
    pool being deleted, a pool that cannot create containers, ...)."""


class DeadlineExceeded(SandpoolError, TimeoutError):
    """DEADLINE_EXCEEDED: the call's deadline passed before the answer."""


class Unauthenticated(SandpoolError):
    """UNAUTHENTICATED: a bearer token is missing or not accepted."""


class PermissionDenied(SandpoolError):
    """PERMISSION_DENIED."""


class Unavailable(SandpoolError, ConnectionError):
    """UNAVAILABLE: the server (or its container engine) cannot be reached,
    or the server is shutting down."""


class AlreadyExists(SandpoolError):
    """ALREADY_EXISTS: a pool of that name exists."""


class Cancelled(SandpoolError):
    """CANCELLED: the call was cancelled."""


_BY_CODE: Dict[grpc.StatusCode, Type[SandpoolError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: PoolExhausted,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def status_of(err: BaseException) -> "tuple[grpc.StatusCode, str]":
    """The status code and message of a (sync or asyncio) gRPC error."""
    code = getattr(err, "code", None)
    details = getattr(err, "details", None)
    status = code() if callable(code) else None
    message = details() if callable(details) else None
    if not isinstance(status, grpc.StatusCode):
        status = grpc.StatusCode.UNKNOWN
    if not isinstance(message, str) or not message:
        message = str(err) or status.name
    return status, message


def from_rpc_error(err: BaseException) -> SandpoolError:
    """The :class:`SandpoolError` for a failed gRPC call."""
    code, message = status_of(err)
    cls = _BY_CODE.get(code, SandpoolError)
    if cls is InvalidArgument:
        return InvalidArgument(message, code=code)
    return cls(message, code=code)
