"""AdamW with decay only on matrices, and the learning-rate schedule (a pure function)."""

from __future__ import annotations

import math
from typing import Any

from llmkit.config.schema import TrainConfig


def lr_at(step: int, cfg: TrainConfig, total_steps: int | None) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear warmup over ``warmup_steps``, then cosine / linear decay to ``min_learning_rate`` at
    ``total_steps``; constant after warmup when the run has no step budget (time-limited runs).
    """
    peak, floor = cfg.learning_rate, cfg.min_learning_rate
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total_steps is None:
        return peak
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "linear":
        return peak + (floor - peak) * progress
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices decay; norms, biases and embeddings do not."""
    import torch

    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and id(param) not in embeddings else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: Any, cfg: TrainConfig, device_type: str, masters: Any = None) -> Any:
    """AdamW, the fastest exact implementation the installed torch has for these parameters: fused
    (one kernel over all parameters; on CPU ~5x the for-loop and ~8x foreach on the reference model,
    `benchmarks/optimizer_step.py`), else foreach. FSDP's sharded parameters (DTensors) use foreach.
    ``masters`` (``llmkit.training.master.MasterWeights``): the optimizer updates the fp32 masters."""
    import torch

    groups = param_groups(model, cfg.weight_decay)
    if masters is not None:
        groups = masters.groups(groups)
    if cfg.optimizer != "adamw":  # bitsandbytes' 8-bit AdamW (check_optimizer refused what cannot run)
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
        return cls(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    sharded = any(type(p).__name__ == "DTensor" for g in groups for p in g["params"])
    kwargs = {"lr": cfg.learning_rate, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.adam_eps}
    if device_type in ("cuda", "cpu") and not sharded:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a torch or device without the fused kernel
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def check_optimizer(cfg: TrainConfig, device_type: str, distributed: bool, private: bool) -> None:
    """Refuse, before anything loads, an optimizer this run cannot use, saying what to use instead."""
    from llmkit.errors import ConfigError
    from llmkit.optional import require

    if cfg.optimizer == "adamw":
        return
    if cfg.optimizer == "paged_adamw_8bit" and device_type != "cuda":
        raise ConfigError(f"train.optimizer: paged_adamw_8bit needs a CUDA GPU (this run is on {device_type})",
                          "paged optimizer states live in CUDA unified memory",
                          "set train.optimizer: adamw_8bit (same 8-bit states, not paged) or adamw")
    if distributed or private:
        why = "several processes (DDP/FSDP checkpoints hold torch's AdamW state)" if distributed else "privacy.dp"
        raise ConfigError(f"train.optimizer: {cfg.optimizer} does not support {why} yet",
                          "bitsandbytes' 8-bit AdamW is wired into the one-process loop",
                          "set train.optimizer: adamw")
    if device_type not in ("cuda", "cpu"):
        raise ConfigError(f"train.optimizer: {cfg.optimizer} is not available on {device_type}",
                          "bitsandbytes runs on CUDA GPUs and CPUs", "set train.optimizer: adamw")
    require("bitsandbytes", "qlora", f"train.optimizer: {cfg.optimizer}", "or set train.optimizer: adamw")
