"""The objectives seam: the loop and the evaluator use whatever objective the registry names for
the task, with no branch of their own; a classifier head on a loaded base starts the same in
every run."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from llmkit import objectives
from llmkit.config.load import load_config
from llmkit.errors import ConfigError
from llmkit.objectives.lm import LanguageModeling
from llmkit.training.loop import train

from .helpers import losses, make_run


class Doubled(LanguageModeling):
    """The language-modelling loss times two, and it counts its calls: a stand-in new objective."""

    name = "doubled"
    calls = 0

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        Doubled.calls += 1
        value, count, out = super().loss(model, batch, chunked)
        return value * 2, count, out


def register_doubled(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("llmkit_test_doubled")
    module.OBJECTIVE = Doubled()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "llmkit_test_doubled", module)
    monkeypatch.setitem(objectives.REGISTRY, "doubled", "llmkit_test_doubled")
    monkeypatch.setitem(objectives.TASKS, "pretrain", "doubled")


def test_a_registered_objective_is_what_the_loop_trains_and_evaluates(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    plain_cfg = make_run(tmp_path, name="plain", train={"max_steps": 2, "eval_every_steps": 2})
    plain = losses(train(load_config(plain_cfg, environ={}), log=lambda _: None).run_dir)
    register_doubled(monkeypatch)
    assert objectives.for_task("pretrain").name == "doubled"
    Doubled.calls = 0
    cfg = make_run(tmp_path, name="doubled", train={"max_steps": 2, "eval_every_steps": 2})
    result = train(load_config(cfg, environ={}), log=lambda _: None)
    assert Doubled.calls > 0
    # the same model and batches at step 1: the loss is exactly twice the plain one's
    assert losses(result.run_dir)[1] == pytest.approx(2 * plain[1], rel=1e-6)
    assert result.eval is not None and result.eval.val_loss > 2 * 5.0  # the evaluator scored with it too


def test_unknown_objectives_and_tasks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown training objective 'nope'"):
        objectives.get("nope")
    with pytest.raises(ConfigError, match="has no training objective"):
        objectives.for_task("nope")


def test_a_classifier_head_on_a_loaded_base_starts_the_same_in_every_run(tmp_path: Path) -> None:
    import json

    from llmkit.training.build import build_for_training

    base = train(load_config(make_run(tmp_path, name="base", train={"max_steps": 2, "eval_every_steps": 2}),
                             environ={}), log=lambda _: None).run_dir / "final"
    f = tmp_path / "cls.jsonl"
    f.write_text("".join(json.dumps({"text": f"word {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    cfg = load_config(make_run(tmp_path, name="cls", train={"task": "classify"},
                               model={"from_pretrained": str(base)},
                               tokenizer={"kind": "pretrained", "path": str(base)},
                               data={"classify_path": str(f), "val_fraction": 0.1}), environ={})
    data = objectives.for_task("classify").batches(cfg, tmp_path / "runs" / "cls", 2)
    heads = []
    for _ in range(2):
        torch.manual_seed(len(heads) + 123)  # whatever the global RNG held before
        model = build_for_training(cfg, data, torch.device("cpu"), lambda _: None)
        heads.append(model.score.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
