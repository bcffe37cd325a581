"""Training memory of a config, per device, as llmkit's loop allocates it (pure arithmetic).

The loop keeps fp32 weights and runs the forward under autocast, so with bf16/fp16 the
half-precision copies of the weights that autocast caches during the forward are counted too.
Activations are what the backward pass keeps per token and layer (PyTorch SDPA attention: no
(seq x seq) matrix is stored), plus the logits and the loss, which are large for big
vocabularies. Sharding (FSDP) divides weights, gradients and optimizer state over the devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config.schema import RunConfig
from llmkit.plan.params import count_parameters, intermediate_size, vocab_size

GB = 1e9
ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per device, by what holds them."""

    weights_bytes: int
    autocast_copies_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    logits_bytes: int
    overhead_bytes: int

    @property
    def peak_bytes(self) -> int:
        return (self.weights_bytes + self.autocast_copies_bytes + self.gradients_bytes + self.optimizer_bytes
                + self.activations_bytes + self.logits_bytes + self.overhead_bytes)

    @property
    def above_weights_bytes(self) -> int:
        """Everything training adds on top of the loaded weights (what a CPU RSS delta measures)."""
        return self.peak_bytes - self.weights_bytes - self.overhead_bytes


def activation_element_bytes(precision: str, device_kind: str) -> int:
    """Bytes per saved activation element.

    On GPUs autocast keeps half-precision activations. On CPUs, measured with
    benchmarks/plan_accuracy.py, the saved activations cost as much as fp32 ones even under bf16
    autocast (the per-token-layer growth matches the fp32 count to within a few percent).
    """
    return 4 if device_kind == "cpu" else ELEMENT[precision]


def activation_bytes_per_token_layer(cfg: RunConfig, precision: str, device_kind: str = "gpu") -> int:
    """Bytes the backward pass keeps per token for one transformer block."""
    m = cfg.model
    e = activation_element_bytes(precision, device_kind)
    h, inter = m.hidden_size, intermediate_size(m)
    kv_width = h * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    # fp32 residual stream and the two norms' fp32 internals: 4 tensors of h floats
    norms_and_residual = 16 * h
    if m.architecture == "gpt2":
        # qkv output, attention output, the two norm outputs, MLP input/GELU input/GELU output
        return norms_and_residual + e * (3 * h + h + 2 * h) + e * 2 * inter
    # q (pre/post rotary), attention output, the two norm outputs; k, v, k rotated; gate, up, silu, product
    base = norms_and_residual + e * (5 * h) + e * 3 * kv_width + e * 4 * inter
    if device_kind == "cpu" and precision == "fp32":
        # measured: without autocast the backward's transient fp32 gradients of the block (freed
        # chunks the allocator keeps) add ~6 hidden-width fp32 tensors per token and layer to the peak
        base += 24 * h
    # LoRA keeps about what the full model keeps: the frozen projections' inputs are saved for the
    # adapters instead of for weight gradients (counted with saved-tensor hooks: within 5%)
    return base


def training_memory(cfg: RunConfig, micro_batch: int, precision: str = "bf16", num_devices: int = 1,
                    sharded: bool = False, gradient_checkpointing: bool | None = None,
                    overhead_bytes: int = 0, device_kind: str = "gpu", optimizer_bits: int = 32) -> MemoryBreakdown:
    """Peak training memory per device for ``micro_batch`` sequences of the config's length.

    ``optimizer_bits`` 8: AdamW with 8-bit moments (bitsandbytes' AdamW8bit: 1 byte per moment plus
    block-wise scales, ~2 bytes per parameter); llmkit's own loop uses 32-bit AdamW.
    """
    m = cfg.model
    counts = count_parameters(m, vocab_size(cfg))
    total = counts.total
    lora = m.lora.enabled
    trainable = max(1, total // 100) if lora else total  # adapters: ~1% with the default targets, r <= 16
    shard = num_devices if sharded else 1
    base_bytes = (m.lora.base_bits // 8) if lora else 4
    weights = total * base_bytes // shard + (4 * trainable if lora else 0)
    casts = 0 if precision == "fp32" or (lora and m.lora.base_bits <= 16) else ELEMENT[precision] * total // shard
    grads = 4 * trainable // shard
    optimizer = (8 if optimizer_bits == 32 else 2) * trainable // shard
    tokens = micro_batch * cfg.train.sequence_length_tokens
    per_layer = activation_bytes_per_token_layer(cfg, precision, device_kind)
    ckpt = cfg.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if ckpt:  # keep each block's input; recompute one block at a time in the backward pass
        acts = tokens * (4 * m.hidden_size * m.num_hidden_layers + per_layer)
    else:
        acts = tokens * per_layer * m.num_hidden_layers
    vocab = vocab_size(cfg)
    # logits in the compute dtype, their fp32 copy (none in fp32), the log-softmax kept for
    # backward, and the logits' fp32 gradient, which exists while the backward pass is at the head
    # (fp32 on a CPU: the log-softmax's input and output gradients are both alive at its backward,
    # and nothing is freed early as the half-precision copy is under autocast: 16 bytes measured)
    per_logit = ELEMENT[precision] + 12 if precision != "fp32" else (16 if device_kind == "cpu" else 12)
    logits = tokens * vocab * per_logit
    return MemoryBreakdown(weights, casts, grads, optimizer, acts, logits, overhead_bytes)


def kv_cache_bytes(cfg: RunConfig, tokens: int, element_bytes: int = 2) -> int:
    """KV cache for ``tokens`` positions of one sequence (serving)."""
    m = cfg.model
    kv_width = m.hidden_size * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    return 2 * m.num_hidden_layers * kv_width * tokens * element_bytes
