"""`llmkit plan --serve`: what serving C users at T tokens/s each needs, and what it costs (pure).

A decode step reads every weight once and each sequence's keys and values once, and does two
FLOPs per weight per sequence: at the batch sizes of serving it is bound by memory bandwidth, so
more users share the weight reads almost for free until the step turns compute-bound. A prompt's
prefill is compute-bound. Per request of ``prompt`` + ``completion`` tokens, with C requests
decoding together (continuous batching) and the prefills of joining requests taking turns with
the decode steps::

    aggregate tokens/s = C x completion / (C x prefill + completion x step(C))
    per user           = aggregate / C

GPU candidates: the step from the datasheet's bandwidth and peak at the efficiencies below
(assumptions, not measured here: no GPU was lent when they were written), tensor-parallel over n
devices of one instance. This machine's CPU: the step of llmkit's own engine, timed component by
component from timings of this machine (``llmkit.serving.speed.measure_cpu_serving``).
``benchmarks/serve_load.py`` compares both with the real server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmkit.config.derived import vocab_size
from llmkit.config.schema import RunConfig
from llmkit.planning.hardware import devices, find_device
from llmkit.planning.memory import GB, kv_cache_bytes
from llmkit.planning.params import count_parameters

# GPU decode reads weights and KV cache at this share of the datasheet bandwidth (vLLM with CUDA
# graphs reaches 60-80% at small batches in published single-GPU measurements; assumption).
GPU_DECODE_BANDWIDTH_EFFICIENCY = 0.7
GPU_DECODE_MFU = 0.5  # when a large batch turns the step compute-bound
GPU_PREFILL_MFU = 0.5  # a prompt's prefill: large GEMMs
GPU_STEP_OVERHEAD_S = 3e-4  # sampling, scheduling and launches around one step (CUDA graphs)
TP_LAYER_SYNC_S = 2e-5  # two all-reduces per layer per step over NVLink at tensor-parallel > 1
HEADROOM = 0.90  # usable share of device memory
GPU_RUNTIME_BYTES = int(1.5e9)  # CUDA context, the engine's workspace and graphs
COUNTS = (1, 2, 4, 8)  # tensor parallel within one instance


@dataclass(frozen=True)
class StepSpeed:
    """How long the engine takes on a device: one decode step of ``rows`` sequences whose keys and
    values span ``span`` positions, and one prompt's prefill of ``tokens``; seconds."""

    step_seconds: Callable[[int, int], float]
    prefill_seconds: Callable[[int], float]
    breakdown: Callable[[int, int], dict[str, float]] = lambda rows, span: {}
    # the batch attends over its longest row's span (llmkit's engine: one time axis for all rows),
    # not each row over its own (paged attention)
    longest_span: bool = False
    note: Callable[[], str | None] = lambda: None  # after the speeds were asked for: how steady the device was


@dataclass
class ServeCandidate:
    device: str
    num_devices: int
    dtype: str
    fits: bool
    memory_bytes_per_device: int
    step_ms: float | None  # one decode step of the whole batch
    tokens_per_s_per_user: float | None
    tokens_per_s: float | None  # all users together
    ttft_s: float | None  # one prompt's prefill on an idle server
    meets: bool
    usd_per_hour: float | None
    usd_per_million_tokens: float | None
    offering: str | None
    breakdown_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class ServePlan:
    concurrency: int
    tokens_per_s_per_user: float
    context: int
    prompt_tokens: int
    weights_bytes: dict[str, int]
    kv_bytes_per_token: dict[str, int]
    candidates: list[ServeCandidate] = field(default_factory=list)
    recommendations: list[dict[str, Any]] = field(default_factory=list)
    machine_note: str | None = None  # set when this machine's measurement varied by over a fifth

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def element_bytes(dtype: str) -> int:
    """Bytes of an activation or cached key/value element: int8/int4 quantize the weights only and
    compute in bf16 where that is faster (``llmkit.wquant.activation_dtype``; on CPUs where fp32 is,
    the cache is twice this)."""
    return 4 if dtype == "fp32" else 2


def weight_bytes(cfg: RunConfig, dtype: str) -> tuple[float, float]:
    """(bytes of the weights a decode step multiplies by, bytes of all weights held) at ``dtype``:
    int8 / int4 as ``llmkit.wquant`` stores them (the head at int8 under int4, the embedding fp32)."""
    from llmkit.wquant import BYTES_PER_WEIGHT

    pc = count_parameters(cfg.model, vocab_size(cfg))
    if dtype not in ("int8", "int4"):
        return pc.matmul * element_bytes(dtype), pc.total * element_bytes(dtype)
    head = pc.embedding  # the head's (vocab x hidden) matrix, at int8
    multiplied = (pc.matmul - head) * BYTES_PER_WEIGHT[dtype] + head * BYTES_PER_WEIGHT["int8"]
    embedding = pc.embedding * BYTES_PER_WEIGHT["int8"] if pc.head else 0  # int8 rows; tied: the head's
    norms = pc.non_embedding - pc.per_layer_matrices * pc.layers  # norms and biases, fp32
    return multiplied, multiplied + embedding + (pc.positional + norms) * 4


def decode_work(cfg: RunConfig, rows: int, span: int, dtype: str) -> tuple[float, float]:
    """(bytes read, FLOPs) of one decode step: every weight once (the embedding's one row per
    sequence aside), each row's keys and values over ``span`` positions; 2 FLOPs per multiplied
    weight per row plus the attention's 4 per cached position and width."""
    m = cfg.model
    pc = count_parameters(m, vocab_size(cfg))
    e = element_bytes(dtype)
    bytes_read = weight_bytes(cfg, dtype)[0] + rows * kv_cache_bytes(cfg, span, e)
    flops = 2 * pc.matmul * rows + 4 * rows * span * m.hidden_size * m.num_hidden_layers
    return bytes_read, flops


def gpu_speed(cfg: RunConfig, device: str, n: int) -> StepSpeed:
    """A GPU's decode step and prefill, from its datasheet (bf16), tensor-parallel over n."""
    dev = find_device(device)
    dtype = dev.best_precision()
    peak = (dev.peak_flops(dtype) or 0.0) * n
    bandwidth = dev.bandwidth_gbs * 1e9 * n
    sync = TP_LAYER_SYNC_S * cfg.model.num_hidden_layers if n > 1 else 0.0
    pc = count_parameters(cfg.model, vocab_size(cfg))

    def parts(rows: int, span: int) -> dict[str, float]:
        bytes_read, flops = decode_work(cfg, rows, span, dtype)
        return {"memory": bytes_read / (bandwidth * GPU_DECODE_BANDWIDTH_EFFICIENCY),
                "compute": flops / (peak * GPU_DECODE_MFU), "overhead": GPU_STEP_OVERHEAD_S + sync}

    def step(rows: int, span: int) -> float:
        p = parts(rows, span)
        return max(p["memory"], p["compute"]) + p["overhead"]

    def prefill(tokens: int) -> float:
        m = cfg.model
        flops = 2 * pc.matmul * tokens + 2 * tokens * tokens * m.hidden_size * m.num_hidden_layers
        return max(flops / (peak * GPU_PREFILL_MFU), pc.matmul * element_bytes(dtype) / bandwidth) + GPU_STEP_OVERHEAD_S + sync

    return StepSpeed(step, prefill, parts)


def _span(speed: StepSpeed, concurrency: int, prompt: int, completion: int) -> int:
    """The positions a decode step attends over, on average: a row's mean (its prompt and half its
    completion), or the longest row's when the batch shares one time axis: of ``concurrency`` rows
    at evenly spread points of their completions, the furthest along is past C / (C + 1) of it."""
    share = concurrency / (concurrency + 1) if speed.longest_span else 0.5
    return prompt + max(1, round(completion * share))


def request_rates(speed: StepSpeed, concurrency: int, prompt: int, completion: int) -> tuple[float, float, float, float]:
    """(decode step s at the full batch, aggregate tokens/s, tokens/s per user, time to first token s)."""
    step = speed.step_seconds(concurrency, _span(speed, concurrency, prompt, completion))
    prefill = speed.prefill_seconds(prompt)
    aggregate = concurrency * completion / (concurrency * prefill + completion * step)
    return step, aggregate, aggregate / concurrency, prefill


def serve_memory(cfg: RunConfig, dtype: str, concurrency: int, context: int) -> tuple[int, int]:
    """(weights bytes, KV cache bytes for ``concurrency`` sequences of ``context`` positions)."""
    e = element_bytes(dtype)
    return int(weight_bytes(cfg, dtype)[1]), concurrency * kv_cache_bytes(cfg, context, e)


@dataclass(frozen=True)
class LocalServer:
    """This machine's CPU as a serving candidate: RAM, the serve.dtype, its measured speeds."""

    name: str
    memory_gb: float
    dtype: str
    speed: StepSpeed | None  # None: not measured, as it does not hold the model


def serve_plan(cfg: RunConfig, concurrency: int, tokens_per_user: float, context: int, prompt_tokens: int,
               device_names: list[str] | None = None, cloud: str = "any", spot: bool = False,
               local: LocalServer | None = None,
               price: Callable[[str, int, str, bool], tuple[float, str, str, int] | None] | None = None) -> ServePlan:
    """Every (device, tensor-parallel count) that holds the weights and ``concurrency`` sequences of
    ``context`` tokens, with its speed; the ones serving each user ``tokens_per_user`` tokens/s
    first, cheapest per hour first; then recommendations (see ``recommend_serving``)."""
    from llmkit.errors import ConfigError
    from llmkit.planning.recommend import _price

    price = price or _price
    if prompt_tokens >= context:
        raise ConfigError(f"a {prompt_tokens}-token prompt leaves no room to generate in a {context}-token context",
                          "--context is the whole sequence: prompt and completion",
                          "give --prompt-tokens below --context (or a larger --context)")
    if context > cfg.model.max_position_embeddings:
        raise ConfigError(f"--context {context} is longer than the model's {cfg.model.max_position_embeddings} positions",
                          "the model cannot attend beyond model.max_position_embeddings",
                          f"plan with --context {cfg.model.max_position_embeddings} or less")
    completion = context - prompt_tokens
    plan = ServePlan(concurrency, tokens_per_user, context, prompt_tokens,
                     {d: serve_memory(cfg, d, 1, 1)[0] for d in ("fp32", "bf16", "int8", "int4")},
                     {d: kv_cache_bytes(cfg, 1, element_bytes(d)) for d in ("fp32", "bf16")})
    chosen = [find_device(n) for n in device_names] if device_names else list(devices().values())
    for dev in chosen:
        dtype = dev.best_precision()
        weights, kv = serve_memory(cfg, dtype, concurrency, context)
        for n in COUNTS:
            per_device = (weights + kv) // n + GPU_RUNTIME_BYTES
            fits = per_device <= dev.memory_gb * GB * HEADROOM
            offer = price(dev.name, n, cloud, spot)
            speed = gpu_speed(cfg, dev.name, n)
            plan.candidates.append(_candidate(dev.name, n, dtype, fits, per_device, speed, concurrency, prompt_tokens,
                                              completion, tokens_per_user, offer[0] if offer else None,
                                              offer[1] if offer else None))
    if local is not None:
        weights, kv = serve_memory(cfg, local.dtype, concurrency, context)
        fits = local_fits(cfg, local.dtype, local.memory_gb, concurrency, context)
        if local.speed is None or not fits:
            plan.candidates.append(ServeCandidate(local.name, 1, local.dtype, False, weights + kv, None, None, None, None,
                                                  False, 0.0, None, "this machine"))
        else:
            plan.candidates.append(_candidate(local.name, 1, local.dtype, fits, weights + kv, local.speed, concurrency,
                                              prompt_tokens, completion, tokens_per_user, 0.0, "this machine"))
            plan.machine_note = local.speed.note()
    plan.candidates.sort(key=lambda c: (not (c.fits and c.meets), c.usd_per_hour is None,
                                        _sig2(c.usd_per_hour), -(c.tokens_per_s or 0), c.num_devices))
    plan.recommendations = recommend_serving(plan.candidates)
    return plan


def local_fits(cfg: RunConfig, dtype: str, memory_gb: float, concurrency: int, context: int) -> bool:
    """Whether a CPU's RAM holds the weights and the cache (measure its speed only then)."""
    weights, kv = serve_memory(cfg, dtype, concurrency, context)
    return weights + kv <= memory_gb * 1e9 * HEADROOM


def _sig2(x: float | None) -> float:
    return math.inf if x is None else float(f"{x:.2g}")


def _candidate(device: str, n: int, dtype: str, fits: bool, per_device: int, speed: StepSpeed, concurrency: int,
               prompt: int, completion: int, tokens_per_user: float, usd_h: float | None,
               offering: str | None) -> ServeCandidate:
    step, aggregate, per_user, ttft = request_rates(speed, concurrency, prompt, completion)
    per_million = usd_h / (aggregate * 3600) * 1e6 if usd_h is not None and aggregate else None
    parts = {k: v * 1000 for k, v in speed.breakdown(concurrency, _span(speed, concurrency, prompt, completion)).items()}
    return ServeCandidate(device, n, dtype, fits, per_device, step * 1000, per_user, aggregate, ttft,
                          fits and per_user >= tokens_per_user, usd_h, per_million, offering, parts)


def recommend_serving(candidates: list[ServeCandidate]) -> list[dict[str, Any]]:
    """Among those that fit and serve every user fast enough: this machine when it can, the
    cheapest per hour (fewest devices on a tie), and the fastest per user when notably faster."""
    ok = [c for c in candidates if c.meets and c.usd_per_hour is not None]
    if not ok:
        return []
    local = [c for c in ok if c.offering == "this machine"]
    cloud = [c for c in ok if c.offering != "this machine"]
    out = []
    if local:
        out.append({**asdict(local[0]), "why": "this machine meets it (no rental)"})
    if cloud:
        cheapest = min(cloud, key=lambda c: (_sig2(c.usd_per_hour), c.num_devices, -(c.tokens_per_s or 0)))
        out.append({**asdict(cheapest), "why": "cheapest that meets it" + (" in a cloud" if local else "")})
        fastest = max(cloud, key=lambda c: (c.tokens_per_s_per_user or 0, -(c.usd_per_hour or 0)))
        if fastest is not cheapest and (fastest.tokens_per_s_per_user or 0) > 1.5 * (cheapest.tokens_per_s_per_user or 0):
            ratio = (fastest.tokens_per_s_per_user or 0) / (cheapest.tokens_per_s_per_user or 1)
            out.append({**asdict(fastest), "why": f"fastest per user: {ratio:.1f}x the tokens/s for "
                                                  f"${(fastest.usd_per_hour or 0) - (cheapest.usd_per_hour or 0):,.2f}/h more"})
    return out
