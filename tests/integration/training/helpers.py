"""Tiny runs for the training tests: 2 layers, hidden 32, vocab 512, fp32, CPU, fixed seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from llmkit.config.load import load_config
from llmkit.data.prepare import prepare

TINY: dict[str, Any] = {
    "name": "t",
    "model": {"architecture": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "max_position_embeddings": 32},
    "tokenizer": {"vocab_size": 512},
    "train": {"sequence_length_tokens": 32, "global_batch_size": 4, "micro_batch_size": 2, "max_steps": 40,
              "learning_rate": 0.003, "min_learning_rate": 0.0003, "warmup_steps": 5, "precision": "fp32",
              "eval_every_steps": 10, "eval_batches": 2, "log_every_steps": 1, "checkpoint_every_steps": 5,
              "keep_last": 2, "device": "cpu"},
}


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def make_run(root: Path, name: str = "t", prepared: bool = True, **sections: Any) -> Path:
    """Write runs config `<root>/<name>.yaml` (runs_root = root/runs) and prepare its data."""
    data = deep_update(TINY, {"name": name, "runs_root": str(root / "runs"), **sections})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    if prepared:
        prepare(load_config(path, environ={}))
    return path


def losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            out[rec["step"]] = rec["loss"]
    return out


def tensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def llmkit(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def records(run: Path, kind: str) -> list[dict[str, Any]]:
    """The run's metrics.jsonl records of one kind (train, eval, ...)."""
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def train_logged(cfg: Path, **kw: Any) -> tuple[Any, list[str]]:
    """Train the config in this process: (the result, the lines it logged)."""
    from llmkit.training.loop import train

    lines: list[str] = []
    result = train(load_config(cfg, environ={}), log=lines.append, **kw)
    return result, lines


def sft_tiny_from_scratch(tmp_path: Path, runs: str) -> str:
    """The learning tests' starting model: the `tiny` preset SFT'd from scratch on the embedded
    question/answer pairs through the CLI (300 steps, fp32: the same numbers on every CPU); its final/."""
    from llmkit.quickstart import qa_pairs

    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps(p) + "\n" for p in qa_pairs()))
    assert llmkit("init", "--preset", "tiny", str(tmp_path / "sft.yaml")).returncode == 0
    sft = ["--config", str(tmp_path / "sft.yaml"), "--set", f"runs_root={runs}", "--set", "name=sft",
           "--set", "train.task=sft", "--set", f"data.sft_path={qa}", "--set", "train.max_steps=300",
           "--set", "train.learning_rate=0.003", "--set", "train.min_learning_rate=0.0003",
           "--set", "train.warmup_steps=10", "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=8",
           "--set", "train.eval_every_steps=300", "--set", "train.checkpoint_every_steps=300",
           "--set", "train.precision=fp32"]
    for stage in ("prepare", "train"):
        out = llmkit(stage, *sft, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    return f"{runs}/sft/final"
