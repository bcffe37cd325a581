"""train.compile: compiled and eager runs agree, a failed compile falls back to eager with one
warning, and auto stays eager when the run is too short to repay a compile."""

from __future__ import annotations

import pytest

from llmkit.config.load import load_config
from llmkit.training.compiled import expected_compile_s, keep, worth_trying
from llmkit.training.loop import train

from .helpers import llmkit, losses, make_run

pytestmark = pytest.mark.slow  # torch.compile

TOLERANCE = 2e-3  # relative, per step: inductor reorders float sums; 10 steps of a tiny model stay well inside


def test_compiled_and_eager_losses_agree(tmp_path) -> None:  # type: ignore[no-untyped-def]
    runs = {}
    for mode in (False, True):
        cfg = make_run(tmp_path, name=f"c{int(mode)}", train={"max_steps": 10, "eval_every_steps": 10, "compile": mode})
        logged: list[str] = []
        result = train(load_config(cfg, environ={}), log=logged.append)
        assert result.reason == "completed"
        if mode:
            assert any(line.startswith("compile: model compiled in") for line in logged), logged
        runs[mode] = losses(result.run_dir)
    assert runs[False].keys() == runs[True].keys() and len(runs[True]) == 10
    for step, eager in runs[False].items():
        assert runs[True][step] == pytest.approx(eager, rel=TOLERANCE), step


def test_a_failed_compile_falls_back_to_eager(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_run(tmp_path, name="f", train={"max_steps": 3, "eval_every_steps": 3, "compile": True})
    out = llmkit("train", "--config", str(cfg), env={"LLMKIT_FAULT": "compile:raise@1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("warning: torch.compile failed") == 1 and "training eager" in out.stdout
    assert "done at step 3" in out.stdout


def test_auto_stays_eager_on_a_short_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = make_run(tmp_path, name="a", train={"max_steps": 5, "eval_every_steps": 5, "compile": "auto"})
    logged: list[str] = []
    train(load_config(cfg, environ={}), log=logged.append)
    assert any(line.startswith("compile: auto -> eager (5 steps of") and "could not repay" in line for line in logged)


def test_auto_decisions() -> None:
    assert expected_compile_s(0.1) == 30.0 and expected_compile_s(10.0) == 150.0
    assert not worth_trying(1.0, 100).compiled  # 100 s of steps vs a ~30 s compile (needs 4x)
    assert worth_trying(1.0, 1000).compiled and worth_trying(1.0, None).compiled
    assert keep(1.0, 0.9).compiled and not keep(1.0, 0.99).compiled and not keep(1.0, 1.2).compiled
