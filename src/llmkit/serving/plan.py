"""`llmkit plan --serve`'s entry point: the serving plan for a run config, this machine timed
through llmkit's own server when asked (``serving.speed``). The CLI (``cli/plan_cmd.py``) and the
Python API (``llmkit.plan_serving``) both call it, so both answer the same for the same config. It
lives with the server rather than in ``planning`` (which sizes and prices, below the server's layer)
because it runs the server."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.planning.entry import DEFAULT_TOKENS_PER_USER, Note, quiet, need_torch, ram_gb_of_this_machine
from llmkit.planning.serving import LocalServer, ServePlan, local_fits, serve_plan


def plan_serving(cfg: RunConfig, concurrency: int | None = None, tokens_per_s_per_user: float | None = None,
                 context: int | None = None, prompt_tokens: int | None = None, devices: list[str] | None = None,
                 measure_this_machine: bool | None = None, prices: Path | None = None,
                 note: Note = quiet) -> ServePlan:
    """What serving ``concurrency`` users (default ``serve.max_batch_size``) at
    ``tokens_per_s_per_user`` (default 20) needs and costs, for sequences of ``context`` tokens
    (default the model's positions) of which ``prompt_tokens`` (default half) are the prompt."""
    from llmkit.planning.hardware import use_prices

    from llmkit.planning.pretrained import with_pretrained_shape

    cfg = with_pretrained_shape(cfg, note)
    if prices is not None:
        use_prices(prices)
    c = concurrency or cfg.serve.max_batch_size
    t = DEFAULT_TOKENS_PER_USER if tokens_per_s_per_user is None else tokens_per_s_per_user
    n = context or cfg.model.max_position_embeddings
    prompt = prompt_tokens or max(1, n // 2)
    local = None
    if measure_this_machine if measure_this_machine is not None else importlib.util.find_spec("torch") is not None:
        from llmkit.serving.speed import measure_cpu_serving

        need_torch()
        ram_gb, speed = ram_gb_of_this_machine(), None
        if local_fits(cfg, cfg.serve.dtype, ram_gb, c, n):
            note(f"measuring this CPU: the model's replica through llmkit's server ({os.cpu_count()} cores, "
                 f"{cfg.serve.dtype}) ...")
            speed = measure_cpu_serving(cfg, cfg.serve.dtype, sampled=cfg.generate.temperature > 0)
        local = LocalServer("this-cpu", ram_gb, cfg.serve.dtype, speed)
    return serve_plan(cfg, c, t, n, prompt, devices or cfg.plan.devices or None, cfg.plan.cloud, cfg.plan.spot, local)
