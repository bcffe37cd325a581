"""Will it fit, how long, what will it cost: candidates per device and device count (pure).

GPU time = total training FLOPs / (devices x peak x MFU x scaling). MFU assumptions (model FLOPs
utilisation actually reached, by device class) are documented below with their sources, and the
scaling efficiency depends on the interconnect. This machine's CPU (``--this-machine``) is timed
by the component model of ``llmkit.planning.compute`` from measured primitives instead;
`benchmarks/plan_accuracy.py` measures how right that model and the memory model are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.planning.compute import PROBE_SIZE, Rates, config_flops_per_token, steadiness, step_seconds
from llmkit.planning.hardware import Device, cloud_terms, devices, find_device, offerings, price_table, startup
from llmkit.planning.memory import GB, MemoryBreakdown, fitting_micro_batch, kv_cache_bytes, shards, training_memory
from llmkit.config.derived import vocab_size
from llmkit.planning.params import count_parameters, trainable_parameters

# MFU reached by well-tuned bf16 training, by device class. Sources: Llama 3 paper (38-43% on H100),
# Megatron-LM / MosaicML reports (45-55% on A100); consumer and PCIe cards are set lower because
# they lack NVLink and have smaller caches. fp32 on GPUs uses the fp32 (non-tensor-core) peak.
MFU = {"H100": 0.40, "H200": 0.42, "B200": 0.38, "MI300X": 0.35, "A100": 0.45, "L40S": 0.35, "A10G": 0.35,
       "L4": 0.30, "RTX4090": 0.35, "RTX3090": 0.35, "V100": 0.35, "T4": 0.25}
# Data-parallel scaling efficiency within one node over NVLink / Infinity Fabric (gradient all-reduce
# overlapped with the backward pass); beyond 8 devices the run spans nodes.
SCALING = {1: 1.0, 2: 0.95, 4: 0.92, 8: 0.90, 16: 0.85, 32: 0.82, 64: 0.80}
PCIE_PENALTY = 0.93  # per doubling of devices when the all-reduce crosses PCIe instead of NVLink
NO_P2P_PENALTY = 0.88  # per doubling when PCIe peer-to-peer is disabled (consumer cards): via host memory
HEADROOM = 0.90  # usable share of device memory (allocator fragmentation, CUDA context)
CUDA_CONTEXT_BYTES = int(0.8e9)


@dataclass
class Candidate:
    device: str
    num_devices: int
    sharded: bool
    precision: str
    micro_batch: int | None  # largest that fits (None: none fits)
    memory: dict[str, int]
    fits: bool
    hours: float | None  # training time
    cost_usd: float | None  # cloud rows: start-up included, rounded up to the cloud's billing
    offering: str | None
    startup_hours: float = 0.0  # cloud rows: boot, image pull, setup, data staging before step 1
    preemption_hours: float = 0.0  # spot rows: expected rework (lost steps since a checkpoint + restarts)


@dataclass
class Plan:
    parameters: int
    trainable_parameters: int
    tokens: int
    flops: float
    memory_at_config_micro_batch: dict[str, int]
    config_micro_batch: int = 1
    candidates: list[Candidate] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    serving: dict[str, int] = field(default_factory=dict)
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    """The two or three options worth taking, each a candidate with ``why`` (see ``recommend``)."""
    machine_probes: list[float] = field(default_factory=list)
    """This CPU's FLOP/s on one fixed product, taken between its measurements (empty: not measured)."""
    machine_note: str | None = None
    """Set when those probes varied by over a tenth: how much, so the times are read with that in mind."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def total_tokens(cfg: RunConfig) -> int:
    t = cfg.train
    per_step = t.global_batch_size * t.sequence_length_tokens
    if t.max_tokens is not None:
        return t.max_tokens
    return per_step * (t.max_steps or 0)


def training_flops(cfg: RunConfig) -> float:
    """FLOPs of the whole run: ``config_flops_per_token`` x the tokens it trains on."""
    from llmkit.planning.compute import preference_factor

    return config_flops_per_token(cfg) * total_tokens(cfg) * preference_factor(cfg)


def scaling_efficiency(device: Device, n: int) -> float:
    """Share of n x one device's speed that n data-parallel devices reach, by interconnect."""
    base = SCALING.get(n, 0.8)
    if n == 1 or not device.interconnect.startswith("PCIe"):
        return base
    doublings = math.log2(min(n, 8))
    return base * (NO_P2P_PENALTY if "noP2P" in device.interconnect else PCIE_PENALTY) ** doublings


def largest_micro_batch(cfg: RunConfig, device: Device, n: int, sharded: bool, precision: str,
                        device_kind: str = "gpu") -> tuple[int | None, MemoryBreakdown]:
    """The largest divisor of the per-device batch that fits one of ``device``, and its memory."""
    overhead = CUDA_CONTEXT_BYTES if device_kind == "gpu" else 0
    return fitting_micro_batch(cfg, device.memory_gb * GB * HEADROOM, precision, n, sharded, overhead, device_kind)


def feasible_counts(cfg: RunConfig, counts: tuple[int, ...]) -> tuple[int, ...]:
    """The device counts `llmkit train` can run this config on: each data-parallel rank needs a
    whole share of the global batch (micro-batch x ranks must divide it, as train checks), so 64
    devices cannot train a global batch of 16. An explicitly asked count that cannot is refused."""
    from llmkit.errors import ConfigError

    batch = cfg.train.global_batch_size
    ok = tuple(n for n in counts if n <= batch and batch % n == 0)
    if len(counts) == 1 and not ok:
        divisors = [d for d in (1, 2, 4, 8, 16, 32, 64) if batch % d == 0]
        raise ConfigError(f"{counts[0]} devices cannot train a global batch of {batch} sequences",
                          "each data-parallel rank needs a whole share of the global batch (llmkit train refuses "
                          "a micro-batch x ranks that does not divide it)",
                          f"plan on {', '.join(map(str, divisors))} devices, or raise train.global_batch_size to a "
                          f"multiple of {counts[0]} (and re-tune the learning rate for the larger batch)")
    return ok


def startup_seconds(cfg: RunConfig, cloud: str) -> float:
    """Seconds a cloud run spends before its first step: boot, image pull, setup, data staging."""
    s = startup()
    token_bytes = 2 if vocab_size(cfg) <= 65536 else 4
    return cloud_terms(cloud).boot_s + s.image_pull_s + s.setup_s + total_tokens(cfg) * token_bytes / s.staging_bytes_per_s


def preemption_seconds(cfg: RunConfig, train_s: float, startup_s: float, instances: int) -> float:
    """Expected extra seconds of a spot run: each reclaim loses on average half a checkpoint
    interval of steps and pays a restart (the start-up again); reclaims arrive at
    ``instances`` x the per-instance rate over the whole (growing) wall time."""
    rate_s = instances * price_table()["spot"]["interruptions_per_instance_hour"] / 3600
    steps = max(1, math.ceil(total_tokens(cfg) / (cfg.train.global_batch_size * cfg.train.sequence_length_tokens)))
    interval_s = min(cfg.train.checkpoint_every_steps, steps) * train_s / steps
    per_reclaim = interval_s / 2 + startup_s
    if rate_s * per_reclaim >= 1:  # reclaims come faster than a restart can make progress
        return math.inf
    return rate_s * (train_s + startup_s) * per_reclaim / (1 - rate_s * per_reclaim)


def billed_cost(rate_usd_h: float, seconds: float, cloud: str) -> float:
    """What ``seconds`` of an instance at ``rate_usd_h`` is billed: the minimum, then whole increments."""
    t = cloud_terms(cloud)
    billed = max(seconds, t.minimum_s)
    billed = math.ceil(billed / t.billing_increment_s) * t.billing_increment_s
    return rate_usd_h * billed / 3600


def _price(device: str, n: int, cloud: str, spot: bool) -> tuple[float, str, str, int] | None:
    """The cheapest hourly rate for n devices (whole instances), its description, cloud and instances."""
    best = None
    for o in offerings():
        if o.device != device or (cloud != "any" and o.cloud != cloud):
            continue
        rate = o.spot_usd_h if spot else o.on_demand_usd_h
        if rate is None:
            continue
        instances = math.ceil(n / o.count)
        price = instances * rate
        if best is None or price < best[0]:
            best = (price, f"{o.cloud} {instances}x {o.instance}{' (spot)' if spot else ''}", o.cloud, instances)
    return best


def make_plan(cfg: RunConfig, device_names: list[str] | None = None, cloud: str = "any", spot: bool = False,
              budget_usd: float | None = None, deadline_hours: float | None = None,
              counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64),
              local: LocalMachine | None = None, sharding: bool = True) -> Plan:
    """Every (device, count) candidate, cheapest first among those that fit and meet the limits.

    ``local``: this machine's CPU, measured (``llmkit.planning.measure``), as one more candidate whose
    time comes from the component step-time model instead of an MFU assumption.
    """
    m = cfg.model
    counts = feasible_counts(cfg, counts)
    pc = count_parameters(m, vocab_size(cfg))
    chosen = [find_device(n) for n in device_names] if device_names else list(devices().values())
    flops = training_flops(cfg)
    plan = Plan(pc.total, trainable_parameters(cfg), total_tokens(cfg), flops, {})
    for dev in chosen:
        precision = dev.best_precision()
        peak = dev.peak_flops(precision) or 0.0
        mfu = MFU.get(dev.name.split("-")[0], 0.3)
        for n in counts:
            budget = dev.memory_gb * GB * HEADROOM - CUDA_CONTEXT_BYTES
            sharded = sharding and shards(cfg, n, budget, precision)  # what `llmkit train` would run
            micro, mem = largest_micro_batch(cfg, dev, n, sharded, precision)
            hours = flops / (n * peak * mfu * scaling_efficiency(dev, n)) / 3600 if peak else None
            price = _price(dev.name, n, cloud, spot)
            boot = startup_seconds(cfg, price[2]) if price else 0.0
            rework = preemption_seconds(cfg, hours * 3600, boot, price[3]) if spot and price and hours else 0.0
            cost = (billed_cost(price[0], hours * 3600 + boot + rework, price[2])
                    if hours is not None and price and math.isfinite(rework) else None)
            plan.candidates.append(Candidate(dev.name, n, sharded, precision, micro, mem.parts(), micro is not None,
                                             hours, cost, price[1] if price else None, boot / 3600, rework / 3600))
    plan.serving = serving_memory(cfg)
    if local is not None:
        plan.candidates.append(local_candidate(cfg, local))
        plan.machine_probes = list(local.rates.probes)
        plan.machine_note = steadiness(local.rates.probes, f"{local.precision} {PROBE_SIZE}x{PROBE_SIZE} products")

    def ok(c: Candidate) -> bool:
        return (c.fits and (budget_usd is None or (c.cost_usd is not None and c.cost_usd <= budget_usd))
                and (deadline_hours is None or (c.hours is not None and wall_hours(c) <= deadline_hours)))
    # near-ties in cost (the same two significant figures) go to the shorter wall time, then fewer devices
    plan.candidates.sort(key=lambda c: (not ok(c), _sig2(c.cost_usd), wall_hours(c), c.num_devices))
    plan.recommendations = recommend([c for c in plan.candidates if ok(c)], deadline_hours)
    # the config's micro-batch; `auto` resolves as train resolves it, on the first-ranked candidate
    mb = cfg.train.micro_batch_size
    if mb == "auto":
        top = plan.candidates[0] if plan.candidates else None
        mb = top.micro_batch if top is not None and top.micro_batch is not None else 1
    plan.config_micro_batch = mb
    plan.memory_at_config_micro_batch = training_memory(cfg, mb, "bf16").parts()
    if not any(c.fits for c in plan.candidates):
        plan.suggestions = suggestions(cfg, chosen, sharding)
    return plan


LOCAL_WITHOUT_DEADLINE_HOURS = 24.0
"""Without a deadline, this machine is recommended when it finishes within a day: its $0 would
otherwise win against any cloud for runs that take it months."""


def wall_hours(c: Candidate) -> float:
    """Start-up, training and expected spot rework (inf when unknown)."""
    return c.hours + c.startup_hours + c.preemption_hours if c.hours is not None else math.inf


def _sig2(x: float | None) -> float:
    return math.inf if x is None else float(f"{x:.2g}")


def recommend(ok: list[Candidate], deadline_hours: float | None) -> list[dict[str, Any]]:
    """Among the candidates that fit and meet the limits: the cheapest, the fastest when it is
    another, and this machine when it is a real option; each with why."""
    local_ok = [c for c in ok if c.offering == "this machine"
                and (deadline_hours is not None or wall_hours(c) <= LOCAL_WITHOUT_DEADLINE_HOURS)]
    pool = [c for c in ok if c.offering != "this machine" and c.cost_usd is not None] + local_ok
    if not pool:
        return []
    cheapest = min(pool, key=lambda c: (_sig2(c.cost_usd), wall_hours(c), c.num_devices))
    fastest = min(pool, key=lambda c: (_sig2(wall_hours(c)), c.num_devices, c.cost_usd or 0.0))
    out = [{**asdict(cheapest), "why": "cheapest" + (" (this machine: no rental, no start-up)"
                                                     if cheapest.offering == "this machine" else "")}]
    if fastest is not cheapest and wall_hours(fastest) < 0.8 * wall_hours(cheapest):
        extra = (fastest.cost_usd or 0.0) - (cheapest.cost_usd or 0.0)
        out.append({**asdict(fastest), "why": f"fastest: {wall_hours(cheapest) / wall_hours(fastest):.1f}x sooner "
                                              f"for {human_usd(extra)} more"})
    rest = [c for c in pool if c is not cheapest and c is not fastest and c.offering != "this machine"]
    if cheapest.offering == "this machine" and rest:
        cloud = min(rest, key=lambda c: (_sig2(c.cost_usd), wall_hours(c), c.num_devices))
        out.append({**asdict(cloud), "why": "cheapest in a cloud"})
    return out


def human_hours(hours: float | None) -> str:
    """Minutes below an hour, hours below three days, then days."""
    if hours is None or math.isinf(hours):
        return "-"
    if hours < 1:
        return f"{max(1, round(hours * 60))} min"
    if hours < 72:
        return f"{hours:.1f} h"
    return f"{hours / 24:,.0f} days"


def human_usd(usd: float | None) -> str:
    if usd is None:
        return "-"
    return f"${usd:,.2f}" if usd < 100 else f"${usd:,.0f}"


def serving_memory(cfg: RunConfig) -> dict[str, int]:
    """bf16 weights and the KV cache per token, per full-context sequence and at serve.max_batch_size."""
    context = cfg.model.max_position_embeddings
    per_token = kv_cache_bytes(cfg, 1)
    return {"weights_bytes": 2 * count_parameters(cfg.model, vocab_size(cfg)).total, "kv_bytes_per_token": per_token,
            "context": context, "kv_bytes_per_sequence": per_token * context, "max_batch": cfg.serve.max_batch_size,
            "kv_bytes_at_max_batch": per_token * context * cfg.serve.max_batch_size}


@dataclass(frozen=True)
class LocalMachine:
    """This machine's CPU as a plan candidate: its RAM, training precision and measured rates."""

    name: str
    memory_gb: float
    precision: str
    rates: Rates


def local_candidate(cfg: RunConfig, local: LocalMachine) -> Candidate:
    """This CPU: the largest micro-batch its RAM holds, hours from the component step-time model."""
    dev = Device(local.name, local.memory_gb, None, None, None, local.rates.bandwidth_bytes_s / 1e9, "none")
    micro, mem = largest_micro_batch(cfg, dev, 1, False, local.precision, device_kind="cpu")
    hours = None
    steps = math.ceil(total_tokens(cfg) / (cfg.train.global_batch_size * cfg.train.sequence_length_tokens))
    if micro is not None:
        step = step_seconds(cfg, micro, local.rates, local.precision, cfg.train.global_batch_size // micro)
        hours = step * steps / 3600
    return Candidate(local.name, 1, False, local.precision, micro, asdict(mem), micro is not None, hours, 0.0,
                     "this machine")


def suggestions(cfg: RunConfig, chosen: list[Device], sharding: bool = True) -> list[str]:
    """What to change when nothing fits, with the peak memory each change gives (1 device, micro-batch 1)."""
    biggest = max(chosen, key=lambda d: d.memory_gb)
    prec = biggest.best_precision()
    out = []
    variants = {
        "gradient checkpointing": cfg.model_copy(update={"train": cfg.train.model_copy(update={"gradient_checkpointing": True})}),
        "LoRA on a pretrained base": cfg.model_copy(update={"model": cfg.model.model_copy(update={
            "lora": cfg.model.lora.model_copy(update={"enabled": True})})}),
        "half the context": cfg.model_copy(update={"train": cfg.train.model_copy(update={
            "sequence_length_tokens": max(1, cfg.train.sequence_length_tokens // 2)})}),
    }
    for label, variant in variants.items():
        peak = training_memory(variant, 1, prec, overhead_bytes=CUDA_CONTEXT_BYTES).peak_bytes
        out.append(f"{label}: {peak / GB:.1f} GB per device on one {biggest.name}")
    for n in (2, 4, 8, 16, 32, 64):
        peak = training_memory(cfg, 1, prec, n, True, overhead_bytes=CUDA_CONTEXT_BYTES).peak_bytes
        if peak <= biggest.memory_gb * GB * HEADROOM:
            allow = "" if sharding else " (set plan.sharding: true or drop --no-sharding)"
            out.append(f"FSDP over {n} x {biggest.name}: {peak / GB:.1f} GB per device{allow}")
            break
    return out
