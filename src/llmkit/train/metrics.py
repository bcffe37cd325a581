"""metrics.jsonl (always) and TensorBoard (optional): one line per logged step or evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmkit.optional import require


class MetricsWriter:
    """Appends JSON lines; on resume, drops lines logged after the checkpoint being resumed."""

    def __init__(self, path: Path, resume_step: int, tensorboard_dir: Path | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._fh = open(path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_dir is not None:
            require("tensorboard", "tensorboard", "train.tensorboard", "or set train.tensorboard: false")
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict[str, Any]) -> None:
        """One line; floats that are not finite are written as null (valid JSON)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and key != "step" and value is not None:
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


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
