"""LoRA adapters with peft: which modules, and how the result is saved."""

from __future__ import annotations

from typing import Any

from llmkit.config.derived import lora_targets
from llmkit.config.schema import LoraConfig
from llmkit.errors import UsageError
from llmkit.optional import require


def apply_lora(model: Any, cfg: LoraConfig, architecture: str, classify: bool) -> Any:
    """Freeze ``model`` and wrap it with trainable LoRA adapters."""
    peft = require("peft", "lora", "LoRA (model.lora.enabled)")
    targets = lora_targets(cfg, architecture)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise UsageError(f"LoRA target modules not in the model: {', '.join(missing)}",
                         f"{architecture} has: {', '.join(sorted(n for n in names if n))[:400]}",
                         "fix model.lora.target_modules (or set it to null for the defaults)")
    peft_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        task_type="SEQ_CLS" if classify else "CAUSAL_LM",
        fan_in_fan_out=architecture == "gpt2",  # GPT-2 stores projections as Conv1D (in, out)
    )
    return peft.get_peft_model(model, peft_cfg)
