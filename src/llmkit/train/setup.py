"""Everything the loop needs before step 1: device, precision, model, and the state to resume.

The loop itself (loop.py) stays a readable top-to-bottom story; the decisions live here.
"""

from __future__ import annotations

import base64
import contextlib
import random
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, EnvironmentProblem, UsageError

# Keys that may differ between a checkpoint's config and the resuming config: they change how
# the run is watched or where it runs, not what it computes.
RESUME_SAFE_PREFIXES = (
    "runs_root", "hub_token_env", "eval.", "generate.", "serve.", "plan.", "launch.",
    "train.max_time_s", "train.eval_every_steps", "train.eval_batches", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.keep_last", "train.tensorboard", "train.device", "train.compile",
)


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


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run about twice as fast as fp32 on this CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(requested: str, device: Any) -> str:
    """``auto``: bf16 where the CPU/GPU runs it fast, fp16 on older GPUs, else fp32."""
    import torch

    if requested != "auto":
        if requested == "fp16" and device.type != "cuda":
            raise ConfigError("train.precision fp16 needs a CUDA GPU", "fp16 loss scaling is a GPU technique",
                              "use bf16 or fp32 on this device")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast(device: Any, precision: str) -> Any:
    """The autocast context of a precision (fp32: none)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def memory_budget_bytes(device: Any) -> int:
    """Memory a run may plan to use: 90% of a GPU, 80% of the RAM available now on a CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    import psutil

    return int(psutil.virtual_memory().available * 0.8)


def micro_batch(cfg: RunConfig, device: Any, precision: str, log: Any = print) -> int:
    """The configured micro-batch, or with ``auto`` the largest divisor of the global batch that the
    memory plan says fits; warns before step 1 when the plan says even the chosen one will not fit."""
    from llmkit.plan.memory import training_memory

    kind = "cpu" if device.type == "cpu" else "gpu"
    budget = memory_budget_bytes(device)

    def peak(mb: int) -> int:
        return training_memory(cfg, mb, precision, device_kind=kind).peak_bytes

    mb = cfg.train.micro_batch_size
    if mb == "auto":
        divisors = [d for d in range(1, cfg.train.global_batch_size + 1) if cfg.train.global_batch_size % d == 0]
        fitting = [d for d in divisors if peak(d) <= budget]
        mb = max(fitting) if fitting else 1
        log(f"micro_batch_size auto -> {mb} (planned peak {peak(mb) / 1e9:.2f} GB of {budget / 1e9:.1f} GB)")
    if peak(mb) > budget:
        log(f"warning: the memory plan says micro-batch {mb} needs {peak(mb) / 1e9:.1f} GB but about "
            f"{budget / 1e9:.1f} GB is available: expect an out-of-memory error (see `llmkit plan`; try a smaller "
            "train.micro_batch_size, gradient checkpointing or LoRA)")
    return mb


# --- state (de)serialization -------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as JSON."""
    import torch

    state = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state(legacy=False)),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def optimizer_tensors(optimizer: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """AdamW state as flat tensors ('<param index>/<key>') and its param groups as JSON."""
    sd = optimizer.state_dict()
    tensors = {f"{idx}/{key}": value.detach().cpu().contiguous()
               for idx, per in sd["state"].items() for key, value in per.items()}
    return tensors, sd["param_groups"]


def load_optimizer(optimizer: Any, tensors: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def trainable_tensors(model: Any) -> dict[str, Any]:
    """Parameters that training changes (all, or only the adapters under LoRA), on the CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, tensors: dict[str, Any]) -> None:
    """Copy checkpoint tensors into the model; a shape or name mismatch is a clear error."""
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise UsageError("the checkpoint does not fit this model",
                         f"missing: {', '.join(missing[:5]) or '-'}; unexpected: {', '.join(unexpected[:5]) or '-'}",
                         "resume with the model config the checkpoint was made with, or start a new run")
    for name, p in params.items():
        if tuple(tensors[name].shape) != tuple(p.shape):
            raise UsageError("the checkpoint is from a model of a different shape",
                             f"{name}: checkpoint {tuple(tensors[name].shape)}, model {tuple(p.shape)}",
                             "resume with the model config the checkpoint was made with, or start a new run")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device))


# --- resume checks -----------------------------------------------------------------------------


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines 'key: old -> new' for keys that change what the run computes."""
    a, b = flatten(saved), flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if key.startswith(RESUME_SAFE_PREFIXES) or a.get(key) == b.get(key):
            continue
        lines.append(f"{key}: {a.get(key, '(absent)')!r} -> {b.get(key, '(absent)')!r}")
    return lines
