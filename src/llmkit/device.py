"""The device and precision policy: which device a stage runs on, and whether it uses bf16.

One owner for each rule, used by doctor, plan, train, generate and serve:

- :func:`cpu_has_fast_bf16` decides from the CPU's feature flags whether bf16 autocast pays off
  (doctor reports that verdict; ``train.precision: auto`` acts on it);
- :func:`resolve_precision` maps ``auto`` to bf16 / fp16 / fp32 for a device;
- :func:`train_precision` decides a training run's precision: DP's fp32, bf16 weights or autocast;
- :func:`torch_dtype` maps a precision to its torch dtype (the only such table).

torch is imported inside the functions that need it: doctor uses this module on machines
where torch is not installed yet.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit.errors import ConfigError, EnvironmentProblem

Precision = Literal["fp32", "bf16", "fp16"]

# x86: AVX-512 BF16 (Cooper Lake, Zen 4+) or AMX (Sapphire Rapids+) run bf16 matmuls natively, about
# 2x (AVX-512) to 8x (AMX) fp32. arm64: the "bf16" feature (Armv8.6 BF16, e.g. Neoverse V1/V2) gives
# oneDNN / ACL bf16 matmul kernels of about twice the fp32 rate. Anything else emulates bf16 and is
# slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of a /proc/cpuinfo text (x86 ``flags`` or arm64 ``Features``)."""
    line = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M)
    return set(line.group(1).split()) if line else set()


def cpu_has_fast_bf16(flags: set[str] | None = None) -> bool:
    """Whether bf16 autocast is faster than fp32 on this CPU (``flags``: default, read /proc/cpuinfo)."""
    if flags is None:
        try:
            flags = cpu_flags(Path("/proc/cpuinfo").read_text(errors="replace"))
        except OSError:
            return False
    return bool(flags & CPU_BF16_FLAGS)


def resolve_device(name: str) -> Any:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("train.device is cuda but torch sees no CUDA GPU",
                                 "the installed torch is a CPU build, or the driver is missing",
                                 "run `llmkit doctor` for the exact fix, or set train.device: auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise EnvironmentProblem("train.device is mps but MPS is not available", "", "set train.device: auto")
    return torch.device(name)


def resolve_precision(requested: str, device: Any) -> Precision:
    """The arithmetic precision: ``auto`` is bf16 where the CPU/GPU runs it fast, fp16 on older
    GPUs, else fp32; ``bf16-weights`` computes in bf16 (how its weights are kept is the training
    loop's business: ``llmkit.training.master``)."""
    import torch

    if requested == "bf16-weights":
        return "bf16"
    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA GPU", "fp16 loss scaling is a GPU technique",
                              "use bf16 or fp32 on this device")
        return requested  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


@dataclass(frozen=True)
class TrainPrecision:
    """How a training run computes and keeps its weights: ``compute`` is the autocast (or weight)
    precision; ``bf16_weights`` keeps the model in bf16 with fp32 master weights
    (``llmkit.training.master``)."""

    compute: Precision
    bf16_weights: bool


class _Kind:
    """A device given by its type alone (``cpu``, ``cuda``), for callers that plan for one."""

    def __init__(self, type: str) -> None:
        self.type = type


def train_precision(requested: str, device: Any, *, lora: bool = False, processes: int = 1,
                    private: bool = False, compute: Precision | None = None) -> TrainPrecision:
    """The one rule for a training run's precision (train, plan, quickstart and the benchmarks
    call it, through ``config.derived.train_precision`` where they hold a config).

    ``device``: a torch device or a type name (``cpu``; ``gpu`` and ``cuda`` are the same).
    privacy.dp trains in fp32 under ``auto`` (Opacus's per-example gradients are fp32). bf16
    weights: asked for with ``bf16-weights``, or ``auto`` on a CPU with fast bf16 (measured faster
    than autocast there: benchmarks/train_throughput.py) when the run is one process, full
    training, without privacy.dp; GPUs keep autocast under ``auto`` (not measured there yet).
    ``compute``: the arithmetic precision when the caller already resolved it for the device it
    plans for. Unsupported explicit requests are refused by the loop."""
    kind = device if isinstance(device, str) else device.type
    kind = "cuda" if kind == "gpu" else kind
    if compute is None:
        compute = "fp32" if private and requested == "auto" else resolve_precision(requested, _Kind(kind))
    keep = requested == "bf16-weights" or (requested == "auto" and compute == "bf16" and kind == "cpu"
                                           and not (lora or processes > 1 or private))
    return TrainPrecision(compute, keep)


def torch_dtype(precision: str) -> Any:
    """The torch dtype of a precision name (``fp32``, ``bf16``, ``fp16``)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: Any, precision: str) -> Any:
    """The autocast context of a precision (fp32: none)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))


def memory_budget_bytes(device: Any) -> int:
    """Memory a run may plan to use: 90% of a GPU, 80% of the RAM available now on a CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    import psutil

    return int(psutil.virtual_memory().available * 0.8)
