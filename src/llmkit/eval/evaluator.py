"""The evaluator: one pass of a model over fixed validation batches, scored by the run's
objective (``llmkit.objectives``). Used by training (every ``eval_every_steps``) and by
`llmkit eval`."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.device import autocast
from llmkit.objectives.base import EvalResult, Metrics, Objective


def evaluate(model: Any, batches: list[dict[str, np.ndarray]], objective: Objective, metrics: Metrics,
             precision: str = "fp32", chunked: bool = True) -> EvalResult:
    """Run ``model`` over ``batches`` once (no gradients, eval mode, restored afterwards), adding
    each batch's loss to ``metrics`` (``objective.metrics(...)``). ``chunked``: the loss over the
    head in chunks where the objective supports it; callers pass False for FSDP-wrapped models."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        for np_batch in batches:
            batch = {k: torch.from_numpy(v).to(device) for k, v in np_batch.items()}
            loss, n, out = objective.loss(model, batch, chunked)
            metrics.add(np_batch, float(loss), n, out)
    model.train(was_training)
    return metrics.result()
