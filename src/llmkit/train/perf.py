"""Throughput arithmetic: FLOPs per token and the device's measured matmul peak."""

from __future__ import annotations

import time
from typing import Any


def flops_per_token(n_params: int, layers: int, hidden: int, seq_len: int, trainable_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6·N for the weights (4·N + 2·N·f with only a fraction f
    trainable, as with LoRA) plus 12·L·H·T for attention scores (PaLM appendix B)."""
    weights = 4 * n_params + 2 * n_params * trainable_fraction
    return weights + 12 * layers * hidden * seq_len


def matmul_peak_flops(device: Any, dtype: Any, seconds: float = 0.3, size: int = 1024) -> float:
    """Best FLOP/s of repeated (size x size) matmuls on ``device`` in ``dtype``."""
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
