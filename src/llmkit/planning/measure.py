"""Measure a device for the step-time model: the primitives ``plan.compute`` sums.

Each primitive is timed at the shape the configuration uses (best of a few runs): the GEMMs, one
layer's causal attention forward and backward, the loss over the logits, and streaming-copy
bandwidth. Nothing here runs the model itself. torch is imported on call. On a GPU every timing
waits for the device (``torch.cuda.synchronize``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmkit.device import torch_dtype
from llmkit.planning.compute import PROBE_SIZE, Attention, Gemm, Rates
from llmkit.planning.memory import chunk_tokens


def best_seconds(fn: Callable[[], Any], budget_s: float = 0.5, max_runs: int = 7,
                  sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    sync()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < max_runs and (runs < 2 or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def measure_cpu_rates(precision: str) -> Rates:
    """Rates for this CPU in a precision (``bf16`` means bf16 autocast, as llmkit trains on CPU)."""
    return measure_rates(precision, "cpu")


def measure_rates(precision: str, device: str = "cpu") -> Rates:
    """Rates for a torch device (``cpu``, ``cuda``, ``cuda:1`` ...) in a precision."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def best(fn: Callable[[], Any], **kw: Any) -> float:
        return best_seconds(fn, sync=sync, **kw)

    dtype = torch_dtype(precision)
    probes: list[float] = []
    probe_a = torch.randn(PROBE_SIZE, PROBE_SIZE, device=dev).to(dtype)
    probe_b = torch.randn(PROBE_SIZE, PROBE_SIZE, device=dev).to(dtype)

    def probe() -> None:
        probes.append(2 * PROBE_SIZE**3 / best(lambda: probe_a @ probe_b, budget_s=0.02, max_runs=5))

    probe()
    gemm_cache: dict[tuple[int, int, int, int], float] = {}
    attention_cache: dict[Attention, float] = {}
    loss_cache: dict[tuple[int, int], float] = {}

    def gemm(g: Gemm) -> float:
        key = (g.m, g.k, g.n, g.batch)
        if key not in gemm_cache:
            a = torch.randn(g.batch, g.m, g.k, device=dev).to(dtype)
            b = torch.randn(g.batch, g.k, g.n, device=dev).to(dtype)
            gemm_cache[key] = 2 * g.batch * g.m * g.k * g.n / best(lambda: torch.bmm(a, b))
            probe()
        return gemm_cache[key]

    def attention_seconds(a: Attention) -> float:
        if a not in attention_cache:
            shape = (a.batch, a.heads, a.seq, a.head_dim)
            q, k, v = (torch.randn(shape, device=dev).to(dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, device=dev).to(dtype)

            def run() -> None:
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

            attention_cache[a] = best(run)
        return attention_cache[a]

    def cross_entropy_seconds(tokens: int, vocab: int) -> float:
        # the chunked loss's arithmetic (llmkit.objectives.head_loss) without its GEMMs, which are timed as
        # GEMMs: per chunk, the logits to fp32, log-sum-exp, the softmax gradient, back to the dtype
        if (tokens, vocab) not in loss_cache:
            chunk = min(tokens, chunk_tokens(vocab))
            logits = torch.randn(chunk, vocab, device=dev).to(dtype)
            labels = torch.randint(0, vocab, (chunk,), device=dev)
            rows = torch.arange(chunk, device=dev)

            def run() -> None:
                f = logits.float()
                lse = f.logsumexp(-1)
                f.gather(1, labels[:, None])
                probs = f.sub_(lse[:, None]).exp_()
                probs[rows, labels] -= 1.0
                probs.mul_((labels >= 0)[:, None]).to(dtype)

            loss_cache[(tokens, vocab)] = best(run) * -(-tokens // chunk)
        return loss_cache[(tokens, vocab)]

    n = (16 if dev.type == "cpu" else 256) * 2**20  # 64 MiB (CPU) / 1 GiB (GPU) of fp32: past the caches
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    bandwidth = 2 * 4 * n / best(lambda: dst.copy_(src), budget_s=1.0, max_runs=15)
    return Rates(gemm, attention_seconds, cross_entropy_seconds, bandwidth,
                 device_kind="cpu" if dev.type == "cpu" else "gpu", probes=probes)



def matmul_peak_flops(device: Any, dtype: Any, seconds: float = 0.3, size: int = 1024) -> float:
    """Best FLOP/s of repeated (size x size) matmuls on ``device`` in ``dtype`` (the MFU denominator)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        a @ b  # warm-up (kernel selection, caches)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs), or 32 MB when it cannot be read."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=32 * 2**20)
