"""The Python API: the whole chain (prepare, train, evaluate, export, serve, plan) from a script,
on the embedded corpus, with typed results, and nothing printed unless asked."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

import llmkit
from llmkit.errors import ConfigError

from .training.helpers import TINY, deep_update


def test_the_chain_through_the_api_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmkit")
    data = deep_update(TINY, {"name": "api", "runs_root": str(tmp_path / "runs"),
                              "train": {"max_steps": 8, "eval_every_steps": 4, "log_every_steps": 2}})
    cfg = llmkit.load_config(data, ["train.learning_rate=0.004"])
    assert isinstance(cfg, llmkit.api.RunConfig) and cfg.train.learning_rate == 0.004

    prepared = llmkit.prepare(cfg)
    assert prepared.tokenizer_trained and prepared.outputs["pretrain"]["train_tokens"] > 0

    lines: list[str] = []
    trained = llmkit.train(cfg, log=lines.append)  # a log callback gets the progress lines
    assert trained.reason == "completed" and trained.step == 8 and trained.exit_code == 0
    assert any(line.startswith("step ") for line in lines)
    assert trained.eval is not None and trained.eval.val_loss > 0

    report = llmkit.evaluate(trained.run_dir)
    assert report.metrics["val_ppl"] == pytest.approx(__import__("math").exp(report.metrics["val_loss"]), rel=1e-4)
    assert report.samples and isinstance(report.samples[0]["completion"], str)
    assert (trained.run_dir / "eval.json").exists()

    exported = llmkit.export(trained.run_dir, tmp_path / "hf")
    assert exported.verified is True and "model.safetensors" in exported.files
    gguf = llmkit.export(trained.run_dir, tmp_path / "m.gguf", format="gguf")
    assert gguf.path.stat().st_size > 0

    with llmkit.serve(trained.run_dir, settings={"max_batch_size": 4, "pack_weights": False}) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.model == "api"
        reply = httpx.post(server.url + "/v1/completions", timeout=60,
                           json={"model": server.model, "prompt": "The", "max_tokens": 5, "temperature": 0})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
    with pytest.raises(httpx.HTTPError):  # stopped: nothing listens
        httpx.get(server.url + "/health", timeout=2)

    planned = llmkit.plan(cfg, devices=["L4-24GB"])
    assert planned.recommendations and planned.candidates[0].device == "L4-24GB"
    serving = llmkit.plan_serving(cfg, concurrency=2, context=32, prompt_tokens=8, devices=["L4-24GB"])
    assert serving.recommendations[0]["tokens_per_s_per_user"] >= 20

    out = capfd.readouterr().out
    assert out == "", out  # a library call prints nothing
    assert any(r.name.startswith("llmkit") for r in caplog.records)  # without a callback, the logger has it


def test_api_names_are_plain_functions_and_errors_are_llmkit_errors(tmp_path: Path) -> None:
    import inspect
    import pickle

    import llmkit.training.loop as loop  # a stage package imports without touching the API name

    assert loop.__name__ == "llmkit.training.loop" and inspect.isfunction(llmkit.train)
    for name in llmkit.API:
        function = getattr(llmkit, name)
        assert inspect.isfunction(function) and function is getattr(llmkit.api, name), name
        assert function.__doc__ and function.__module__ == "llmkit.api", name
        assert pickle.loads(pickle.dumps(function)) is function, name  # a spawn target works
    assert list(inspect.signature(llmkit.train).parameters)[:3] == ["config", "run_dir", "resume"]
    from llmkit import load_config, plan, serve

    assert callable(plan) and callable(serve) and load_config is llmkit.api.load_config
    with pytest.raises(ConfigError) as err:
        llmkit.load_config({"name": "x", "train": {"learning_rate": -1}})
    assert "learning_rate" in str(err.value)
