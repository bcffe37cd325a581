"""What an export format is: ``export`` writes the run's model for another tool, ``verify``
checks what was written against the run's model (or says it checks nothing). Each format module
(``hf``, ``gguf``) sets ``FORMAT``; ``llmkit.registry.EXPORT_FORMATS`` names them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

Log = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    """One export: the run directory, its final/ as plain files (``src``: decrypted in memory for
    an encrypted run), where to write, and the options each format reads."""

    run: Path
    src: Path
    out: Path
    dtype: str = "float32"
    merge_lora: bool = True
    quant: str = "f32"
    overwrite: bool = False
    log: Log = print


@dataclass
class Exported:
    """What `export` wrote: the path, its files, the format; ``details`` the format's own facts
    (dtype, quant, bytes, ...); for a verified export the report and whether it reproduces the
    run's model (``verified``; None when not checked); ``pushed`` the Hub commit's URL."""

    path: Path
    format: str
    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    verified: bool | None = None
    report: Any = None
    pushed: str | None = None
    decrypted: bool = False
    summary: str | None = None
    """The verification in words (None: not verified)."""


class ExportFormat:
    """An export format. Subclasses set ``name`` and implement ``export`` (and ``verify`` where
    there is something to check)."""

    name: ClassVar[str]

    def export(self, request: ExportRequest) -> Exported:
        """Write the model; raise a UsageError for options it cannot honour."""
        raise NotImplementedError

    def verify(self, run: Path, exported: Exported) -> Any:
        """A report with ``ok`` on whether the export reproduces the run's model (None: nothing checked)."""
        return None

    def describe(self, report: Any) -> str:
        """``verify``'s report in words, as `llmkit export` prints it."""
        return f"verify: {'ok' if report.ok else 'FAILED'}"
