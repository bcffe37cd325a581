"""What the studio shows of a run, read from its directory each time it is asked."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from llmkit.rundir import RunDir
from llmkit.studio import jobs
from llmkit.studio.workspace import log_tail

SPARK_POINTS = 60
CLI_ACTIVE_S = 120.0
"""A run with no studio job whose metrics.jsonl grew this recently is shown as training (from the CLI)."""


def _train_records(run: RunDir) -> list[dict[str, Any]]:
    out = []
    for r in _records(run):
        if r.get("kind") == "train" and isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float)):
            out.append(r)
    return out


_READ: dict[Path, tuple[tuple[int, int], list[dict[str, Any]]]] = {}
"""metrics.jsonl's records by file, with the (size, mtime) they were read at: each page watching a
run asks twice a second, and a long run's file is read again only when it has grown."""


def _records(run: RunDir) -> list[dict[str, Any]]:
    try:
        stat = run.metrics.stat()
    except OSError:
        return []
    seen = (stat.st_size, stat.st_mtime_ns)
    cached = _READ.get(run.metrics)
    if cached is not None and cached[0] == seen:
        return cached[1]
    out = _parse(run)
    if len(_READ) > 64:
        _READ.clear()
    _READ[run.metrics] = (seen, out)
    return out


def _parse(run: RunDir) -> list[dict[str, Any]]:
    out = []
    for line in run.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _max_steps(run: RunDir) -> int | None:
    try:
        return run.load_config().train.max_steps
    except Exception:  # a config the studio cannot read is shown as such, not as an error page
        return None


def status_of(run: RunDir, record: dict[str, Any] | None) -> str:
    """preparing / training / stopping / stopped / failed / done / created, from the train job's
    record when the studio started it, else from the files."""
    if record is not None:
        status = record["status"]
        if status in ("starting", "running"):
            return record.get("phase", "preparing")
        return status
    if run.final.is_dir():
        return "done"
    if run.metrics.is_file() and time.time() - run.metrics.stat().st_mtime < CLI_ACTIVE_S:
        return "training"
    return "stopped" if run.metrics.is_file() or run.checkpoints.is_dir() else "created"


def _eta(train: list[dict[str, Any]], total: int | None) -> float | None:
    if total is None or len(train) < 2:
        return None
    a, b = train[-2], train[-1]
    ds, dt = b["step"] - a["step"], float(b.get("elapsed_s", 0)) - float(a.get("elapsed_s", 0))
    if ds <= 0 or dt <= 0:
        return None
    return max(0.0, (total - b["step"]) * dt / ds)


def summary(run: RunDir) -> dict[str, Any]:
    record = jobs.state(run, "train")
    train = _train_records(run)
    total = _max_steps(run)
    status = status_of(run, record)
    stride = max(1, len(train) // SPARK_POINTS)
    last = train[-1] if train else None
    saved = [c["step"] for c in checkpoints(run)]  # a stop checkpoints a step that was not logged
    step = max([last["step"] if last else 0, *saved])
    return {"name": run.root.name, "status": status, "step": step, "total": total,
            "eta_s": _eta(train, total) if status == "training" else None,
            "loss": last["loss"] if last else None, "spark": [r["loss"] for r in train[::stride]][-SPARK_POINTS:],
            "busy": jobs.busy(run), "updated": run.metrics.stat().st_mtime if run.metrics.is_file() else None}


def checkpoints(run: RunDir) -> list[dict[str, Any]]:
    """Committed checkpoints, and whether each can be chatted with (a sharded one cannot)."""
    from llmkit.training.checkpoint import committed

    out = []
    for step, path in committed(run.checkpoints):
        sharded = (path / "dcp").is_dir()
        out.append({"step": step, "sharded": sharded,
                    "chat": None if not sharded else "written by several processes: its tensors are split per "
                    "rank; chat with the final model, or resume the run to its end"})
    return out


def exports(run: RunDir) -> list[dict[str, Any]]:
    folder = run.root / "studio" / "exports"
    if not folder.is_dir():
        return []
    return [{"file": p.name, "bytes": p.stat().st_size} for p in sorted(folder.iterdir()) if p.is_file()]


def detail(run: RunDir) -> dict[str, Any]:
    out = summary(run)
    out.update(config=run.config.read_text(encoding="utf-8", errors="replace"), checkpoints=checkpoints(run),
               final=run.final.is_dir(), report=run.report.is_file(), exports=exports(run),
               jobs={kind: jobs.state(run, kind) for kind in jobs.KINDS},
               log=log_tail(jobs.log_path(run, "train")), cli=cli_commands(run))
    out["eval"] = json.loads(run.eval_results.read_text()) if run.eval_results.is_file() else None
    out["hub_push"] = hub_token(run) is not None
    return out


def hub_token(run: RunDir) -> str | None:
    """The run's Hub token variable when it holds a token (an export may then be pushed)."""
    try:
        name = run.load_config().hub_token_env
    except Exception:  # an unreadable config pushes nothing
        return None
    return name if name and os.environ.get(name) else None


def cli_commands(run: RunDir) -> list[str]:
    """The commands that do from a terminal what the studio's buttons do."""
    config = Path("runs") / run.root.name / "config.yaml"
    where = Path("runs") / run.root.name
    return [f"llmkit prepare -c {config}", f"llmkit train -c {config}",
            f"llmkit eval {where}", f"llmkit report {where}", f"llmkit export {where} --format gguf --out {where}/studio/exports/model.gguf"]
