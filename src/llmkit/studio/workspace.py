"""The studio's workspace: a directory whose ``runs/`` holds the runs. The run directories are the
studio's only state: everything shown is read from them on each request.

Every path a request names is resolved here, and refused unless it stays inside the workspace
after symlinks are followed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.rundir import RunDir

RUNS = "runs"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A run name the studio accepts: a plain folder name (no separators, no leading dot)."""
LOG_TAIL_LINES = 40


class Refused(UsageError):
    """A request the studio refuses (a path outside the workspace, a bad name, a busy run)."""

    def __init__(self, summary: str, detail: str = "", fix: str = "", status: int = 400) -> None:
        super().__init__(summary, detail, fix)
        self.status = status


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, path: str | Path) -> Workspace:
        root = Path(path).resolve()
        if not root.is_dir():
            raise UsageError(f"the workspace {path} is not a directory", "", "create it, or pass --workspace DIR")
        return cls(root)

    @property
    def runs(self) -> Path:
        return self.root / RUNS

    def inside(self, relative: str, must_exist: bool = False) -> Path:
        """``relative`` (a path the browser sent) as a path inside the workspace. Absolute paths,
        ``..`` and symlinks that lead out are refused, whatever the path's spelling."""
        if not isinstance(relative, str) or not relative or "\x00" in relative:
            raise Refused("a path is required", "", "give a path inside the workspace")
        if os.path.isabs(relative) or relative.startswith("~"):
            raise Refused(f"{relative!r} is an absolute path", "the studio reads and writes only inside its workspace",
                          "give a path relative to the workspace")
        path = (self.root / relative).resolve()
        if path != self.root and self.root not in path.parents:
            raise Refused(f"{relative!r} leads outside the workspace", "'..' and symlinks may not leave it",
                          "give a path inside the workspace", status=403)
        if must_exist and not path.exists():
            raise Refused(f"{relative!r} does not exist in the workspace", "", "check the path", status=404)
        return path

    def run(self, name: str, must_exist: bool = True) -> RunDir:
        """The run called ``name`` (a plain folder name under runs/)."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise Refused(f"{name!r} is not a run name", "letters, digits, '.', '_' and '-', 64 at most, "
                          "starting with a letter or digit", "choose another name")
        path = self.inside(f"{RUNS}/{name}")
        if must_exist and not (path / "config.yaml").is_file():
            raise Refused(f"there is no run {name!r} in this workspace", "", "pick one from the runs list", status=404)
        return RunDir(path)

    def run_names(self) -> list[str]:
        if not self.runs.is_dir():
            return []
        return sorted(p.name for p in self.runs.iterdir()
                      if NAME.fullmatch(p.name) and (p / "config.yaml").is_file() and self.root in p.resolve().parents)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log (read from its end: a long log is not read whole)."""
    if not path.is_file():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return text.splitlines()[-lines:]


def read_metrics_from(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The whole records of metrics.jsonl after byte ``offset``, and the offset after the last one
    (a line being written is left for the next read)."""
    if not path.is_file():
        return [], 0
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a damaged line (a killed writer) is skipped, as the report does
    return records, offset + end
