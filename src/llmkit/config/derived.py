"""Values the config implies but does not spell out: the MLP width, the vocabulary, LoRA targets.

Pure functions of the validated config, shared by the model builder, plan and doctor, so each
rule has one owner.
"""

from __future__ import annotations

from typing import Any

from llmkit.config.schema import LORA_LINEAR_MODULES, LoraConfig, ModelConfig, RunConfig


def intermediate_size(model: ModelConfig) -> int:
    """The MLP width: explicit, or derived (gpt2: 4x hidden; llama: 8/3x hidden, rounded up to 64)."""
    if model.intermediate_size is not None:
        return model.intermediate_size
    if model.architecture == "gpt2":
        return 4 * model.hidden_size
    return -(-(8 * model.hidden_size // 3) // 64) * 64


def vocab_size(config: RunConfig) -> int:
    """Embedding rows: the model's own setting, else the tokenizer's vocabulary size."""
    return config.model.vocab_size or config.tokenizer.vocab_size


def lora_targets(lora: LoraConfig, architecture: str) -> list[str]:
    """The module names LoRA adapts: ``lora.target_modules``, or every linear projection of the
    architecture's blocks (attention and MLP)."""
    return list(lora.target_modules or LORA_LINEAR_MODULES[architecture])


def linear_shapes(model: ModelConfig) -> dict[str, list[tuple[int, int]]]:
    """(in, out) features of each linear projection of one block, by module name (a name can
    stand for several modules: GPT-2's ``c_proj`` is both the attention output and the MLP down)."""
    h, inter = model.hidden_size, intermediate_size(model)
    if model.architecture == "gpt2":
        return {"c_attn": [(h, 3 * h)], "c_proj": [(h, h), (inter, h)], "c_fc": [(h, inter)]}
    kv = (model.num_key_value_heads or model.num_attention_heads) * (h // model.num_attention_heads)
    return {"q_proj": [(h, h)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(h, h)],
            "gate_proj": [(h, inter)], "up_proj": [(h, inter)], "down_proj": [(inter, h)]}


def fused_shapes(model: ModelConfig) -> dict[str, list[tuple[int, int]]]:
    """Phi-3's fused projections (q, k, v in one; gate and up in one), for LoRA targets."""
    h, inter = model.hidden_size, intermediate_size(model)
    kv = (model.num_key_value_heads or model.num_attention_heads) * (h // model.num_attention_heads)
    return {"qkv_proj": [(h, h + 2 * kv)], "gate_up_proj": [(h, 2 * inter)]}


def lora_parameters(model: ModelConfig) -> int:
    """Adapter parameters LoRA adds: r x (in + out) for every adapted projection of every block
    (DoRA: plus a magnitude per output feature)."""
    shapes = {**fused_shapes(model), **linear_shapes(model)} if model.architecture == "llama" else linear_shapes(model)
    per = (lambda i, o: model.lora.r * (i + o) + (o if model.lora.dora else 0))
    per_layer = sum(per(i, o) for name in lora_targets(model.lora, model.architecture) for i, o in shapes.get(name, []))
    return per_layer * model.num_hidden_layers


def train_precision(cfg: RunConfig, device: Any, processes: int = 1, compute: str | None = None) -> Any:
    """``llmkit.device.train_precision`` for a run config (its precision, LoRA and privacy.dp):
    how a run of ``cfg`` on ``processes`` processes of ``device`` (a torch device or a type name)
    computes and keeps its weights."""
    from llmkit.device import train_precision as rule

    return rule(cfg.train.precision, device, lora=cfg.model.lora.enabled, processes=processes,
                private=cfg.privacy.dp.enabled, compute=compute)  # type: ignore[arg-type]


def run_context(cfg: RunConfig, environ: Any = None, strict: bool = False) -> Any:
    """The run context (``llmkit.privacy.context.RunContext``) of a run of ``cfg``: its key from
    privacy.encryption_key_env, its offline mode. ``strict`` (a stage that writes): a configured
    key that is not set is an error now."""
    from llmkit.privacy.context import RunContext

    return RunContext.of(cfg.privacy.encryption_key_env, cfg.privacy.offline, environ, strict)
