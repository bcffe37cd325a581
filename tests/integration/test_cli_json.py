"""--json through the real CLI: each stage's result is one JSON document on stdout (progress on
stderr), and errors are JSON too, with the exit codes of the plain CLI."""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import yaml

from .training.helpers import TINY, deep_update

pytestmark = pytest.mark.slow  # the whole chain through the CLI


def test_the_chain_with_json_prints_parsable_results(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = deep_update(TINY, {"runs_root": str(tmp_path / "runs"), "train": {"max_steps": 6, "eval_every_steps": 6}})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))

    out = cli("prepare", "--config", "run.yaml", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    prepared = json.loads(out.stdout)
    assert prepared["tokenizer"]["trained"] and prepared["tokenizer"]["vocab_size"] == 512
    assert prepared["outputs"]["pretrain"]["train_tokens"] > 0 and "tokenizer:" in out.stderr

    out = cli("train", "--config", "run.yaml", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    trained = json.loads(out.stdout)
    assert trained["reason"] == "completed" and trained["step"] == 6 and trained["exit_code"] == 0
    assert trained["eval"]["val_loss"] > 0 and Path(trained["final"]).is_dir()
    assert "step" in out.stderr  # the progress lines went to stderr

    run = Path(trained["run_dir"])
    out = cli("export", str(run), "--out", str(tmp_path / "hf"), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert exported["format"] == "hf" and "model.safetensors" in exported["files"] and exported["verify"]["ok"] is True
    assert all(c["greedy_equal"] for c in exported["verify"]["checks"])

    out = cli("verify", str(run), "--exported", str(tmp_path / "hf"), "--json", cwd=tmp_path)
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True

    out = cli("export", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf"), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bytes"] == (tmp_path / "m.gguf").stat().st_size

    out = cli("eval", str(run), "--json", cwd=tmp_path)
    assert out.returncode == 0 and "val_loss" in json.loads(out.stdout)["metrics"]


def test_errors_are_json_with_the_same_exit_codes(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args, code in ((["train", "--config", "missing.yaml"], 2), (["prepare", "--config", "missing.yaml"], 2),
                       (["plan", "--config", "missing.yaml", "--bogus"], 2), (["export", "nowhere", "--out", "x"], 2)):
        plain = cli(*args, cwd=tmp_path)
        as_json = cli(*args, "--json", cwd=tmp_path)
        assert plain.returncode == as_json.returncode == code, (args, plain.stderr, as_json.stdout)
        err = json.loads(as_json.stdout)["error"]
        assert err["summary"] and err["exit_code"] == code and set(err) == {"summary", "detail", "fix", "exit_code"}
        assert "Traceback" not in as_json.stderr
