"""Jobs started from the studio, over a real socket: a run started, stopped (a checkpoint) and
resumed from the studio logs the same losses, validation losses and learning rates at every step
as the same config trained from the CLI in one go; the run then reads with `llmkit eval`,
exports to GGUF (downloaded through its link) and answers through the studio's chat, checkpoint
and final model side by side. Jobs outlive the studio, and a job that dies is shown as failed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Studio, start_studio, stop_studio, tiny_yaml

pytestmark = pytest.mark.slow  # training runs, several processes

SECTIONS: dict[str, Any] = {"train": {"max_steps": 30, "eval_every_steps": 10, "checkpoint_every_steps": 100,
                                      "warmup_steps": 3, "keep_last": 3}}
SLOW_STEPS = {"LLMKIT_FAULT": "step:sleep=0.25"}  # a person (or a test) can press Stop mid-run


def by_step(run: Path) -> tuple[dict[int, tuple[float, float]], dict[int, float]]:
    train, val = {}, {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "train":
            train[r["step"]] = (r["loss"], r["lr"])
        elif r.get("kind") == "eval":
            val[r["step"]] = r["val_loss"]
    return train, val


def cli_run(workspace: Path, name: str) -> Path:
    run = workspace / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(tiny_yaml(name, **SECTIONS))
    for stage in ("prepare", "train"):
        subprocess.run([sys.executable, "-m", "llmkit", stage, "-c", f"runs/{name}/config.yaml"], cwd=workspace,
                       check=True, capture_output=True, timeout=600)
    return run


def gauge(studio: Studio, chat_id: str, name: str) -> float:
    text = studio.get(f"/api/chat/{chat_id}/metrics").text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def chat(studio: Studio, chat_id: str, prompt: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=f"{studio.url}/api/chat/{chat_id}/v1", api_key="unused",
                    default_headers={"X-Studio-CSRF": studio.csrf})
    answer = client.chat.completions.create(model=chat_id, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=8, temperature=0)
    return answer.choices[0].message.content or ""


def test_start_stop_resume_in_the_studio_logs_what_the_cli_logs_then_eval_export_and_chat(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reference = cli_run(tmp_path / "cli", "p")
    (tmp_path / "studio").mkdir()
    s = start_studio(tmp_path / "studio", env=SLOW_STEPS)
    try:
        started = s.post("/api/runs", {"yaml": tiny_yaml("p", **SECTIONS)})
        assert started.status_code == 200, started.text
        assert started.json()["cli"] == ["llmkit prepare -c runs/p/config.yaml", "llmkit train -c runs/p/config.yaml"]
        s.wait("p", lambda d: d["status"] == "training" and d["step"] >= 8)
        assert s.post("/api/runs/p/stop").json() == {"stopping": "train"}
        stopped = s.wait("p", lambda d: d["status"] == "stopped")
        assert stopped["checkpoints"] and stopped["step"] < 30, stopped["log"][-5:]
        assert any("stopped by SIGTERM" in line for line in stopped["log"])
        stop_step = stopped["checkpoints"][-1]["step"]
        assert s.post("/api/runs/p/resume").status_code == 200
        done = s.wait("p", lambda d: d["status"] == "done")
        assert done["final"] and done["step"] == 30
        run = s.workspace / "runs" / "p"
        assert by_step(run) == by_step(reference)  # every step's loss and lr, every validation loss

        # the same run reads with the CLI's `llmkit eval`, as the run trained from the CLI does
        evals = [json.loads(subprocess.run([sys.executable, "-m", "llmkit", "eval", "runs/p", "--json"], cwd=where,
                                           capture_output=True, text=True, timeout=600, check=True).stdout)["metrics"]
                 for where in (s.workspace, tmp_path / "cli")]
        assert evals[0] == pytest.approx(evals[1], rel=1e-6) and evals[0]["val_loss"] > 0

        # export to GGUF, downloaded through its signed link
        assert s.post("/api/runs/p/export", {"format": "gguf", "quant": "q8_0"}).status_code == 200
        exported = s.wait("p", lambda d: d["jobs"]["export"] and d["jobs"]["export"]["status"] in ("done", "failed"))
        assert exported["jobs"]["export"]["status"] == "done", exported["jobs"]["export"].get("log_tail")
        link = s.post("/api/runs/p/link", {"what": "export", "file": "p-q8_0.gguf"}).json()["url"]
        body = httpx.get(s.url + link, timeout=60).content
        assert body[:4] == b"GGUF" and body == (run / "studio" / "exports" / "p-q8_0.gguf").read_bytes()

        # chat: the final model and the checkpoint the stop wrote, side by side
        ids = [s.post("/api/chat/open", {"run": "p", "step": step}).json()["id"] for step in (None, stop_step)]
        assert ids == ["p@final", f"p@{stop_step}"]
        answers = [chat(s, i, "The for statement") for i in ids]
        assert all(isinstance(a, str) for a in answers)
        materialised = load_file(str(run / "studio" / "models" / f"step-{stop_step:06d}" / "model.safetensors"))
        saved = load_file(str(run / "checkpoints" / f"step-{stop_step:06d}" / "model.safetensors"))
        for name, tensor in saved.items():
            assert materialised[name].equal(tensor), name
    finally:
        stop_studio(s)


def test_jobs_outlive_the_studio_and_one_that_dies_is_shown_failed_then_resumes(tmp_path: Path) -> None:
    first = start_studio(tmp_path, env={"LLMKIT_FAULT": "step:sleep=1"})  # Resume is refused while a step ends
    first.post("/api/runs", {"yaml": tiny_yaml("q", **SECTIONS)})
    first.wait("q", lambda d: d["status"] == "training" and d["step"] >= 2)
    first.proc.kill()  # the studio dies; its job goes on
    first.proc.wait()
    record = json.loads((tmp_path / "runs" / "q" / "studio" / "jobs" / "train.json").read_text())
    os.kill(record["pid"], 0)
    second = start_studio(tmp_path)
    try:
        before = second.run("q")["step"]
        assert second.wait("q", lambda d: d["step"] > before)["status"] == "training"
        os.kill(record["pid"], signal.SIGKILL)  # the job process dies: its training run is told to stop
        assert second.post("/api/runs/q/resume").status_code == 409  # until that run has ended
        failed = second.wait("q", lambda d: d["status"] == "failed")
        assert "died" in failed["jobs"]["train"]["reason"] and failed["jobs"]["train"]["log_tail"]
        assert failed["checkpoints"]  # SIGTERM from the dying parent: the step ended, a checkpoint was written
        assert second.post("/api/runs/q/resume").status_code == 200
        assert second.wait("q", lambda d: d["status"] in ("done", "failed"))["status"] == "done"
    finally:
        stop_studio(second)


def test_chat_with_checkpoints_of_a_lora_run_and_of_an_encrypted_run(tmp_path: Path) -> None:
    import base64

    import yaml
    from safetensors import safe_open

    from llmkit.privacy import crypto
    from tests.families import make_family

    make_family("qwen2.5", tmp_path / "base")  # a pretrained open model (a small random one)
    rows = [{"prompt": f"What is {i} plus one?", "completion": f"{i} plus one is {i + 1}."} for i in range(40)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lora = {"name": "adapted", "runs_root": "runs", "model": {"from_pretrained": "base", "lora": {"enabled": True, "r": 4}},
            "tokenizer": {"kind": "pretrained"}, "data": {"sft_path": "sft.jsonl", "val_fraction": 0.1},
            "train": {"task": "sft", "sequence_length_tokens": 64, "global_batch_size": 4, "micro_batch_size": 4,
                      "max_steps": 6, "eval_every_steps": 6, "eval_batches": 1, "checkpoint_every_steps": 3,
                      "warmup_steps": 1, "device": "cpu", "precision": "fp32"}}
    key = base64.b64encode(bytes(range(32))).decode()
    s = start_studio(tmp_path, env={"RUN_KEY": key, "LLMKIT_FAULT": "engine:sleep=0.05"})  # 20 tokens/s at most
    try:
        assert s.post("/api/runs", {"yaml": yaml.safe_dump(lora)}).status_code == 200
        sealed = tiny_yaml("sealed", privacy={"encryption_key_env": "RUN_KEY"},
                           train={"max_steps": 10, "checkpoint_every_steps": 5, "eval_every_steps": 10})
        assert s.post("/api/runs", {"yaml": sealed}).status_code == 200
        for name in ("adapted", "sealed"):
            assert s.wait(name, lambda d: d["status"] in ("done", "failed"))["status"] == "done", s.run(name)["log"]
        adapted = s.post("/api/chat/open", {"run": "adapted", "step": 3}).json()["id"]
        assert isinstance(chat(s, adapted, "What is 3 plus one?"), str)
        merged = tmp_path / "runs" / "adapted" / "studio" / "models" / "step-000003"
        with safe_open(str(merged / "model.safetensors"), "pt") as f:
            assert not [k for k in f.keys() if "lora" in k]  # the adapters merged into the base, as final/ is
        encrypted = s.post("/api/chat/open", {"run": "sealed", "step": 5}).json()["id"]
        assert isinstance(chat(s, encrypted, "The for statement"), str)
        written = tmp_path / "runs" / "sealed" / "studio" / "models" / "step-000005"
        for name in ("model.safetensors", "tokenizer.json"):
            assert (written / name).read_bytes().startswith(crypto.MAGIC), name  # sealed on disk, opened in memory

        # Stop in the page closes its stream: the model's server stops generating
        request = {"messages": [{"role": "user", "content": "A class is"}], "max_tokens": 400, "stream": True,
                   "temperature": 1.0}
        with httpx.stream("POST", f"{s.url}/api/chat/{encrypted}/v1/chat/completions", json=request,
                          headers=s.headers(), timeout=60) as stream:
            lines = stream.iter_lines()
            assert [next(lines) for _ in range(3)]
        deadline = time.monotonic() + 10  # the whole answer would take 20 s
        while time.monotonic() < deadline and gauge(s, encrypted, "llmkit_active_requests"):
            time.sleep(0.1)
        assert gauge(s, encrypted, "llmkit_active_requests") == 0 and gauge(s, encrypted, "llmkit_engine_requests") == 0
        assert gauge(s, encrypted, "llmkit_generation_tokens_total") < 400
    finally:
        stop_studio(s)
