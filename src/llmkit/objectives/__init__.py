"""Training objectives: what the loop and the evaluator need to know about one way of learning.

An objective is one module of this package with an ``OBJECTIVE`` (a :class:`base.Objective`):
its batch provider, its loss, its evaluation metrics, the model head it trains and saves, and the
settings it refuses. The loop (``llmkit.training.loop``) and ``llmkit eval`` hold no branch on
the kind of objective: they ask it. To add one, write ``objectives/<name>.py`` and add a line to
``REGISTRY`` (and the ``train.task`` values it serves to ``TASKS``).
"""

from __future__ import annotations

import importlib

from llmkit.errors import ConfigError
from llmkit.objectives.base import EvalResult, Objective

__all__ = ["REGISTRY", "TASKS", "EvalResult", "Objective", "get", "for_task"]

REGISTRY: dict[str, str] = {  # objective name -> its module (imported when first used)
    "lm": "llmkit.objectives.lm",
    "classify": "llmkit.objectives.classify",
    "preference": "llmkit.objectives.preference",
    "rl": "llmkit.objectives.rl",
}
TASKS: dict[str, str] = {"pretrain": "lm", "sft": "lm", "classify": "classify", "preference": "preference",
                        "rl": "rl"}  # train.task -> objective


def get(name: str) -> Objective:
    """The registered objective ``name``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown training objective {name!r}", f"registered: {', '.join(sorted(REGISTRY))}",
                          "use one of those, or register a new one in llmkit.objectives.REGISTRY")
    objective: Objective = importlib.import_module(REGISTRY[name]).OBJECTIVE
    return objective


def for_task(task: str) -> Objective:
    """The objective that trains ``train.task`` (pretrain and sft: ``lm``; classify: ``classify``)."""
    if task not in TASKS:
        raise ConfigError(f"train.task {task!r} has no training objective", f"tasks: {', '.join(sorted(TASKS))}",
                          "use one of those")
    return get(TASKS[task])
