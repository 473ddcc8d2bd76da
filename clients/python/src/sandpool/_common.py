"""What the sync and asyncio clients share: addresses, credentials, request
building and the conversion of values to their protobuf form."""

from __future__ import annotations

import datetime as _dt
import importlib
import io
import os
import re
import tarfile
from typing import (
    IO,
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
    Union,
)

import grpc
from google.protobuf import duration_pb2

from .errors import InvalidArgument
from .types import PlotFormat
from .v1 import artifact_pb2, pool_pb2, session_pb2

DEFAULT_ADDR = "127.0.0.1:50051"
"""Where the client connects when neither ``addr`` nor ``SANDPOOL_ADDR`` says."""

DEFAULT_TIMEOUT = 30.0
"""Deadline of unary calls, in seconds."""

DEFAULT_OWNER_TTL = 30.0
"""Owner TTL of an owned pool when the caller names none, in seconds."""

DEFAULT_ACQUIRE_WAIT = 300.0
"""Deadline of Acquire when the caller names none; the pool's own
``acquisition_timeout`` usually ends the wait first."""

DEFAULT_TRANSFER_TIMEOUT = 300.0
"""Deadline of uploads and downloads."""

RUN_DEADLINE_MARGIN = 60.0
"""Added to a run's timeout for the call's deadline: the server kills the run
at its timeout and still sends the exit event."""

DEFAULT_RUN_DEADLINE = 3600.0
"""A run that names no timeout gets the pool's (60 s unless configured, at
most the pool's max_run_timeout, 3600 s by default)."""

UPLOAD_CHUNK = 256 * 1024

MIN_KEEPALIVE = 0.1
"""Shortest keepalive period, whatever the TTL."""

KEEPALIVE_STREAM_LIFETIME = 600.0
"""A KeepAlive stream is reopened after this long (it has a deadline too)."""

KEEPALIVE_RETRY = 0.5
"""Pause before a renewal is tried again on a new stream after the last one
broke (while the lease's time allows)."""

Seconds = Union[float, int, _dt.timedelta]
TLS = Union[bool, grpc.ChannelCredentials, None]
Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]
Content = Union[str, bytes]
LeaseFiles = Mapping[str, Union[Content, Tuple[Content, int]]]
"""Files placed at Acquire: path -> content, or path -> (content, mode)."""
PlotFormatArg = Union[PlotFormat, str, None]

DEFAULT_INSTALL_TIMEOUT = 600.0
"""Deadline of InstallLibraries (an installer may take a while)."""

CHANNEL_OPTIONS: List[Tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def resolve_addr(addr: Optional[str]) -> str:
    if addr:
        return addr
    return os.environ.get("SANDPOOL_ADDR") or DEFAULT_ADDR


def resolve_token(token: Optional[str]) -> Optional[str]:
    if token:
        return token
    return os.environ.get("SANDPOOL_TOKEN") or None


def metadata_for(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """Call metadata: the bearer token, when there is one. Sent per call (not
    as call credentials) so that it also works on plaintext channels."""
    if token:
        return (("authorization", f"Bearer {token}"),)
    return ()


def _otel_propagate() -> Any:
    """OpenTelemetry's propagation API when ``opentelemetry-api`` is installed
    (the ``otel`` extra), else ``None``: no hard dependency."""
    try:
        return importlib.import_module("opentelemetry.propagate")
    except ImportError:
        return None


_PROPAGATE = _otel_propagate()
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def check_traceparent(traceparent: Optional[str]) -> Optional[str]:
    """A W3C ``traceparent`` given explicitly, checked (the server would
    ignore a malformed one silently)."""
    if traceparent is None:
        return None
    if not _TRACEPARENT.match(traceparent):
        raise InvalidArgument(
            f"invalid traceparent {traceparent!r}: expected 00-<32 hex>-<16 hex>-<2 hex>",
            code=None,
            field="traceparent",
        )
    return traceparent


def trace_metadata(traceparent: Optional[str], tracestate: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """W3C trace context for a call: the explicit ``traceparent`` (and
    ``tracestate``) when the client was given one, else the caller's current
    OpenTelemetry context (when ``opentelemetry-api`` is installed and a span
    is current), else nothing."""
    if traceparent is not None:
        if tracestate:
            return (("traceparent", traceparent), ("tracestate", tracestate))
        return (("traceparent", traceparent),)
    if _PROPAGATE is None:
        return ()
    carrier: Dict[str, str] = {}
    _PROPAGATE.inject(carrier)
    return tuple((k, v) for k, v in carrier.items() if k in ("traceparent", "tracestate") and v)


def channel_credentials(tls: TLS) -> Optional[grpc.ChannelCredentials]:
    """``None`` for plaintext; ``True`` for TLS with the system roots."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    return tls


def to_seconds(value: Seconds) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def duration(value: Seconds, field: str = "duration") -> duration_pb2.Duration:
    secs = to_seconds(value)
    if secs < 0:
        raise InvalidArgument(f"invalid {field}: must not be negative", code=None, field=field)
    d = duration_pb2.Duration()
    d.seconds = int(secs)
    d.nanos = int(round((secs - int(secs)) * 1e9))
    if d.nanos >= 1_000_000_000:
        d.seconds += 1
        d.nanos -= 1_000_000_000
    return d


def run_request(
    lease_id: str,
    *,
    code: Optional[Union[str, bytes]] = None,
    command: Optional[Union[str, Sequence[str]]] = None,
    language: Optional[str] = None,
    stdin: Optional[Union[str, bytes]] = None,
    env: Optional[Mapping[str, str]] = None,
    working_dir: Optional[str] = None,
    timeout: Optional[Seconds] = None,
    output_limit_bytes: Optional[int] = None,
    plot_format: PlotFormatArg = None,
    context_id: Optional[str] = None,
) -> session_pb2.RunRequest:
    """A RunRequest for code, or for a command (a string is a shell command
    line, a sequence an argv run without a shell)."""
    req = session_pb2.RunRequest(lease_id=lease_id)
    if plot_format is not None:
        req.plot_format = plot_format_pb(plot_format)
    if context_id:
        if command is not None or stdin is not None or env or working_dir:
            raise ValueError("a context runs code only: no command, stdin, env or working_dir")
        req.context_id = context_id
    if (code is None) == (command is None):
        raise ValueError("give exactly one of code and command")
    if code is not None:
        if isinstance(code, str):
            req.code.text = code
        else:
            req.code.data = bytes(code)
        if language:
            req.code.language = language
    elif isinstance(command, str):
        req.command.shell = command
    else:
        assert command is not None
        argv = list(command)
        if not argv:
            raise ValueError("the argv of a command must not be empty")
        req.command.argv.extend(argv)
    if stdin is not None:
        req.stdin = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
    if env:
        for k, v in env.items():
            req.env[k] = v
    if working_dir:
        req.working_dir = working_dir
    if timeout is not None:
        req.timeout.CopyFrom(duration(timeout, "timeout"))
    if output_limit_bytes is not None:
        req.output_limit_bytes = output_limit_bytes
    return req


def plot_format_pb(value: Union[PlotFormat, str]) -> "session_pb2.PlotFormat.ValueType":
    try:
        return PlotFormat(str(getattr(value, "value", value)).lower()).to_pb()
    except ValueError:
        raise InvalidArgument(
            f"invalid plot_format: {value!r} is not one of png, svg, pdf", code=None, field="plot_format"
        ) from None


def _bytes_of(content: Content) -> bytes:
    return content.encode() if isinstance(content, str) else bytes(content)


def acquire_request(
    pool: str,
    *,
    ttl: Optional[Seconds] = None,
    env: Optional[Mapping[str, str]] = None,
    files: Optional[LeaseFiles] = None,
) -> session_pb2.AcquireRequest:
    """An AcquireRequest with the lease's environment and files."""
    req = session_pb2.AcquireRequest(pool=pool)
    if ttl is not None:
        req.ttl.CopyFrom(duration(ttl, "ttl"))
    for k, v in (env or {}).items():
        req.env[k] = v
    for path, spec in (files or {}).items():
        f = req.files.add(path=path)
        if isinstance(spec, tuple):
            content, mode = spec
            f.content = _bytes_of(content)
            f.mode = mode
        else:
            f.content = _bytes_of(spec)
    return req


def run_deadline(timeout: Optional[Seconds]) -> float:
    base = DEFAULT_RUN_DEADLINE if timeout is None else to_seconds(timeout)
    return base + RUN_DEADLINE_MARGIN


# --- pools ------------------------------------------------------------------

_STRATEGIES = {
    "wait": pool_pb2.EXHAUSTION_STRATEGY_WAIT,
    "fail_fast": pool_pb2.EXHAUSTION_STRATEGY_FAIL_FAST,
    "temporary": pool_pb2.EXHAUSTION_STRATEGY_TEMPORARY,
}

_BACKENDS = {
    "docker": pool_pb2.BACKEND_DOCKER,
    "podman": pool_pb2.BACKEND_PODMAN,
    "kubernetes": pool_pb2.BACKEND_KUBERNETES,
    "k8s": pool_pb2.BACKEND_KUBERNETES,
}


def _name_of(value: object) -> str:
    """An enum member's value or a plain string, lower-cased."""
    raw = getattr(value, "value", value)
    return str(raw).strip().lower().replace("-", "_")


def strategy_pb(value: object) -> "pool_pb2.ExhaustionStrategy.ValueType":
    name = _name_of(value)
    if name not in _STRATEGIES:
        raise InvalidArgument(
            f"invalid config.exhaustion_strategy: {value!r} is not one of wait, fail_fast, temporary",
            code=None,
            field="config.exhaustion_strategy",
        )
    return _STRATEGIES[name]


def backend_pb(value: object) -> "pool_pb2.Backend.ValueType":
    name = _name_of(value)
    if name not in _BACKENDS:
        raise InvalidArgument(
            f"invalid backend: {value!r} is not one of docker, podman, kubernetes",
            code=None,
            field="backend",
        )
    return _BACKENDS[name]


_LIMIT_FIELDS = ("idle_timeout", "acquisition_timeout", "max_container_lifetime")

RUNTIME_FIELDS = (
    "mem_limit",
    "cpu_period",
    "cpu_quota",
    "cpus",
    "pids_limit",
    "network",
    "user",
    "read_only_root",
    "oci_runtime",
    "tmpfs_size",
    "env",
)


def pool_config_pb(
    *,
    max_pool_size: Optional[int] = None,
    min_pool_size: Optional[int] = None,
    idle_timeout: Optional[Seconds] = None,
    acquisition_timeout: Optional[Seconds] = None,
    health_check_interval: Optional[Seconds] = None,
    max_container_lifetime: Optional[Seconds] = None,
    max_container_uses: Optional[int] = None,
    exhaustion_strategy: object = None,
    enable_prewarming: Optional[bool] = None,
) -> pool_pb2.PoolConfig:
    """A PoolConfig; ``None`` leaves a field to the server's default. For the
    optional limits, 0 means "no limit"."""
    c = pool_pb2.PoolConfig()
    if max_pool_size is not None:
        c.max_pool_size = max_pool_size
    if min_pool_size is not None:
        c.min_pool_size = min_pool_size
    if idle_timeout is not None:
        c.idle_timeout.CopyFrom(duration(idle_timeout, "config.idle_timeout"))
    if acquisition_timeout is not None:
        c.acquisition_timeout.CopyFrom(duration(acquisition_timeout, "config.acquisition_timeout"))
    if health_check_interval is not None:
        c.health_check_interval.CopyFrom(duration(health_check_interval, "config.health_check_interval"))
    if max_container_lifetime is not None:
        c.max_container_lifetime.CopyFrom(duration(max_container_lifetime, "config.max_container_lifetime"))
    if max_container_uses is not None:
        c.max_container_uses = max_container_uses
    if exhaustion_strategy is not None:
        c.exhaustion_strategy = strategy_pb(exhaustion_strategy)
    if enable_prewarming is not None:
        c.enable_prewarming = enable_prewarming
    return c


def runtime_pb(runtime: Optional[Mapping[str, Any]]) -> pool_pb2.RuntimeConfig:
    """A RuntimeConfig from a mapping of its field names."""
    r = pool_pb2.RuntimeConfig()
    if not runtime:
        return r
    for key, value in runtime.items():
        if key not in RUNTIME_FIELDS:
            raise InvalidArgument(
                f"invalid runtime.{key}: unknown runtime setting; known: {', '.join(RUNTIME_FIELDS)}",
                code=None,
                field=f"runtime.{key}",
            )
        if value is None:
            continue
        if key == "env":
            for k, v in dict(value).items():
                r.env[str(k)] = str(v)
        elif key in ("mem_limit", "tmpfs_size"):
            setattr(r, key, str(value))
        elif key in ("cpu_period", "cpu_quota", "pids_limit"):
            setattr(r, key, int(value))
        elif key == "cpus":
            r.cpus = float(value)
        elif key == "read_only_root":
            r.read_only_root = bool(value)
        else:
            setattr(r, key, str(value))
    return r


def pool_spec_pb(
    name: str,
    *,
    language: str = "python",
    image: Optional[str] = None,
    backend: object = None,
    libraries: Optional[Sequence[str]] = None,
    config: Optional[pool_pb2.PoolConfig] = None,
    runtime: Optional[Mapping[str, Any]] = None,
    reuse: Optional[bool] = None,
    default_lease_ttl: Optional[Seconds] = None,
    max_lease_ttl: Optional[Seconds] = None,
    default_run_timeout: Optional[Seconds] = None,
    max_run_timeout: Optional[Seconds] = None,
    output_limit_bytes: Optional[int] = None,
    output_dir: Optional[str] = None,
    install_network: Optional[str] = None,
    lease_installs: Optional[bool] = None,
    package_index_url: Optional[str] = None,
    namespace: Optional[str] = None,
    run_buffer_bytes: Optional[int] = None,
    resident_runner: Optional[bool] = None,
) -> pool_pb2.PoolSpec:
    spec = pool_pb2.PoolSpec(name=name, language=language)
    if image:
        spec.image = image
    if backend is not None:
        spec.backend = backend_pb(backend)
    if libraries:
        spec.libraries.extend(libraries)
    if config is not None:
        spec.config.CopyFrom(config)
    if runtime:
        spec.runtime.CopyFrom(runtime_pb(runtime))
    if reuse is not None:
        spec.reuse = reuse
    if default_lease_ttl is not None:
        spec.default_lease_ttl.CopyFrom(duration(default_lease_ttl, "default_lease_ttl"))
    if max_lease_ttl is not None:
        spec.max_lease_ttl.CopyFrom(duration(max_lease_ttl, "max_lease_ttl"))
    if default_run_timeout is not None:
        spec.default_run_timeout.CopyFrom(duration(default_run_timeout, "default_run_timeout"))
    if max_run_timeout is not None:
        spec.max_run_timeout.CopyFrom(duration(max_run_timeout, "max_run_timeout"))
    if output_limit_bytes is not None:
        spec.output_limit_bytes = output_limit_bytes
    if output_dir:
        spec.output_dir = output_dir
    if install_network:
        spec.install_network = install_network
    if lease_installs is not None:
        spec.lease_installs = lease_installs
    if package_index_url:
        spec.package_index_url = package_index_url
    if namespace:
        spec.namespace = namespace
    if run_buffer_bytes is not None:
        spec.run_buffer_bytes = run_buffer_bytes
    if resident_runner is not None:
        spec.resident_runner = resident_runner
    return spec


# --- files ------------------------------------------------------------------


def upload_requests(
    lease_id: str,
    dest: str,
    source: Source,
    *,
    mode: Optional[int] = None,
    tar: bool = False,
    chunk_size: int = UPLOAD_CHUNK,
) -> Iterator[artifact_pb2.UploadRequest]:
    """The messages of an upload: the header, then the content in chunks.
    ``source`` is the content (bytes), a local file path, or a binary file
    object."""
    header = artifact_pb2.UploadHeader(lease_id=lease_id, path=dest, tar=tar)
    if mode is not None:
        header.mode = mode
    yield artifact_pb2.UploadRequest(header=header)
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        for at in range(0, len(view), chunk_size):
            yield artifact_pb2.UploadRequest(chunk=bytes(view[at : at + chunk_size]))
        return
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from _chunks_of(f, chunk_size)
        return
    yield from _chunks_of(source, chunk_size)


def _chunks_of(f: IO[bytes], chunk_size: int) -> Iterator[artifact_pb2.UploadRequest]:
    while True:
        data = f.read(chunk_size)
        if not data:
            return
        yield artifact_pb2.UploadRequest(chunk=data)


def tar_of_directory(local_dir: Union[str, "os.PathLike[str]"]) -> bytes:
    """A tar archive of a local directory's contents (names relative to it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for entry in sorted(os.listdir(local_dir)):
            tar.add(os.path.join(local_dir, entry), arcname=entry)
    return buf.getvalue()


def kind_name(kind: int) -> str:
    if kind == artifact_pb2.DOWNLOAD_KIND_TAR:
        return "tar"
    if kind == artifact_pb2.DOWNLOAD_KIND_FILE:
        return "file"
    return "unknown"


class PoolOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`sandpool.Client.create_pool` that
    make the pool's spec (``None`` takes the server's default)."""

    language: str
    image: Optional[str]
    backend: object
    libraries: Optional[Sequence[str]]
    max_pool_size: Optional[int]
    min_pool_size: Optional[int]
    idle_timeout: Optional[Seconds]
    acquisition_timeout: Optional[Seconds]
    health_check_interval: Optional[Seconds]
    max_container_lifetime: Optional[Seconds]
    max_container_uses: Optional[int]
    exhaustion_strategy: object
    enable_prewarming: Optional[bool]
    runtime: Optional[Mapping[str, Any]]
    reuse: Optional[bool]
    default_lease_ttl: Optional[Seconds]
    max_lease_ttl: Optional[Seconds]
    default_run_timeout: Optional[Seconds]
    max_run_timeout: Optional[Seconds]
    output_limit_bytes: Optional[int]
    output_dir: Optional[str]
    install_network: Optional[str]
    lease_installs: Optional[bool]
    package_index_url: Optional[str]
    namespace: Optional[str]
    run_buffer_bytes: Optional[int]
    resident_runner: Optional[bool]


_CONFIG_OPTIONS = (
    "max_pool_size",
    "min_pool_size",
    "idle_timeout",
    "acquisition_timeout",
    "health_check_interval",
    "max_container_lifetime",
    "max_container_uses",
    "exhaustion_strategy",
    "enable_prewarming",
)


def spec_of(name: str, options: PoolOptions) -> pool_pb2.PoolSpec:
    """The PoolSpec of pool ``name`` made with ``options`` (an unknown key
    raises ``TypeError``, as a wrong keyword argument does)."""
    rest: Dict[str, Any] = dict(options)
    config = pool_config_pb(**{k: rest.pop(k) for k in _CONFIG_OPTIONS if k in rest})
    return pool_spec_pb(name, config=config, **rest)


def owner_ttl_pb(ttl: Seconds) -> duration_pb2.Duration:
    """An owner TTL as a Duration (validated by the server: 1 s up to the
    pool's max_lease_ttl)."""
    return duration(ttl, "owner_ttl")
