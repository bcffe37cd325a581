"""LoRA adapters with peft: which modules, and how the result is saved."""

from __future__ import annotations

from typing import Any

from llmkit.config.schema import LoraConfig
from llmkit.errors import EnvironmentProblem, UsageError

DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
"""Attention and MLP projections of each architecture (peft's module-name suffixes)."""


def apply_lora(model: Any, cfg: LoraConfig, architecture: str, classify: bool) -> Any:
    """Freeze ``model`` and wrap it with trainable LoRA adapters."""
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model
    except ImportError:
        raise EnvironmentProblem("LoRA needs the peft package", "model.lora.enabled is true",
                                 "pip install 'llmkit[lora]'") from None
    if cfg.base_bits in (4, 8):
        raise UsageError(f"a {cfg.base_bits}-bit base (QLoRA) needs bitsandbytes on a CUDA GPU",
                         "llmkit's QLoRA path is not available in this build",
                         "set model.lora.base_bits: 32 (or 16 on a GPU)")
    targets = cfg.target_modules or DEFAULT_TARGETS[architecture]
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise UsageError(f"LoRA target modules not in the model: {', '.join(missing)}",
                         f"{architecture} has: {', '.join(sorted(n for n in names if n))[:400]}",
                         "fix model.lora.target_modules (or set it to null for the defaults)")
    peft_cfg = PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
        task_type="SEQ_CLS" if classify else "CAUSAL_LM",
        fan_in_fan_out=architecture == "gpt2",  # GPT-2 stores projections as Conv1D (in, out)
    )
    return get_peft_model(model, peft_cfg)
