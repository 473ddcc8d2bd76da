"""Python client of sandpool: warm pools of sandbox containers, leased over gRPC.

    import sandpool

    client = sandpool.Client()                 # $SANDPOOL_ADDR or 127.0.0.1:50051
    with client.acquire("python") as session:  # kept alive, released on exit
        for event in session.run("print('hi')"):
            print(event)

``sandpool.AsyncClient`` offers the same calls for asyncio;
``sandpool.llm_sandbox`` is a drop-in for llm-sandbox's container pooling.
"""

from __future__ import annotations

from . import errors
from .aio import AsyncClient, AsyncRunStream, AsyncSession
from .client import Client, RunStream, Session
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    LeaseLost,
    NotFound,
    PoolExhausted,
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
    FileInfo,
    LeaseInfo,
    LeaseState,
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
    "AsyncRunStream",
    "AsyncSession",
    "Client",
    "DeadlineExceeded",
    "EndReason",
    "Exit",
    "FailedPrecondition",
    "FileInfo",
    "InvalidArgument",
    "LeaseInfo",
    "LeaseLost",
    "LeaseState",
    "NotFound",
    "PoolExhausted",
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
