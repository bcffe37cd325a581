"""train.trackers: TensorBoard, W&B (offline, files under the run) and MLflow (a real `mlflow
server` on 127.0.0.1) get what metrics.jsonl gets; a failing tracker never stops training."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llmkit.config.load import load_config
from llmkit.training.loop import train

from .helpers import make_run

pytestmark = pytest.mark.slow  # an MLflow server and tracker runs

STEPS = {"max_steps": 12, "eval_every_steps": 6, "log_every_steps": 3, "checkpoint_every_steps": 6}


def _jsonl(run: Path, kind: str, key: str) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r.get("kind") == kind and r.get(key) is not None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tensorboard_events_match_metrics_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_run(tmp_path, train={**STEPS, "trackers": ["tensorboard"]})
    result = train(load_config(cfg, environ={}), log=lambda _: None)
    events = list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, list(result.run_dir.iterdir())
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/mfu", "eval/val_loss"} <= set(acc.Tags()["scalars"])
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        logged = {e.step: e.value for e in acc.Scalars(f"{kind}/{key}")}
        expected = _jsonl(result.run_dir, kind, key)
        assert logged.keys() == expected.keys() and all(logged[s] == pytest.approx(v, rel=1e-6) for s, v in expected.items())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-2000:]
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_mlflow_server_gets_the_metrics_params_and_artifacts(tmp_path: Path, mlflow_server: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = make_run(tmp_path, train={**STEPS, "trackers": ["mlflow"], "tracker_project": "llmkit-tests"})
    first = train(load_config(cfg, environ={}), stop_at_step=6, log=lambda _: None)  # then resume: the same run
    run_id = json.loads((first.run_dir / "trackers.json").read_text())["mlflow"]
    result = train(load_config(cfg, environ={}), log=lambda _: None)
    assert json.loads((result.run_dir / "trackers.json").read_text())["mlflow"] == run_id
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert client.get_experiment(run.info.experiment_id).name == "llmkit-tests"
    for kind, key in (("train", "loss"), ("train", "tokens_per_s"), ("eval", "val_loss")):
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"{kind}/{key}")}
        expected = _jsonl(result.run_dir, kind, key)
        assert history.keys() == expected.keys(), (kind, key, history, expected)
        assert all(history[s] == pytest.approx(v, rel=1e-6) for s, v in expected.items())
    params = run.data.params
    assert params["train.learning_rate"] == "0.003" and params["name"] == "t"
    assert params["manifest.config_sha256"]  # the manifest is a parameter too
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.jsonl", "config.yaml", "manifest.json", "report.html"} <= artifacts
    local = Path(client.download_artifacts(run_id, "metrics.jsonl", str(tmp_path)))
    assert local.read_text() == (result.run_dir / "metrics.jsonl").read_text()


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (LevelDB's log format after a 7-byte W&B header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            records.append(partial + chunk)
    return records


def test_wandb_offline_keeps_its_files_under_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2 as pb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_run(tmp_path, train={**STEPS, "trackers": ["wandb"]})
    result = train(load_config(cfg, environ={}), log=lambda _: None)
    logs = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1, list((result.run_dir / "wandb").rglob("*"))
    history: dict[str, dict[int, float]] = {}
    config_keys = set()
    for raw in _wandb_records(logs[0]):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            for key, value in items.items():
                if "/" in key and isinstance(value, (int, float)):
                    history.setdefault(key, {})[int(items.get("_step", record.history.step.num))] = value
        elif kind in ("run", "config"):  # the config comes with the run record (and any later updates)
            update = record.run.config.update if kind == "run" else record.config.update
            config_keys |= {u.key for u in update}
    assert {"train", "model", "manifest"} <= config_keys
    for kind, key in (("train", "loss"), ("eval", "val_loss")):
        expected = _jsonl(result.run_dir, kind, key)
        assert history[f"{kind}/{key}"].keys() == expected.keys()
        assert all(history[f"{kind}/{key}"][s] == pytest.approx(v, rel=1e-6) for s, v in expected.items())


def test_a_tracker_that_fails_only_warns_and_metrics_stay_complete(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    lines: list[str] = []
    cfg = make_run(tmp_path, train={**STEPS, "trackers": ["mlflow"]})
    with pytest.warns(UserWarning, match="tracker mlflow failed"):
        result = train(load_config(cfg, environ={}), log=lines.append)
    assert result.reason == "completed" and result.step == 12
    assert any("tracker mlflow failed" in line and "metrics.jsonl is complete" in line for line in lines)
    assert sorted(_jsonl(result.run_dir, "train", "loss")) == [3, 6, 9, 12]
    assert os.path.exists(result.run_dir / "final")
