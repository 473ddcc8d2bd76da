"""Python client of sandpool: warm pools of sandbox containers, leased over gRPC.

    import sandpool

    client = sandpool.Client()                 # $SANDPOOL_ADDR or 127.0.0.1:50051
    with client.acquire("python") as session:  # kept alive, released on exit
        for event in session.run("print('hi')"):
            print(event)
        with session.context() as ctx:         # a persistent interpreter
            ctx.run_collect("x = 41")
            print(ctx.run_collect("print(x + 1)").stdout)

``sandpool.AsyncClient`` offers the same calls for asyncio;
``sandpool.llm_sandbox`` is a drop-in for llm-sandbox's container pooling.
"""

from __future__ import annotations

from . import errors
from .aio import AsyncClient, AsyncContext, AsyncInteraction, AsyncOwnedPool, AsyncRunStream, AsyncSession
from .client import Client, Context, Interaction, OwnedPool, RunStream, Session
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    ErrorDetails,
    ErrorInfo,
    ErrorReason,
    FailedPrecondition,
    InvalidArgument,
    LeaseLost,
    NotFound,
    PermissionDenied,
    PoolExhausted,
    PoolLost,
    SandpoolError,
    Unauthenticated,
    Unavailable,
)
from .types import (
    Artifact,
    ArtifactFile,
    ArtifactInfo,
    EndReason,
    Exit,
    Gap,
    FileInfo,
    InstallResult,
    LeaseInfo,
    LeaseState,
    PlotFormat,
    RunEvent,
    RunResult,
    Started,
    Stderr,
    Stdout,
    UploadResult,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Artifact",
    "ArtifactFile",
    "ArtifactInfo",
    "AsyncClient",
    "AsyncContext",
    "AsyncOwnedPool",
    "AsyncInteraction",
    "AsyncRunStream",
    "AsyncSession",
    "Client",
    "Context",
    "DeadlineExceeded",
    "EndReason",
    "ErrorDetails",
    "ErrorInfo",
    "ErrorReason",
    "Exit",
    "Gap",
    "FailedPrecondition",
    "FileInfo",
    "InstallResult",
    "Interaction",
    "InvalidArgument",
    "LeaseInfo",
    "LeaseLost",
    "LeaseState",
    "NotFound",
    "OwnedPool",
    "PermissionDenied",
    "PlotFormat",
    "PoolExhausted",
    "PoolLost",
    "RunEvent",
    "RunResult",
    "RunStream",
    "SandpoolError",
    "Session",
    "Started",
    "Stderr",
    "Stdout",
    "Unauthenticated",
    "Unavailable",
    "UploadResult",
    "errors",
]
