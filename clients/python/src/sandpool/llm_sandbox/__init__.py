"""An llm-sandbox compatible layer over sandpool.

Code written for llm-sandbox's container pooling runs after changing only its
imports::

    from sandpool.llm_sandbox import SandboxSession, ArtifactSandboxSession
    from sandpool.llm_sandbox.pool import create_pool_manager, PoolConfig

Pools live on the sandpool server named by ``SANDPOOL_ADDR`` (default
``127.0.0.1:50051``). COMPAT.md lists the differences that remain.
"""

from __future__ import annotations

from .const import SandboxBackend, SupportedLanguage
from .data import ConsoleOutput, ExecutionResult, FileType, PlotOutput, StreamCallback
from .exceptions import (
    ContainerError,
    LanguageNotSupportPlotError,
    LibraryInstallationNotSupportedError,
    NotOpenSessionError,
    SandboxError,
    SandboxTimeoutError,
    UnsupportedBackendError,
)
from .session import ArtifactSandboxSession, SandboxSession, create_session

__all__ = [
    "ArtifactSandboxSession",
    "ConsoleOutput",
    "ContainerError",
    "ExecutionResult",
    "FileType",
    "LanguageNotSupportPlotError",
    "LibraryInstallationNotSupportedError",
    "NotOpenSessionError",
    "PlotOutput",
    "SandboxBackend",
    "SandboxError",
    "SandboxSession",
    "SandboxTimeoutError",
    "StreamCallback",
    "SupportedLanguage",
    "UnsupportedBackendError",
    "create_session",
]
