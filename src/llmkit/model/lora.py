"""LoRA adapters with peft: which modules, and how the result is saved."""

from __future__ import annotations

from typing import Any

from llmkit.config.schema import LoraConfig
from llmkit.errors import UsageError
from llmkit.model.quantize import linear_module_names
from llmkit.optional import require


def apply_lora(model: Any, cfg: LoraConfig, classify: bool) -> Any:
    """Freeze ``model`` and wrap it with trainable fp32 LoRA (or DoRA) adapters on
    ``cfg.target_modules``, or on every linear projection the model's blocks have."""
    peft = require("peft", "lora", "LoRA (model.lora.enabled)")
    found = linear_module_names(model)
    targets = list(cfg.target_modules or found)
    missing = [t for t in targets if t not in found]
    if missing:
        raise UsageError(f"LoRA target modules not in the model: {', '.join(missing)}",
                         f"its linear projections: {', '.join(found)[:400]}",
                         "fix model.lora.target_modules (or set it to null for all of them)")
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
    peft_cfg = peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        task_type="SEQ_CLS" if classify else "CAUSAL_LM", use_dora=cfg.dora,
        fan_in_fan_out=conv1d,  # GPT-2 stores projections as Conv1D (in, out)
    )
    return peft.get_peft_model(model, peft_cfg, autocast_adapter_dtype=True)
