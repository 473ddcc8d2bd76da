"""Exceptions of the sandpool client.

Every failed call raises a :class:`SandpoolError`; the subclass tells the gRPC
status code the server answered with, so callers never need to look at
``grpc.RpcError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple, Type

import grpc

from .types import LeaseState
from .v1 import session_pb2
from .v1.errors_enums import ErrorReason

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "ErrorDetails",
    "ErrorInfo",
    "ErrorReason",
    "FailedPrecondition",
    "InvalidArgument",
    "LeaseLost",
    "NotFound",
    "PermissionDenied",
    "PoolExhausted",
    "PoolLost",
    "SandpoolError",
    "Unauthenticated",
    "Unavailable",
    "details_of",
    "from_rpc_error",
    "pool_lost_of",
]

DOMAIN = "sandpool"
"""The ``domain`` of the server's ``google.rpc.ErrorInfo`` details."""


@dataclass(frozen=True)
class ErrorInfo:
    """A ``google.rpc.ErrorInfo`` detail: a machine-readable reason, e.g.
    ``LEASE_ENDED`` in domain ``sandpool`` with ``metadata["lease_id"]``."""

    reason: str
    domain: str
    metadata: Dict[str, str] = field(default_factory=dict)

    @property
    def error_reason(self) -> Optional[ErrorReason]:
        """The reason as an :class:`ErrorReason`: ``None`` outside domain
        ``sandpool``, ``ERROR_REASON_UNSPECIFIED`` for a name this client does
        not know (``reason`` still has it)."""
        if self.domain != DOMAIN:
            return None
        return ErrorReason.__members__.get(self.reason, ErrorReason.ERROR_REASON_UNSPECIFIED)


@dataclass(frozen=True)
class ErrorDetails:
    """The standard rich error details the server sends with a status
    (``grpc-status-details-bin``): ErrorInfo, BadRequest field violations
    ``(field, description)``, PreconditionFailure violations ``(type,
    subject, description)`` and RetryInfo's delay in seconds."""

    error_info: Optional[ErrorInfo] = None
    field_violations: List[Tuple[str, str]] = field(default_factory=list)
    precondition_violations: List[Tuple[str, str, str]] = field(default_factory=list)
    retry_delay: Optional[float] = None


_NO_DETAILS = ErrorDetails()


class SandpoolError(Exception):
    """Base class of every error raised by the sandpool client.

    ``code`` is the gRPC status code of the failed call (``None`` for errors
    found by the client itself) and ``message`` the server's explanation.
    """

    def __init__(
        self,
        message: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        details: Optional[ErrorDetails] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details if details is not None else _NO_DETAILS

    @property
    def error_info(self) -> Optional[ErrorInfo]:
        """The server's ErrorInfo detail (reason, domain, metadata), if any."""
        return self.details.error_info

    @property
    def error_reason(self) -> Optional[ErrorReason]:
        """The server's reason, typed: ``None`` when it sent none,
        ``ERROR_REASON_UNSPECIFIED`` when this client does not know it (the
        name is in ``error_info.reason``)."""
        info = self.details.error_info
        return info.error_reason if info is not None else None

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.message} ({self.code.name})"


class PoolExhausted(SandpoolError):
    """RESOURCE_EXHAUSTED: every container of the pool is leased (FAIL_FAST),
    or the wait for one ended (WAIT), or the caller holds as much as its
    quota allows (reason ``QUOTA_EXCEEDED``)."""

    @property
    def retry_after(self) -> Optional[float]:
        """The server's suggested wait before retrying, in seconds."""
        return self.details.retry_delay


class LeaseLost(SandpoolError):
    """The session's lease is gone: released, expired, revoked, or not kept
    alive within its TTL. The session cannot be used any more."""

    def __init__(
        self,
        lease_id: str,
        reason: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        details: Optional[ErrorDetails] = None,
        state: Optional[LeaseState] = None,
    ) -> None:
        super().__init__(f"lease {lease_id} is lost: {reason}", code=code, details=details)
        self.lease_id = lease_id
        self.reason = reason
        """Why the lease is lost, in words (the server's machine-readable
        reason, when it sent one, is ``error_reason``)."""
        self.state = state
        """How the lease ended (EXPIRED, RELEASED, REVOKED, NOT_FOUND) when
        the server said so, in a keepalive answer or an error; ``None`` when
        the client gave up on it (no keepalive confirmed within the TTL)."""


class PoolLost(SandpoolError):
    """An owned pool (see :meth:`sandpool.Client.create_owned_pool`) is gone:
    its owner TTL ran out on the server, someone deleted it, or this client
    confirmed no keepalive within the owner TTL (then the server deletes it
    by itself). The handle cannot be used any more; leases on the pool end
    with :attr:`LeaseState.POOL_DELETED`."""

    def __init__(
        self,
        pool: str,
        reason: str,
        *,
        code: Optional[grpc.StatusCode] = None,
        details: Optional[ErrorDetails] = None,
        state: Optional[LeaseState] = None,
    ) -> None:
        super().__init__(f"pool {pool} is lost: {reason}", code=code, details=details)
        self.pool = pool
        self.reason = reason
        """Why the pool is lost, in words."""
        self.state = state
        """``NOT_FOUND`` when the server said it has no such pool of this
        owner (a keepalive answer or a POOL_NOT_FOUND error); ``None`` when
        the client gave up on it or the server said it is being deleted."""


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
        details: Optional[ErrorDetails] = None,
    ) -> None:
        super().__init__(message, code=code, details=details)
        if field is None and self.details.field_violations:
            field = self.details.field_violations[0][0]
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
    """PERMISSION_DENIED: the caller's role or pool list does not allow the
    call (reason ``NOT_PERMITTED``), or a pool it asked for is outside the
    server's policy (``POLICY_VIOLATION``; ``details.field_violations``
    names the field)."""


class Unavailable(SandpoolError, ConnectionError):
    """UNAVAILABLE: the server (or its container engine) cannot be reached,
    or the server is shutting down."""


class AlreadyExists(SandpoolError):
    """ALREADY_EXISTS: a pool of that name exists."""


class Cancelled(SandpoolError):
    """CANCELLED: the call was cancelled."""


_BY_REASON: Dict[ErrorReason, Type[SandpoolError]] = {
    ErrorReason.INVALID_FIELD: InvalidArgument,
    ErrorReason.TOO_LARGE: InvalidArgument,
    ErrorReason.POOL_NOT_FOUND: NotFound,
    ErrorReason.POOL_EXISTS: AlreadyExists,
    ErrorReason.POOL_CLOSED: FailedPrecondition,
    ErrorReason.POOL_FAILING: FailedPrecondition,
    ErrorReason.POOL_EXHAUSTED: PoolExhausted,
    ErrorReason.LEASE_NOT_FOUND: LeaseLost,
    ErrorReason.LEASE_ENDED: LeaseLost,
    ErrorReason.CONTAINER_GONE: LeaseLost,
    ErrorReason.RUN_NOT_FOUND: NotFound,
    ErrorReason.CONTEXT_NOT_FOUND: NotFound,
    ErrorReason.CONTEXT_FAILED: FailedPrecondition,
    ErrorReason.PATH_NOT_FOUND: NotFound,
    ErrorReason.FILE_OPERATION_FAILED: FailedPrecondition,
    ErrorReason.NOT_ALLOWED: FailedPrecondition,
    ErrorReason.INSTALL_FAILED: FailedPrecondition,
    ErrorReason.IMAGE_MISSING: FailedPrecondition,
    ErrorReason.ENGINE_UNAVAILABLE: Unavailable,
    ErrorReason.ENGINE_FAILED: Unavailable,
    ErrorReason.BACKEND_UNSUPPORTED: SandpoolError,
    ErrorReason.SANDBOX_COMMAND_FAILED: SandpoolError,
    ErrorReason.SHUTTING_DOWN: Unavailable,
    ErrorReason.UNAUTHENTICATED: Unauthenticated,
    ErrorReason.NOT_PERMITTED: PermissionDenied,
    ErrorReason.POLICY_VIOLATION: PermissionDenied,
    ErrorReason.QUOTA_EXCEEDED: PoolExhausted,
    ErrorReason.RUN_ID_TAKEN: AlreadyExists,
    ErrorReason.STREAM_SUPERSEDED: SandpoolError,
}
"""The exception of every reason the server gives (each one's class is that
of its status code). The lease reasons are :class:`LeaseLost` on a call
about that lease, else their status code's class. A reason this client does
not know, and a status without one, map by the status code."""

LEASE_REASONS: FrozenSet[ErrorReason] = frozenset(r for r, cls in _BY_REASON.items() if cls is LeaseLost)
"""ErrorInfo reasons that say a call's lease is gone."""

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


def from_rpc_error(err: BaseException, lease_id: str = "") -> SandpoolError:
    """The :class:`SandpoolError` for a failed gRPC call: by the server's
    :class:`ErrorReason`, else by the status code. For a call on
    ``lease_id``, an error saying that this lease is gone is a
    :class:`LeaseLost`."""
    code, message = status_of(err)
    details = details_of(err)
    reason = details.error_info.error_reason if details.error_info is not None else None
    if lease_id and _lease_is_gone(code, message, details, reason, lease_id):
        return LeaseLost(lease_id, message, code=code, details=details, state=_end_of(reason, details))
    cls = _BY_REASON.get(reason) if reason is not None else None
    if cls is None or cls is LeaseLost:
        cls = _BY_CODE.get(code, SandpoolError)
    return cls(message, code=code, details=details)


def lease_lost_of(err: BaseException, lease_id: str) -> Optional[LeaseLost]:
    """A :class:`LeaseLost` when a failed call on ``lease_id`` failed because
    the lease is gone, else ``None``."""
    lost = from_rpc_error(err, lease_id)
    return lost if isinstance(lost, LeaseLost) else None


def pool_lost_of(err: BaseException, pool: str) -> Optional[PoolLost]:
    """A :class:`PoolLost` when a failed call about the owned pool ``pool``
    failed because the pool is gone (reason ``POOL_NOT_FOUND`` or
    ``POOL_CLOSED`` about it; without details, NOT_FOUND), else ``None``."""
    code, message = status_of(err)
    details = details_of(err)
    info = details.error_info
    reason = info.error_reason if info is not None else None
    if info is not None and reason is not None and reason is not ErrorReason.ERROR_REASON_UNSPECIFIED:
        if reason not in (ErrorReason.POOL_NOT_FOUND, ErrorReason.POOL_CLOSED):
            return None
        if info.metadata.get("pool", pool) != pool:
            return None
    elif code != grpc.StatusCode.NOT_FOUND:
        return None
    state = LeaseState.NOT_FOUND if code == grpc.StatusCode.NOT_FOUND else None
    return PoolLost(pool, message, code=code, details=details, state=state)


def _lease_is_gone(
    code: grpc.StatusCode, message: str, details: ErrorDetails, reason: Optional[ErrorReason], lease_id: str
) -> bool:
    """The server says so with a lease reason (LEASE_NOT_FOUND, LEASE_ENDED,
    CONTAINER_GONE) whose ``metadata["lease_id"]`` is this lease. Servers
    without ErrorInfo details: a PreconditionFailure ``CONTAINER_GONE`` about
    the lease, or a message that starts with the lease."""
    info = details.error_info
    if info is not None and reason is not None and reason is not ErrorReason.ERROR_REASON_UNSPECIFIED:
        return reason in LEASE_REASONS and info.metadata.get("lease_id", lease_id) == lease_id
    if any(kind == "CONTAINER_GONE" and subject == lease_id for kind, subject, _ in details.precondition_violations):
        return True
    return (
        info is None
        and code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        and (message.startswith(f"lease {lease_id} ") or f"the container of lease {lease_id} " in message)
    )


def _end_of(reason: Optional[ErrorReason], details: ErrorDetails) -> Optional[LeaseState]:
    """How the lease ended, by the reason and its ``end`` metadata."""
    if reason is ErrorReason.LEASE_NOT_FOUND:
        return LeaseState.NOT_FOUND
    end = details.error_info.metadata.get("end", "") if details.error_info is not None else ""
    if reason is ErrorReason.LEASE_ENDED and end in session_pb2.LeaseState.keys():
        return LeaseState.from_pb(session_pb2.LeaseState.Value(end))
    return None


# --- google.rpc.Status details ----------------------------------------------
#
# The server sends google.rpc.Status in the ``grpc-status-details-bin``
# trailer. Its few messages are decoded here from the wire format, so that the
# client needs neither grpcio-status nor googleapis-common-protos.

_DETAILS_KEY = "grpc-status-details-bin"
_TYPE_PREFIX = "type.googleapis.com/"


def _varint(buf: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf):
            raise ValueError("truncated varint")
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at
        shift += 7


def _fields(buf: bytes) -> Iterator[Tuple[int, Any]]:
    """(field number, value) pairs: ints for varints, bytes for
    length-delimited fields; fixed-width fields are skipped."""
    at = 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(buf, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(buf, at)
            if at + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[at : at + size]
            at += size
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else ""


def parse_status_details(raw: bytes) -> ErrorDetails:
    """The details of a serialized ``google.rpc.Status``."""
    error_info: Optional[ErrorInfo] = None
    fields_bad: List[Tuple[str, str]] = []
    preconditions: List[Tuple[str, str, str]] = []
    retry: Optional[float] = None
    for number, value in _fields(raw):
        if number != 3 or not isinstance(value, bytes):
            continue  # 1: code, 2: message
        type_url, body = "", b""
        for n, v in _fields(value):  # google.protobuf.Any
            if n == 1:
                type_url = _text(v)
            elif n == 2 and isinstance(v, bytes):
                body = v
        kind = type_url[len(_TYPE_PREFIX) :] if type_url.startswith(_TYPE_PREFIX) else type_url
        if kind == "google.rpc.ErrorInfo":
            reason = domain = ""
            metadata: Dict[str, str] = {}
            for n, v in _fields(body):
                if n == 1:
                    reason = _text(v)
                elif n == 2:
                    domain = _text(v)
                elif n == 3 and isinstance(v, bytes):
                    entry = dict(_fields(v))
                    metadata[_text(entry.get(1, b""))] = _text(entry.get(2, b""))
            error_info = ErrorInfo(reason, domain, metadata)
        elif kind == "google.rpc.BadRequest":
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    f = dict(_fields(v))
                    fields_bad.append((_text(f.get(1, b"")), _text(f.get(2, b""))))
        elif kind == "google.rpc.PreconditionFailure":
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    f = dict(_fields(v))
                    preconditions.append((_text(f.get(1, b"")), _text(f.get(2, b"")), _text(f.get(3, b""))))
        elif kind == "google.rpc.RetryInfo":
            for n, v in _fields(body):
                if n == 1 and isinstance(v, bytes):
                    d = dict(_fields(v))
                    secs, nanos = d.get(1, 0), d.get(2, 0)
                    retry = (secs if isinstance(secs, int) else 0) + (nanos if isinstance(nanos, int) else 0) / 1e9
    return ErrorDetails(error_info, fields_bad, preconditions, retry)


def details_of(err: BaseException) -> ErrorDetails:
    """The rich error details of a (sync or asyncio) gRPC error; empty when
    it carries none or they cannot be read."""
    trailing = getattr(err, "trailing_metadata", None)
    if not callable(trailing):
        return _NO_DETAILS
    try:
        metadata = trailing()
        for key, value in metadata or ():
            if key == _DETAILS_KEY and isinstance(value, bytes):
                return parse_status_details(value)
    except Exception:  # noqa: BLE001 - malformed details: code and message still hold
        return _NO_DETAILS
    return _NO_DETAILS
