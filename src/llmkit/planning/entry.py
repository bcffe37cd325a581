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
from llmkit.planning.serving import ServePlan

# what `llmkit plan` prints a plan with: units and the price list's age
__all__ = ["DEFAULT_TOKENS_PER_USER", "GB", "Plan", "ServePlan", "human_hours", "human_usd",
           "kv_cache_bytes", "reference_kind", "rollout_rows",
           "plan_training", "prices_age_days", "this_machine", "wall_hours"]

DEFAULT_TOKENS_PER_USER = 20.0  # faster than people read, as chat services stream
Note = Callable[[str], None]


def quiet(_line: str) -> None:
    """No progress notes."""


def need_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise EnvironmentProblem("measuring this machine needs torch", "torch is not installed",
                                 "install torch (llmkit doctor prints the command) or plan without this machine")


def ram_gb_of_this_machine() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def this_machine(cfg: RunConfig, note: Note = quiet) -> LocalMachine:
    """This CPU, measured (~3 s): its RAM, the precision llmkit would train ``cfg`` in, its rates."""
    from llmkit.config.derived import train_precision
    from llmkit.planning.measure import measure_cpu_rates

    need_torch()
    precision = train_precision(cfg, "cpu").compute
    ram_gb = ram_gb_of_this_machine()
    note(f"measuring this CPU ({os.cpu_count()} cores, {ram_gb:.0f} GB RAM, {precision}) ...")
    return LocalMachine("this-cpu", ram_gb, precision, measure_cpu_rates(precision))


def plan_training(cfg: RunConfig, devices: list[str] | None = None,
                  measure_this_machine: bool | None = None, prices: Path | None = None,
                  note: Note = quiet) -> Plan:
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
