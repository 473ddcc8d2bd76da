"""Typed values of the client: run events, run results, leases and files.

Pool administration answers with the generated protobuf messages
(``sandpool.v1.pool_pb2.Pool``, ``PoolStats``), which are fully typed by their
stubs; runs and files use the small dataclasses here.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from google.protobuf import duration_pb2, timestamp_pb2

from .v1 import artifact_pb2, session_pb2

__all__ = [
    "Artifact",
    "ArtifactFile",
    "ArtifactInfo",
    "EndReason",
    "Exit",
    "FileInfo",
    "InstallResult",
    "LeaseInfo",
    "LeaseState",
    "PlotFormat",
    "RunCollector",
    "RunEvent",
    "RunResult",
    "Started",
    "Stderr",
    "Stdout",
    "UploadResult",
]


class EndReason(str, enum.Enum):
    """Why a run ended."""

    UNSPECIFIED = "unspecified"
    EXITED = "exited"
    SIGNALED = "signaled"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    OUTPUT_LIMIT = "output_limit"
    LEASE_EXPIRED = "lease_expired"
    #: The container's resident runner broke its protocol mid-run; the run
    #: was killed (see the server's README).
    RUNNER_LOST = "runner_lost"

    @classmethod
    def from_pb(cls, value: int) -> EndReason:
        return _END_REASONS.get(value, cls.UNSPECIFIED)


_END_REASONS: Dict[int, EndReason] = {
    session_pb2.END_REASON_EXITED: EndReason.EXITED,
    session_pb2.END_REASON_SIGNALED: EndReason.SIGNALED,
    session_pb2.END_REASON_TIMEOUT: EndReason.TIMEOUT,
    session_pb2.END_REASON_CANCELLED: EndReason.CANCELLED,
    session_pb2.END_REASON_OUTPUT_LIMIT: EndReason.OUTPUT_LIMIT,
    session_pb2.END_REASON_LEASE_EXPIRED: EndReason.LEASE_EXPIRED,
    session_pb2.END_REASON_RUNNER_LOST: EndReason.RUNNER_LOST,
}


class LeaseState(str, enum.Enum):
    """The state of a lease as a keepalive or a release reports it."""

    UNSPECIFIED = "unspecified"
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    REVOKED = "revoked"
    LIFETIME_EXCEEDED = "lifetime_exceeded"
    CONTAINER_LOST = "container_lost"
    POOL_DELETED = "pool_deleted"
    REPLICA_GONE = "replica_gone"

    @classmethod
    def from_pb(cls, value: int) -> LeaseState:
        return _LEASE_STATES.get(value, cls.UNSPECIFIED)


_LEASE_STATES: Dict[int, LeaseState] = {
    session_pb2.LEASE_STATE_ACTIVE: LeaseState.ACTIVE,
    session_pb2.LEASE_STATE_RELEASED: LeaseState.RELEASED,
    session_pb2.LEASE_STATE_EXPIRED: LeaseState.EXPIRED,
    session_pb2.LEASE_STATE_NOT_FOUND: LeaseState.NOT_FOUND,
    session_pb2.LEASE_STATE_REVOKED: LeaseState.REVOKED,
    session_pb2.LEASE_STATE_LIFETIME_EXCEEDED: LeaseState.LIFETIME_EXCEEDED,
    session_pb2.LEASE_STATE_CONTAINER_LOST: LeaseState.CONTAINER_LOST,
    session_pb2.LEASE_STATE_POOL_DELETED: LeaseState.POOL_DELETED,
    session_pb2.LEASE_STATE_REPLICA_GONE: LeaseState.REPLICA_GONE,
}


class PlotFormat(str, enum.Enum):
    """How captured figures (matplotlib's ``plt.show()`` and figures left
    open at the end of a run) are saved. A plain string ("svg") works too."""

    PNG = "png"
    SVG = "svg"
    PDF = "pdf"

    def to_pb(self) -> "session_pb2.PlotFormat.ValueType":
        return _PLOT_FORMATS[self]


_PLOT_FORMATS: Dict[PlotFormat, "session_pb2.PlotFormat.ValueType"] = {
    PlotFormat.PNG: session_pb2.PLOT_FORMAT_PNG,
    PlotFormat.SVG: session_pb2.PLOT_FORMAT_SVG,
    PlotFormat.PDF: session_pb2.PLOT_FORMAT_PDF,
}


def seconds_of(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def time_of(t: timestamp_pb2.Timestamp) -> Optional[_dt.datetime]:
    if t.seconds == 0 and t.nanos == 0:
        return None
    return _dt.datetime.fromtimestamp(t.seconds + t.nanos / 1e9, tz=_dt.timezone.utc)


@dataclass(frozen=True)
class LeaseInfo:
    """A lease on one container."""

    id: str
    pool: str
    container_id: str
    ttl: float
    expire_time: Optional[_dt.datetime]
    temporary: bool
    language: str

    @classmethod
    def from_pb(cls, lease: session_pb2.Lease) -> LeaseInfo:
        return cls(
            id=lease.id,
            pool=lease.pool,
            container_id=lease.container_id,
            ttl=seconds_of(lease.ttl) if lease.HasField("ttl") else 0.0,
            expire_time=time_of(lease.expire_time),
            temporary=lease.temporary,
            language=lease.language,
        )


@dataclass(frozen=True)
class ArtifactInfo:
    """A file a run produced in the pool's output directory."""

    name: str
    path: str
    mime_type: str
    size: int
    sha256: str
    run_id: str
    modify_time: Optional[_dt.datetime]
    plot: bool = False
    """A figure captured from a plotting library (under ``plots/``)."""

    @classmethod
    def from_pb(cls, info: artifact_pb2.ArtifactInfo) -> ArtifactInfo:
        return cls(
            name=info.name,
            path=info.path,
            mime_type=info.mime_type,
            size=info.size,
            sha256=info.sha256,
            run_id=info.run_id,
            modify_time=time_of(info.modify_time),
            plot=info.plot,
        )


# --- run events -----------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The run started; ``run_id`` is what :meth:`Session.cancel` takes."""

    run_id: str
    start_time: Optional[_dt.datetime]
    seq: int = 0


@dataclass(frozen=True)
class Stdout:
    """Bytes the program wrote to standard output."""

    data: bytes
    seq: int = 0

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (a character split across two chunks
        shows as U+FFFD here; results decode the whole output at once)."""
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Stderr:
    """Bytes the program wrote to standard error."""

    data: bytes
    seq: int = 0

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@dataclass(frozen=True)
class Artifact:
    """A piece of a file the run produced (``last`` on the final piece).
    ``omitted``: the server left the content out of the stream (too large);
    download it by ``info.path``."""

    info: ArtifactInfo
    offset: int
    data: bytes
    last: bool
    seq: int = 0
    omitted: bool = False


@dataclass(frozen=True)
class Exit:
    """The run ended; always the last event."""

    exit_code: int
    end_reason: EndReason
    signal: int
    duration: float
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    message: str
    seq: int = 0
    context_restarted: bool = False
    """The run's context had to be restarted to stop it: its state is gone."""


@dataclass(frozen=True)
class Gap:
    """Events of the run that the server no longer had when a broken stream
    was resumed (its buffer for the run overflowed meanwhile): sequence
    numbers ``from_seq`` to ``to_seq`` and the bytes of each kind lost."""

    from_seq: int
    to_seq: int
    stdout_bytes: int
    stderr_bytes: int
    artifact_bytes: int
    seq: int = 0


RunEvent = Union[Started, Stdout, Stderr, Artifact, Exit, Gap]


def event_from_pb(resp: session_pb2.RunResponse) -> Optional[RunEvent]:
    """The typed event of one RunResponse (``None`` for an event kind this
    client does not know, from a newer server)."""
    kind = resp.WhichOneof("event")
    seq = resp.seq
    if kind == "stdout":
        return Stdout(resp.stdout.data, seq)
    if kind == "stderr":
        return Stderr(resp.stderr.data, seq)
    if kind == "started":
        return Started(resp.started.run_id, time_of(resp.started.start_time), seq)
    if kind == "artifact":
        a = resp.artifact
        return Artifact(ArtifactInfo.from_pb(a.info), a.offset, a.data, a.last, seq, a.omitted)
    if kind == "gap":
        g = resp.gap
        return Gap(g.from_seq, g.to_seq, g.stdout_bytes, g.stderr_bytes, g.artifact_bytes, seq)
    if kind == "exit":
        e = resp.exit
        return Exit(
            exit_code=e.exit_code,
            end_reason=EndReason.from_pb(e.end_reason),
            signal=e.signal,
            duration=seconds_of(e.duration),
            stdout_bytes=e.stdout_bytes,
            stderr_bytes=e.stderr_bytes,
            truncated=e.truncated,
            message=e.message,
            seq=seq,
            context_restarted=e.context_restarted,
        )
    return None


# --- results ----------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactFile:
    """A whole artifact of a run: its description and its bytes (empty when
    ``omitted``: then ``Session.download(info.path)`` fetches them)."""

    info: ArtifactInfo
    data: bytes
    omitted: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def mime_type(self) -> str:
        return self.info.mime_type

    @property
    def path(self) -> str:
        """Absolute path in the container (for ``Session.download``)."""
        return self.info.path

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def sha256(self) -> str:
        return self.info.sha256

    @property
    def plot(self) -> bool:
        """A figure captured from a plotting library (``plots/<name>``)."""
        return self.info.plot


@dataclass(frozen=True)
class RunResult:
    """Everything a run produced, collected."""

    run_id: str
    stdout: str
    stderr: str
    exit_code: int
    end_reason: EndReason
    duration: float
    artifacts: List[ArtifactFile] = field(default_factory=list)
    signal: int = 0
    truncated: bool = False
    message: str = ""
    stdout_raw: bytes = b""
    stderr_raw: bytes = b""
    context_restarted: bool = False
    """The run's context was restarted to stop it (its state is gone)."""
    gaps: List[Gap] = field(default_factory=list)
    """Output lost while the connection was broken for longer than the
    server could keep the run's events (empty almost always)."""

    @property
    def plots(self) -> List[ArtifactFile]:
        """The figures the run's plotting library produced (matplotlib's
        ``plt.show()`` and figures still open at the end), in order."""
        return [a for a in self.artifacts if a.info.plot]

    @property
    def files(self) -> List[ArtifactFile]:
        """The other artifacts: files the run wrote to the output directory."""
        return [a for a in self.artifacts if not a.info.plot]

    @property
    def ok(self) -> bool:
        """The program exited by itself with code 0."""
        return self.end_reason is EndReason.EXITED and self.exit_code == 0


class RunCollector:
    """Accumulates run events into a :class:`RunResult`."""

    def __init__(self, encoding_errors: str = "replace") -> None:
        self._errors = encoding_errors
        self._out = bytearray()
        self._err = bytearray()
        self._run_id = ""
        self._exit: Optional[Exit] = None
        self._parts: Dict[str, Tuple[ArtifactInfo, bytearray]] = {}
        self._order: List[str] = []
        self._omitted: Dict[str, bool] = {}
        self._gaps: List[Gap] = []

    def add(self, event: RunEvent) -> None:
        if isinstance(event, Gap):
            self._gaps.append(event)
        elif isinstance(event, Stdout):
            self._out += event.data
        elif isinstance(event, Stderr):
            self._err += event.data
        elif isinstance(event, Started):
            self._run_id = event.run_id
        elif isinstance(event, Artifact):
            key = event.info.path or event.info.name
            if key not in self._parts:
                self._parts[key] = (event.info, bytearray())
                self._order.append(key)
            if event.last:
                # The final piece carries the complete info (sha256).
                self._parts[key] = (event.info, self._parts[key][1])
            if event.omitted:
                self._omitted[key] = True
            buf = self._parts[key][1]
            end = event.offset + len(event.data)
            if len(buf) < end:
                buf.extend(b"\0" * (end - len(buf)))
            buf[event.offset : end] = event.data
        elif isinstance(event, Exit):
            self._exit = event

    @property
    def exited(self) -> bool:
        return self._exit is not None

    def result(self) -> RunResult:
        e = self._exit
        if e is None:
            raise RuntimeError("the run has not ended")
        return RunResult(
            run_id=self._run_id,
            stdout=bytes(self._out).decode("utf-8", self._errors),
            stderr=bytes(self._err).decode("utf-8", self._errors),
            exit_code=e.exit_code,
            end_reason=e.end_reason,
            duration=e.duration,
            artifacts=[
                ArtifactFile(self._parts[k][0], bytes(self._parts[k][1]), self._omitted.get(k, False))
                for k in self._order
            ],
            signal=e.signal,
            truncated=e.truncated,
            message=e.message,
            stdout_raw=bytes(self._out),
            stderr_raw=bytes(self._err),
            context_restarted=e.context_restarted,
            gaps=list(self._gaps),
        )


@dataclass(frozen=True)
class InstallResult:
    """What ``install_libraries`` did: the installer's output and how long
    it took, in seconds."""

    log: str
    duration: float


@dataclass(frozen=True)
class UploadResult:
    """Where an upload was written, how many bytes, and their SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileInfo:
    """What a download carried: ``kind`` is ``"file"`` or ``"tar"`` (a
    directory, as a tar archive)."""

    path: str
    kind: str
    mode: int
    size: int
