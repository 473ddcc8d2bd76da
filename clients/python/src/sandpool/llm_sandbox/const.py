"""Backend and language names, as llm-sandbox's ``llm_sandbox.const`` has them."""

from __future__ import annotations

import enum

__all__ = ["SandboxBackend", "SupportedLanguage"]


class SandboxBackend(str, enum.Enum):
    """Container engines a pool can run on (the server decides which it
    reaches)."""

    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    PODMAN = "podman"


class SupportedLanguage(str, enum.Enum):
    """llm-sandbox's language names. The server runs the ones it has a
    handler for (python, javascript, go, java, cpp, ruby, r and more)."""

    PYTHON = "python"
    JAVA = "java"
    JAVASCRIPT = "javascript"
    CPP = "cpp"
    GO = "go"
    RUBY = "ruby"
    R = "r"
