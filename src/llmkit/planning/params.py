"""Exact parameter counts of the architectures llmkit builds, from the config alone.

These must equal ``sum(p.numel() for p in model.parameters())`` of the Hugging Face model that
`llmkit.model.build` instantiates (unique parameters: a tied head is counted once).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config.derived import intermediate_size, linear_shapes, lora_parameters, vocab_size
from llmkit.config.schema import ModelConfig, RunConfig


@dataclass(frozen=True)
class ParamCount:
    """Parameters by part; ``total`` counts a tied head once."""

    embedding: int
    positional: int
    per_layer: int
    layers: int
    final_norm: int
    head: int
    per_layer_matrices: int
    """The weight-matrix share of ``per_layer`` (the projections; no norms or biases)."""

    @property
    def total(self) -> int:
        return self.embedding + self.positional + self.per_layer * self.layers + self.final_norm + self.head

    @property
    def non_embedding(self) -> int:
        """Parameters outside the embeddings and the head."""
        return self.per_layer * self.layers + self.final_norm

    @property
    def matmul(self) -> int:
        """Weights multiplied per token (the "N" of 6·N·T FLOPs): the blocks and the LM head, whose
        (vocab x hidden) matmul runs whether or not it is tied to the input embedding. The embedding
        lookups do no matmul work."""
        return self.per_layer_matrices * self.layers + self.embedding


def count_parameters(model: ModelConfig, vocab: int) -> ParamCount:
    """Exact parameter count of ``model`` with a ``vocab``-row embedding."""
    h, n = model.hidden_size, model.num_hidden_layers
    inter = intermediate_size(model)
    head = 0 if model.tie_word_embeddings else vocab * h
    matrices = sum(i * o for shapes in linear_shapes(model).values() for i, o in shapes)
    if model.architecture == "gpt2":
        # c_attn (h -> 3h) and c_proj with biases; MLP h -> inter -> h with biases; two LayerNorms
        attn = h * 3 * h + 3 * h + h * h + h
        mlp = h * inter + inter + inter * h + h
        per_layer = attn + mlp + 2 * (2 * h)
        return ParamCount(vocab * h, model.max_position_embeddings * h, per_layer, n, 2 * h, head, matrices)
    heads = model.num_attention_heads
    kv = model.num_key_value_heads or heads
    head_dim = h // heads
    attn = h * h + 2 * h * kv * head_dim + h * h  # q, k, v, o; no biases
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attn + mlp + 2 * h  # two RMSNorm weights
    return ParamCount(vocab * h, 0, per_layer, n, h, head, matrices)


def trainable_parameters(config: RunConfig) -> int:
    """Parameters the loop trains: all of them, or with LoRA the adapters (exact, from ``lora.r`` and
    the adapted projections) plus, for classification, the new class head peft trains alongside."""
    m = config.model
    if not m.lora.enabled:
        return count_parameters(m, vocab_size(config)).total
    head = m.hidden_size * (m.num_labels or 2) if config.train.task == "classify" else 0
    return lora_parameters(m) + head
