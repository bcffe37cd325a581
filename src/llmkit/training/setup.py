"""Everything the loop needs before step 1: micro-batch, step budget, and the state to resume.

The loop itself (loop.py) stays a readable top-to-bottom story; the decisions live here.
"""

from __future__ import annotations

import base64
import math
import random
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig, TrainConfig
from llmkit.errors import UsageError

# Keys that may differ between a checkpoint's config and the resuming config: they change how
# the run is watched or where it runs, not what it computes.
RESUME_SAFE_PREFIXES = (
    "runs_root", "hub_token_env", "eval.", "generate.", "serve.", "plan.", "launch.",
    "train.max_time_s", "train.eval_every_steps", "train.eval_batches", "train.log_every_steps",
    "train.checkpoint_every_steps", "train.keep_last", "train.trackers", "train.tracker_project", "train.device", "train.compile",
    # the examples of a step do not depend on how they are split (llmkit.data.batches): only the
    # order of the floating-point sums changes
    "train.micro_batch_size", "train.distributed", "train.checkpoint_uri",
    "privacy.offline",  # where the run may connect, not what it trains on (privacy.pii changes the data)
    "privacy.encryption_key_env",  # how files are stored, not what they hold
)


def micro_batch(cfg: RunConfig, device: Any, precision: str, log: Any = print, world: int = 1,
                sharded: bool = False) -> int:
    """The micro-batch to train with (``llmkit.planning.memory.resolve_micro_batch``: the configured one,
    or for ``auto`` the largest the memory plan says fits); warns before step 1 when the plan says
    the chosen one will not fit. With ``world`` ranks, micro-batch x ranks must divide the global batch."""
    from llmkit.planning.memory import micro_batch_for_device

    mb, peak, budget = micro_batch_for_device(cfg, device, precision, world, sharded)
    check_split(cfg.train.global_batch_size, mb, world)
    if cfg.train.micro_batch_size == "auto":
        log(f"micro_batch_size auto -> {mb} (planned peak {peak / 1e9:.2f} GB of {budget / 1e9:.1f} GB)")
    if peak > budget:
        log(f"warning: the memory plan says micro-batch {mb} needs {peak / 1e9:.1f} GB but about "
            f"{budget / 1e9:.1f} GB is available: expect an out-of-memory error (see `llmkit plan`; try a smaller "
            "train.micro_batch_size, gradient checkpointing or LoRA)")
    return mb


def check_split(global_batch: int, micro: int, ranks: int) -> None:
    """Refuse a micro-batch and process count whose product does not divide the global batch."""
    if global_batch % (micro * ranks):
        raise UsageError(f"global_batch_size {global_batch} is not a multiple of micro-batch {micro} x {ranks} "
                         "processes", "every rank takes whole micro-batches of every global batch",
                         f"use a process count and train.micro_batch_size whose product divides {global_batch}, "
                         "or micro_batch_size: auto")


def total_steps(tc: TrainConfig) -> int | None:
    """Optimizer steps the run will take: max_steps, else max_tokens over the tokens per step (None:
    only a time limit ends the run)."""
    if tc.max_steps is not None:
        return tc.max_steps
    if tc.max_tokens is not None:
        return math.ceil(tc.max_tokens / (tc.global_batch_size * tc.sequence_length_tokens))
    return None


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
    """AdamW state as flat tensors ('<param index>/<key>', nested dicts as '<key>/<inner key>':
    bitsandbytes nests its quantization state) and its param groups as JSON. A plain Python
    number in the state (bitsandbytes' step counter) is a 0-d tensor named '<key>:int' or
    '<key>:float', and comes back as that number."""
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    seen: set[int] = set()  # bitsandbytes shares one quantization map between parameters

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            tensors[prefix] = t.clone() if t.untyped_storage().data_ptr() in seen else t
            seen.add(t.untyped_storage().data_ptr())
        elif isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}/{key}", inner)
        elif isinstance(value, (int, float)):
            tensors[f"{prefix}:{type(value).__name__}"] = torch.tensor(value)

    for idx, per in sd["state"].items():
        flatten(str(idx), per)
    return tensors, sd["param_groups"]


def load_optimizer(optimizer: Any, tensors: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        path, _, number = name.partition(":")
        idx, *keys = path.split("/")
        node = state.setdefault(int(idx), {})
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = {"int": int, "float": float}[number](value.item()) if number else value
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
