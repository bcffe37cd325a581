"""Linear layers multiplied through oneDNN with weights laid out once (CPU inference).

``nn.Linear`` on a CPU calls BLAS, which re-packs the whole weight matrix into its own panels at
every call. When a few rows multiply a large weight, as in a decode step, that packing is most of
the product's time: its cost is the weight's size, whatever the number of rows. :class:`PackedLinear`
holds a copy of the weight in oneDNN's layout, made once, and multiplies with it (what inductor's
weight freezing and Intel's extension do for inference). For small matrices oneDNN's per-call
overhead is larger than BLAS's, so :func:`faster_packed` times both on each weight shape and
callers pack only where it pays. The copy takes the weight's memory once more; the products equal
``nn.Linear``'s to float rounding (another summation order).

Used by the server's decode step (``llmkit.generate.fastpath``, serve.pack_weights) and by the
serving plan's CPU measurement (``llmkit.planning.measure``), which must time what the step runs.
"""

from __future__ import annotations

import time
from typing import Any

import torch


class PackedLinear:
    """``nn.Linear``'s product with a copy of its weight laid out once for oneDNN (CPU); the module
    itself is left as it is."""

    def __init__(self, linear: Any, rows: int = 16):
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
        self.bias = linear.bias.detach() if linear.bias is not None else None
        self.out_features = linear.out_features

    def __call__(self, x: Any) -> Any:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), self.weight, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


def packable(m: Any) -> bool:
    """Whether ``m`` is a plain ``nn.Linear`` of a CPU model in a dtype oneDNN packs (fp32, bf16)
    on a torch that has the operations; subclasses (LoRA layers, quantized ones) are not."""
    return (type(m) is torch.nn.Linear and m.weight.device.type == "cpu"
            and m.weight.dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def shape_of(m: Any) -> tuple[int, int, bool, str]:
    """What decides a product's speed: input and output size, bias, dtype."""
    return (m.in_features, m.out_features, m.bias is not None, str(m.weight.dtype))


def available_memory() -> int | None:
    """RAM available now, in bytes (None: unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - unknown: do not guess
        return None


def _best_us(fn: Any, x: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def faster_packed(linears: list[Any], budget_s: float = 0.05) -> dict[tuple[int, int, bool, str], bool]:
    """For each distinct weight shape: whether the packed product beats ``nn.Linear``'s at 1 row and
    16 rows together (best of a few calls each, interleaved; a shape that fails to pack is not packed)."""
    out: dict[tuple[int, int, bool, str], bool] = {}
    with torch.inference_mode():
        for m in linears:
            shape = shape_of(m)
            if shape in out:
                continue
            try:
                p = PackedLinear(m)
                xs = [torch.randn(rows, m.in_features, dtype=m.weight.dtype) for rows in (1, 16)]
                plain = packed = 0.0
                for x in xs:
                    p(x), m(x)  # first calls: oneDNN primitive creation, caches
                    once = max(1e-6, _best_us(m, x, 1) / 1e6)
                    repeats = max(3, min(50, int(budget_s / 4 / once)))
                    a = b = float("inf")
                    for _ in range(2):  # interleaved: a moment of noise hits both
                        a, b = min(a, _best_us(m, x, repeats)), min(b, _best_us(p, x, repeats))
                    plain, packed = plain + a, packed + b
                out[shape] = packed < 0.9 * plain
            except Exception:  # noqa: BLE001 - this torch / CPU cannot pack it: the module is used
                out[shape] = False
    return out
