"""`llmkit plan`'s entry points: a training plan and a serving plan for a run config, this machine
measured when asked. The CLI (``cli/plan_cmd.py``) and the Python API (``llmkit.plan``,
``llmkit.plan_serving``) both call these, so both answer the same for the same config."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.errors import EnvironmentProblem
from llmkit.planning.hardware import prices_age_days
from llmkit.planning.memory import GB, kv_cache_bytes, reference_kind, rollout_rows
from llmkit.planning.recommend import LocalMachine, Plan, human_hours, human_usd, make_plan, wall_hours
from llmkit.planning.serving import LocalServer, ServePlan, local_fits, serve_plan

# what `llmkit plan` prints a plan with: units and the price list's age
__all__ = ["DEFAULT_TOKENS_PER_USER", "GB", "Plan", "ServePlan", "human_hours", "human_usd", "plan_serving",
           "kv_cache_bytes", "reference_kind", "rollout_rows",
           "plan_training", "prices_age_days", "this_machine", "wall_hours"]

DEFAULT_TOKENS_PER_USER = 20.0  # faster than people read, as chat services stream
Note = Callable[[str], None]


def _quiet(_line: str) -> None:
    """No progress notes."""


def _need_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise EnvironmentProblem("measuring this machine needs torch", "torch is not installed",
                                 "install torch (llmkit doctor prints the command) or plan without this machine")


def _ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def this_machine(cfg: RunConfig, note: Note = _quiet) -> LocalMachine:
    """This CPU, measured (~3 s): its RAM, the precision llmkit would train ``cfg`` in, its rates."""
    from llmkit.config.derived import train_precision
    from llmkit.planning.measure import measure_cpu_rates

    _need_torch()
    precision = train_precision(cfg, "cpu").compute
    ram_gb = _ram_gb()
    note(f"measuring this CPU ({os.cpu_count()} cores, {ram_gb:.0f} GB RAM, {precision}) ...")
    return LocalMachine("this-cpu", ram_gb, precision, measure_cpu_rates(precision))


def plan_training(cfg: RunConfig, devices: list[str] | None = None,
                  measure_this_machine: bool | None = None, prices: Path | None = None,
                  note: Note = _quiet) -> Plan:
    """Memory, time and cost of training ``cfg`` per (device, count), with recommendations, within
    the config's ``plan`` section (devices, cloud, spot, budget, deadline, device count, sharding).
    ``measure_this_machine`` None: this CPU is a candidate where torch is installed, unless
    ``plan.num_devices`` asks for a device count."""
    from llmkit.planning.hardware import use_prices

    from llmkit.planning.pretrained import with_pretrained_shape

    p = cfg.plan
    cfg = with_pretrained_shape(cfg, note)
    if prices is not None:
        use_prices(prices)
    if measure_this_machine is None:
        measure_this_machine = importlib.util.find_spec("torch") is not None and not p.num_devices
    local = this_machine(cfg, note) if measure_this_machine else None
    return make_plan(cfg, devices or p.devices or None, p.cloud, p.spot, p.budget_usd, p.deadline_hours,
                     local=local, sharding=p.sharding,
                     **({"counts": (p.num_devices,)} if p.num_devices else {}))


def plan_serving(cfg: RunConfig, concurrency: int | None = None, tokens_per_s_per_user: float | None = None,
                 context: int | None = None, prompt_tokens: int | None = None, devices: list[str] | None = None,
                 measure_this_machine: bool | None = None, prices: Path | None = None,
                 note: Note = _quiet) -> ServePlan:
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
        from llmkit.planning.measure import measure_cpu_serving

        _need_torch()
        ram_gb, speed = _ram_gb(), None
        if local_fits(cfg, cfg.serve.dtype, ram_gb, c, n):
            note(f"measuring this CPU's decode step ({os.cpu_count()} cores, {cfg.serve.dtype}) ...")
            speed = measure_cpu_serving(cfg, cfg.serve.dtype, sampled=cfg.generate.temperature > 0)
        local = LocalServer("this-cpu", ram_gb, cfg.serve.dtype, speed)
    return serve_plan(cfg, c, t, n, prompt, devices or cfg.plan.devices or None, cfg.plan.cloud, cfg.plan.spot, local)
