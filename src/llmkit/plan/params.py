"""Exact parameter counts of the architectures llmkit builds, from the config alone.

These must equal ``sum(p.numel() for p in model.parameters())`` of the Hugging Face model that
`llmkit.model.build` instantiates (unique parameters: a tied head is counted once).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config.schema import ModelConfig, RunConfig


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


@dataclass(frozen=True)
class ParamCount:
    """Parameters by part; ``total`` counts a tied head once."""

    embedding: int
    positional: int
    per_layer: int
    layers: int
    final_norm: int
    head: int

    @property
    def total(self) -> int:
        return self.embedding + self.positional + self.per_layer * self.layers + self.final_norm + self.head

    @property
    def non_embedding(self) -> int:
        """Parameters that do matmul work per token (the "N" in 6·N·T)."""
        return self.per_layer * self.layers + self.final_norm


def count_parameters(model: ModelConfig, vocab: int) -> ParamCount:
    """Exact parameter count of ``model`` with a ``vocab``-row embedding."""
    h, n = model.hidden_size, model.num_hidden_layers
    inter = intermediate_size(model)
    head = 0 if model.tie_word_embeddings else vocab * h
    if model.architecture == "gpt2":
        # c_attn (h -> 3h) and c_proj with biases; MLP h -> inter -> h with biases; two LayerNorms
        attn = h * 3 * h + 3 * h + h * h + h
        mlp = h * inter + inter + inter * h + h
        per_layer = attn + mlp + 2 * (2 * h)
        return ParamCount(vocab * h, model.max_position_embeddings * h, per_layer, n, 2 * h, head)
    heads = model.num_attention_heads
    kv = model.num_key_value_heads or heads
    head_dim = h // heads
    attn = h * h + 2 * h * kv * head_dim + h * h  # q, k, v, o; no biases
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attn + mlp + 2 * h  # two RMSNorm weights
    return ParamCount(vocab * h, 0, per_layer, n, h, head)
