"""Result types with the names and fields of llm-sandbox's ``llm_sandbox.data``."""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

__all__ = ["ConsoleOutput", "ExecutionResult", "FileType", "PlotOutput", "StreamCallback"]

StreamCallback = Callable[[str], None]
"""Called with each decoded chunk of stdout or stderr as it arrives."""


class FileType(enum.Enum):
    """Formats of captured artifacts; ``.value`` is the file extension."""

    PNG = "png"
    JPEG = "jpeg"
    PDF = "pdf"
    SVG = "svg"
    CSV = "csv"
    JSON = "json"
    TXT = "txt"
    HTML = "html"


PLOT_MIME_TYPES: Dict[str, FileType] = {
    "image/png": FileType.PNG,
    "image/jpeg": FileType.JPEG,
    "image/svg+xml": FileType.SVG,
    "application/pdf": FileType.PDF,
}
"""Artifacts of these MIME types come back as plots."""


@dataclass(frozen=True)
class PlotOutput:
    """A captured figure: its format and its bytes in base64."""

    format: FileType
    content_base64: str
    width: Optional[int] = None
    height: Optional[int] = None
    dpi: Optional[int] = None

    @property
    def content(self) -> bytes:
        """The decoded bytes (a sandpool addition)."""
        return base64.b64decode(self.content_base64)


@dataclass(frozen=True)
class ConsoleOutput:
    """Exit code, stdout and stderr of a run or a command."""

    exit_code: int = 0
    stderr: str = ""
    stdout: str = ""

    def text(self) -> str:
        """Deprecated in llm-sandbox: the same as ``stdout``."""
        return self.stdout

    def success(self) -> bool:
        """Whether the exit code is 0."""
        return self.exit_code == 0

    def to_json(self, include_plots: bool = False) -> str:
        data = asdict(self)
        if not include_plots:
            data.pop("plots", None)
        else:
            data["plots"] = [
                {**p, "format": p["format"].value} for p in data.get("plots", [])
            ]
        return json.dumps(data, indent=2)


@dataclass(frozen=True)
class ExecutionResult(ConsoleOutput):
    """A run's console output plus the plots it produced."""

    plots: List[PlotOutput] = field(default_factory=list)
