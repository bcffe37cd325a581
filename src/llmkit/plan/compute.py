"""Step time from the model's matrix multiplications and its memory traffic (pure; rates are inputs).

A training step is the forward pass's GEMMs and their two backward GEMMs each (input and weight
gradients, the same FLOPs), plus attention. Small matrices run far below a device's peak, so the
GEMM time is summed per shape at the rate measured (or assumed) for that shape. Everything else
(norms, activations, softmax, casts) is bound by memory bandwidth: it is modelled as the
activations and logits being read or written TRAFFIC_PASSES times over the measured bandwidth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmkit.config.schema import RunConfig
from llmkit.plan.params import intermediate_size, vocab_size

TRAFFIC_PASSES = 6  # reads + writes of each saved activation and logit per step (forward, backward, casts)


@dataclass(frozen=True)
class Gemm:
    """A batch of ``batch`` (m x k) @ (k x n) products, done ``count`` times per forward pass."""

    m: int
    k: int
    n: int
    count: int
    batch: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.count * self.batch


def forward_gemms(cfg: RunConfig, micro_batch: int) -> list[Gemm]:
    """The forward pass's matrix multiplications for one micro-batch."""
    m = cfg.model
    tokens = micro_batch * cfg.train.sequence_length_tokens
    seq, h, layers = cfg.train.sequence_length_tokens, m.hidden_size, m.num_hidden_layers
    heads = m.num_attention_heads
    head_dim = h // heads
    inter = intermediate_size(m)
    if m.architecture == "gpt2":
        per_layer = [Gemm(tokens, h, 3 * h, 1), Gemm(tokens, h, h, 1), Gemm(tokens, h, inter, 1), Gemm(tokens, inter, h, 1)]
    else:
        kv = h * (m.num_key_value_heads or heads) // heads
        per_layer = [Gemm(tokens, h, h, 2), Gemm(tokens, h, kv, 2), Gemm(tokens, h, inter, 2), Gemm(tokens, inter, h, 1)]
    # causal attention, per layer: scores and weighted values for every (sequence, head), half computed
    attention = Gemm(seq, head_dim, seq // 2, 2 * layers, batch=heads * micro_batch)
    gemms = [Gemm(g.m, g.k, g.n, g.count * layers) for g in per_layer]
    return gemms + [attention, Gemm(tokens, h, vocab_size(cfg), 1)]


def step_seconds(cfg: RunConfig, micro_batch: int, rate: Callable[[Gemm], float], bandwidth_bytes_s: float,
                 precision: str = "bf16", device_kind: str = "gpu", accumulation: int = 1) -> float:
    """Seconds per optimizer step: 3 x each forward GEMM at ``rate(gemm)`` FLOP/s, plus the memory
    traffic of the activations and logits at ``bandwidth_bytes_s``.

    Gradient checkpointing repeats the forward pass once more (4 instead of 3).
    """
    from llmkit.plan.memory import training_memory

    mem = training_memory(cfg, micro_batch, precision, gradient_checkpointing=False, device_kind=device_kind)
    passes = 4 if cfg.train.gradient_checkpointing else 3
    lora = cfg.model.lora.enabled
    total = 0.0
    for g in forward_gemms(cfg, micro_batch):
        # LoRA: frozen weights need no weight gradient (2 passes), the head and attention as usual
        n_pass = passes - 1 if lora and g.batch == 1 and g.n != vocab_size(cfg) else passes
        total += n_pass * g.flops / rate(g)
    traffic = TRAFFIC_PASSES * (mem.activations_bytes * passes / 3 + mem.logits_bytes) / bandwidth_bytes_s
    return accumulation * (total + traffic)
