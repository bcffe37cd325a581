"""Plan a pretrained model by its own shape: the ``model.*`` numbers from its config.json.

A config with ``model.from_pretrained`` trains the shape of that model, whatever the config's
own ``model.hidden_size`` etc. say, so ``llmkit plan`` reads the model's config.json (its local
directory, or the Hub cache: nothing is downloaded) and plans with those numbers. Every family
llmkit fine-tunes is planned with llama's block (attention q/k/v/o, gated MLP), which is theirs
(Mistral, Qwen 2/3, Gemma 2/3, Phi-3); GPT-2 with its own.
"""

from __future__ import annotations

from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.hub import cached_config


def shape_of(hf: dict[str, Any]) -> dict[str, Any]:
    """``model.*`` fields from a transformers config.json."""
    text = hf.get("text_config") if isinstance(hf.get("text_config"), dict) else hf  # Gemma 3's multimodal wrapper
    if hf.get("model_type") == "gpt2":
        fields = {"architecture": "gpt2", "hidden_size": hf["n_embd"], "num_hidden_layers": hf["n_layer"],
                  "num_attention_heads": hf["n_head"], "max_position_embeddings": hf["n_positions"],
                  "intermediate_size": hf.get("n_inner") or 4 * hf["n_embd"]}
    else:
        heads = text["num_attention_heads"]
        width = text["hidden_size"]
        head_dim = text.get("head_dim") or width // heads
        fields = {"architecture": "llama", "hidden_size": heads * head_dim if width % heads else width,
                  "num_hidden_layers": text["num_hidden_layers"], "num_attention_heads": heads,
                  "num_key_value_heads": text.get("num_key_value_heads") or heads,
                  "intermediate_size": text["intermediate_size"],
                  "max_position_embeddings": text.get("max_position_embeddings", 2048)}
    vocab = text.get("vocab_size") or hf.get("vocab_size")
    if vocab:
        fields["vocab_size"] = vocab
    fields["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    return fields


def with_pretrained_shape(cfg: RunConfig, note: Any = None) -> RunConfig:
    """``cfg`` with ``model.*`` taken from its pretrained model's config.json, where one is at hand."""
    ref = cfg.model.from_pretrained
    if not ref:
        return cfg
    hf = cached_config(ref)
    if hf is None:
        if note is not None:
            note(f"plan: {ref}'s config.json is neither a local file nor in the Hugging Face cache; planning "
                 "with the config's model.* numbers (`llmkit train` downloads it; or give a local directory)")
        return cfg
    try:
        fields = shape_of(hf)
    except (KeyError, TypeError):
        if note is not None:
            note(f"plan: {ref}'s config.json has no shape llmkit reads; planning with the config's model.* numbers")
        return cfg
    model = cfg.model.model_copy(update=fields)
    return cfg.model_copy(update={"model": model})
