"""`generate`, `chat` and `serve` take their sampling defaults from the run's `generate` section."""

from __future__ import annotations

import pytest

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import start_server, stop_server

pytestmark = pytest.mark.slow  # training runs and generation


def _greedy_run(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the trained run whose config asks for greedy decoding of 3 tokens."""
    run = tmp_path / "run"
    shutil.copytree(model_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["generate"].update({"temperature": 0.0, "max_new_tokens": 3})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _generate(run: Path, *flags: str) -> str:
    out = subprocess.run([sys.executable, "-m", "llmkit", "generate", str(run), "--prompt", "The", *flags],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_generate_uses_the_run_section_and_flags_override_it(model_dir: Path, tmp_path: Path) -> None:
    run = _greedy_run(model_dir, tmp_path)
    short = _generate(run)
    assert _generate(run) == short  # temperature 0 from the run: greedy, the same every time
    longer = _generate(run, "--max-tokens", "12")  # the flag overrides max_new_tokens, the run's greedy stays
    assert longer.rstrip("\n").startswith(short.rstrip("\n")) and len(longer) > len(short)


def test_serve_without_config_uses_the_run_section(model_dir: Path, tmp_path: Path) -> None:
    server = start_server(_greedy_run(model_dir, tmp_path))
    try:
        with server.client() as c:
            body = {"model": "run", "prompt": "The"}
            first = c.post("/v1/completions", json=body).json()
            assert first["usage"]["completion_tokens"] <= 3, first
            assert c.post("/v1/completions", json=body).json()["choices"] == first["choices"]
    finally:
        stop_server(server)
