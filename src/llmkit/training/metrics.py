"""metrics.jsonl (always) and the experiment trackers (train.trackers): one line per logged step or evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any



class MetricsWriter:
    """Appends JSON lines; on resume, drops lines logged after the checkpoint being resumed."""

    def __init__(self, path: Path, resume_step: int, trackers: Any = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._fh = open(path, "a", encoding="utf-8")
        self.trackers = trackers  # llmkit.training.trackers.Trackers, or None

    def write(self, record: dict[str, Any]) -> None:
        """One line; floats that are not finite are written as null (valid JSON)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        if self.trackers is not None:
            self.trackers.write(clean)

    def close(self, artifacts: list[Path] | None = None, ok: bool = True) -> None:
        """Close the file, then hand the trackers the run's files (metrics.jsonl complete by then)."""
        self._fh.close()
        if self.trackers is not None:
            self.trackers.finish(artifacts or [], ok)


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
