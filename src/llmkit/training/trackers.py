"""Experiment trackers (``train.trackers``): TensorBoard, Weights & Biases, MLflow.

Each gets exactly the records metrics.jsonl gets (training steps and evaluations, as
``<kind>/<name>`` scalars at their step), the resolved config (flattened ``section.key``
parameters) and the manifest at the start, and at the end the run's files as artifacts
(config.yaml, manifest.json, metrics.jsonl, report.html). A resumed run continues the same W&B
and MLflow runs (their ids are kept in the run directory's ``trackers.json``).

A tracker never stops training: the first failure of one (not installed, a server that does not
answer, a full disk) is one warning, and that tracker is dropped for the rest of the run;
metrics.jsonl stays complete.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from llmkit.config.schema import RunConfig


def flat_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train.learning_rate": "0.001", ...}``: a nested config as tracker parameters."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if not isinstance(value, str) else value
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's numbers as ``<kind>/<name>`` (the step and the kind aside)."""
    kind = record.get("kind", "train")
    return {f"{kind}/{k}": float(v) for k, v in record.items()
            if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool)
            and v is not None and math.isfinite(float(v))}


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, cfg: RunConfig, root: Path, ids: dict[str, str], params: dict[str, Any]):
        from llmkit.optional import require

        require("tensorboard", "tensorboard", "train.trackers: tensorboard", "or remove it from train.trackers")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(root / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(params, indent=2) + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, files: list[Path], ok: bool) -> None:
        self.writer.close()


class _Wandb:
    name = "wandb"

    def __init__(self, cfg: RunConfig, root: Path, ids: dict[str, str], params: dict[str, Any]):
        from llmkit.optional import require

        wandb = require("wandb", "wandb", "train.trackers: wandb", "or remove it from train.trackers")
        self.wandb = wandb
        import secrets

        ids.setdefault("wandb", secrets.token_hex(4))  # W&B run ids: lowercase letters and digits
        (root / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=cfg.train.tracker_project or "llmkit", name=cfg.name, id=ids["wandb"],
                              resume="allow", dir=str(root), config=params,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def finish(self, files: list[Path], ok: bool) -> None:
        artifact = self.wandb.Artifact(f"run-{self.run.id}", type="llmkit-run")
        for f in files:
            artifact.add_file(str(f))
        self.run.log_artifact(artifact)
        self.run.finish(exit_code=0 if ok else 1)


class _Mlflow:
    name = "mlflow"

    def __init__(self, cfg: RunConfig, root: Path, ids: dict[str, str], params: dict[str, Any]):
        from llmkit.optional import require

        require("mlflow", "mlflow", "train.trackers: mlflow", "or remove it from train.trackers")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()  # MLFLOW_TRACKING_URI, as MLflow itself reads it
        if "mlflow" in ids:
            self.run_id = ids["mlflow"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = cfg.train.tracker_project or "llmkit"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=cfg.name, tags={"llmkit.run": cfg.name}).info.run_id
        ids["mlflow"] = self.run_id
        flat = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 parameters a batch
            self.client.log_batch(self.run_id, params=flat[start:start + 100])

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, files: list[Path], ok: bool) -> None:
        for f in files:
            self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")


KINDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}


class Trackers:
    """The config's trackers for one run (rank 0 only); every call survives a tracker's failure."""

    def __init__(self, cfg: RunConfig, root: Path, log: Any = print):
        self.root, self.say = root, log
        self.ids_file = root / "trackers.json"
        self.ids: dict[str, str] = json.loads(self.ids_file.read_text()) if self.ids_file.exists() else {}
        self.active: list[Any] = []
        manifest = root / "manifest.json"
        params = {**cfg.model_dump(mode="json"),
                  "manifest": json.loads(manifest.read_text()) if manifest.exists() else {}}
        for kind in cfg.train.trackers:
            try:
                self.active.append(KINDS[kind](cfg, root, self.ids, params))
            except Exception as exc:  # noqa: BLE001 - a tracker must never stop training
                self._failed(kind, exc)
        if self.ids:
            self.ids_file.write_text(json.dumps(self.ids, indent=2) + "\n")
        if "mlflow" in [t.name for t in self.active]:
            self.say(f"mlflow: run {self.ids['mlflow']} at {os.environ.get('MLFLOW_TRACKING_URI') or 'MLflow default'}")

    def _failed(self, kind: str, exc: BaseException) -> None:
        message = f"tracker {kind} failed and is off for the rest of this run ({type(exc).__name__}: " \
                  f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); metrics.jsonl is complete"
        warnings.warn(message, stacklevel=3)
        self.say(f"warning: {message}")
        self.active = [t for t in self.active if t.name != kind]

    def write(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if not values or record.get("kind") not in ("train", "eval"):
            return
        for tracker in list(self.active):
            try:
                tracker.log(values, int(record["step"]))
            except Exception as exc:  # noqa: BLE001
                self._failed(tracker.name, exc)

    def finish(self, files: list[Path], ok: bool = True) -> None:
        present = [f for f in files if f.exists()]
        for tracker in list(self.active):
            try:
                tracker.finish(present, ok)
            except Exception as exc:  # noqa: BLE001
                self._failed(tracker.name, exc)
        self.active = []
