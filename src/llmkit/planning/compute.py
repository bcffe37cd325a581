"""Step time from the work a training step does, component by component (pure; rates are inputs).

A step is, per micro-batch:

- the GEMMs: each forward matrix multiplication and its two backward ones (input and weight
  gradients, the same FLOPs; LoRA skips the frozen weights' gradients, checkpointing repeats the
  forward), summed per shape at the rate the device reaches *for that shape* (small matrices run
  far below peak);
- attention: causal scaled-dot-product attention, forward and backward, per (batch, heads, seq,
  head dim) shape; fused kernels run at their own rate, unlike a GEMM of the same FLOPs;
- the loss: log-softmax and its gradient over (tokens x vocab) fp32 logits, chunk by chunk as
  ``llmkit.objectives.head_loss`` does it (its two matmuls are GEMMs above);
- everything else (norms, rotary, activations, residual adds, autocast casts, their gradients):
  memory-bound, counted as the bytes those operations read and write per token and layer
  (``elementwise_bytes``, counted op by op from the Hugging Face llama and gpt2 blocks under
  autocast) over the device's effective bandwidth for such small operations;
- the optimizer: AdamW reads and writes each trainable parameter's weight, gradient and two
  moments, plus clipping (``OPTIMIZER_BYTES_PER_PARAM``; the fused kernel one pass,
  ``FUSED_OPTIMIZER_BYTES_PER_PARAM``), at the same bandwidth; with bf16 weights and fp32
  masters also the gradients' and weights' copies between them.

``train.compile: true`` (one CPU process) shrinks the elementwise work (inductor fuses those
chains: ``COMPILED_ELEMENTWISE``, measured); ``auto`` is planned as eager, as it may stay eager.

The rates come from a ``Rates`` object, measured on this machine's CPU
(``llmkit.planning.measure.measure_cpu_rates``: micro-benchmarks of exactly these primitives, seconds).
`llmkit plan --this-machine` times the run this way; GPU candidates use the MFU assumptions of
``llmkit.planning.recommend`` instead, as nothing can be measured on a GPU that is not there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmkit.config.schema import RunConfig
from llmkit.config.derived import intermediate_size, train_precision, vocab_size
from llmkit.planning.memory import chunk_tokens
from llmkit.planning.params import count_parameters, trainable_parameters

OPTIMIZER_BYTES_PER_PARAM = 62  # AdamW foreach + grad clipping: counted bytes per trainable parameter
# The fused AdamW kernel (one pass over weight, gradient and moments) plus clipping: its measured time
# on the 2-core AVX-512 CPU (benchmarks/optimizer_step.py; a profile of the reference step) in
# bytes-per-parameter of the elementwise bandwidth below
FUSED_OPTIMIZER_BYTES_PER_PARAM = 12
MASTER_COPY_BYTES_PER_PARAM = 12  # bf16 weights: bf16 grad -> fp32 (2 + 4), fp32 master -> bf16 (4 + 2)
# compiled / eager elementwise time (train.compile: true, CPU): measured with benchmarks/plan_accuracy.py
COMPILED_ELEMENTWISE = {"fp32": 1.0, "bf16": 0.6}  # fp32: no measurable gain here
# Non-GEMM operations on activation-sized tensors reach only a fraction of streaming-copy bandwidth:
# strided views (rotary, heads), reductions, broadcasts and the autograd engine's per-op cost. Measured
# on the reference config (llama 4x192, micro-batch 8, bf16) on a 2-core AVX-512 CPU: 0.45 of memcpy
# bandwidth; a GPU's elementwise kernels reach ~0.7 of HBM bandwidth (assumption).
ELEMENTWISE_EFFICIENCY = {"cpu": 0.45, "gpu": 0.7}


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


@dataclass(frozen=True)
class Attention:
    """Causal attention of ``batch`` sequences, ``heads`` query heads, ``seq`` positions, per layer."""

    batch: int
    heads: int
    seq: int
    head_dim: int



@dataclass(frozen=True)
class Rates:
    """How fast a device does each kind of work.

    gemm: FLOP/s for a GEMM shape. attention_seconds: forward + backward of one layer's attention.
    cross_entropy_seconds: forward + backward of the loss for (tokens, vocab) logits. bandwidth_bytes_s:
    streaming-copy bandwidth. device_kind: ``cpu`` or ``gpu`` (selects the elementwise efficiency).
    """

    gemm: Callable[[Gemm], float]
    attention_seconds: Callable[[Attention], float]
    cross_entropy_seconds: Callable[[int, int], float]
    bandwidth_bytes_s: float
    device_kind: str = "gpu"
    # FLOP/s of one fixed product, timed again after each shape measured: how steady the device was
    probes: list[float] = field(default_factory=list)


def forward_gemms(cfg: RunConfig, micro_batch: int) -> list[Gemm]:
    """The forward pass's projections and LM head for one micro-batch (attention is separate)."""
    m = cfg.model
    tokens = micro_batch * cfg.train.sequence_length_tokens
    h, layers = m.hidden_size, m.num_hidden_layers
    heads = m.num_attention_heads
    inter = intermediate_size(m)
    if m.architecture == "gpt2":
        per_layer = [Gemm(tokens, h, 3 * h, 1), Gemm(tokens, h, h, 1), Gemm(tokens, h, inter, 1), Gemm(tokens, inter, h, 1)]
    else:
        kv = h * (m.num_key_value_heads or heads) // heads
        per_layer = [Gemm(tokens, h, h, 2), Gemm(tokens, h, kv, 2), Gemm(tokens, h, inter, 2), Gemm(tokens, inter, h, 1)]
    gemms = [Gemm(g.m, g.k, g.n, g.count * layers) for g in per_layer]
    vocab = vocab_size(cfg)
    if cfg.privacy.dp.enabled:  # the whole micro-batch's logits at once
        return gemms + [Gemm(tokens, h, vocab, 1)]
    chunk = min(tokens, chunk_tokens(vocab))  # the chunked loss: the head chunk by chunk
    return gemms + [Gemm(chunk, h, vocab, -(-tokens // chunk))]


def attention_shape(cfg: RunConfig, micro_batch: int) -> Attention:
    m = cfg.model
    return Attention(micro_batch, m.num_attention_heads, cfg.train.sequence_length_tokens,
                     m.hidden_size // m.num_attention_heads)


def elementwise_bytes(cfg: RunConfig, micro_batch: int, precision: str) -> int:
    """Bytes the non-GEMM, non-attention, non-loss operations read and write in one step.

    Counted op by op (every tensor each dispatched operation reads and writes) on the Hugging
    Face blocks under autocast, then written per token and layer in terms of the widths: a hidden
    unit costs ~500 bytes (fp32 residual stream and RMSNorm internals, rotary on q, casts, their
    gradients), an MLP unit ~32, a key/value unit ~96 (rotary on k, GQA repeats). GPT-2's block
    (LayerNorm, GELU, no rotary) ~400 per hidden unit. LoRA adds ~160 per hidden unit: each adapted
    projection casts and reads its input again (~320 counted, but the projections that share an
    input read it from cache); checkpointing repeats the forward's share (~30%).
    Outside the blocks: ~250 bytes per token and hidden unit (embedding, final norm) and, with
    autocast and the whole micro-batch's logits (privacy.dp), the logits' cast to fp32 and back
    (12 bytes per logit; the chunked loss's casts are timed in the loss). With bf16 weights the
    activations are bf16: the blocks' bytes are about 0.85x (measured; the norms stay fp32).
    """
    m = cfg.model
    h, inter = m.hidden_size, intermediate_size(m)
    kv = h * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    tokens = micro_batch * cfg.train.sequence_length_tokens
    per_token_layer = 400 * h + 32 * inter if m.architecture == "gpt2" else 500 * h + 32 * inter + 96 * kv
    if m.lora.enabled:
        per_token_layer += 160 * h
    if cfg.train.gradient_checkpointing:
        per_token_layer = int(per_token_layer * 1.3)
    if train_precision(cfg, "cpu", compute=precision).bf16_weights:
        per_token_layer = int(per_token_layer * 0.85)
    full_logits = cfg.privacy.dp.enabled
    outside = 250 * h + (12 * vocab_size(cfg) if precision != "fp32" and full_logits else 0)
    return tokens * (per_token_layer * m.num_hidden_layers + outside)


def flops_per_token(matmul_params: int, trainable_matmul_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Training FLOPs per token (PaLM appendix B): 2·N forward and 2·N for the input gradients over
    the N multiplied weights (embedding lookups excluded, the LM head included), 2·N_t for the
    weight gradients of the N_t trainable ones (6·N when all train; LoRA: 4·N + 2·adapters), plus
    12·L·H·T for the attention scores. The one formula: the loop's MFU and plan's time use it."""
    return 4 * matmul_params + 2 * trainable_matmul_params + 12 * layers * hidden * seq_len


def config_flops_per_token(cfg: RunConfig) -> float:
    """``flops_per_token`` of the model the config builds."""
    m = cfg.model
    matmul = count_parameters(m, vocab_size(cfg)).matmul
    if m.lora.enabled:
        adapters = trainable_parameters(cfg)
        matmul, trainable = matmul + adapters, adapters
    else:
        trainable = matmul
    return flops_per_token(matmul, trainable, m.num_hidden_layers, m.hidden_size, cfg.train.sequence_length_tokens)


def preference_factor(cfg: RunConfig) -> float:
    """Compute of a preference run's example over one sequence's training: 2 sequences (a pair's
    answers; KTO's answer and its mismatched KL row, planned alike), and where the reference takes a
    forward pass per step (a frozen copy, or the adapters disabled), a third more (a forward is a
    third of forward + backward). 1 for other tasks."""
    from llmkit.planning.memory import reference_kind

    if cfg.train.task == "rl":
        return rl_factor(cfg)
    if cfg.train.task != "preference":
        return 1.0
    return 2 * (4 / 3 if reference_kind(cfg) in ("copy", "adapters_off") else 1.0)


def rl_factor(cfg: RunConfig) -> float:
    """Compute of an RL run's answer over one sequence's training, in FLOPs: sampling it is a forward
    pass (a third of forward + backward) once per ``steps_per_generation`` steps, and so is the old
    policy's scoring when rollouts are reused; the KL reference adds a forward a step. Sampling is
    one token at a time, bound by memory bandwidth rather than FLOPs: measure it
    (benchmarks/rl_cost.py prints the share of a step spent sampling)."""
    from llmkit.planning.memory import reference_kind

    rl = cfg.train.rl
    per_step = 1.0 + (1 / 3 if reference_kind(cfg) in ("copy", "adapters_off") else 0.0)
    per_generation = 1 / 3 + (1 / 3 if rl.steps_per_generation > 1 else 0.0)
    return per_step + per_generation / rl.steps_per_generation


def step_breakdown(cfg: RunConfig, micro_batch: int, rates: Rates, precision: str = "bf16",
                   accumulation: int = 1) -> dict[str, float]:
    """Seconds per optimizer step, by component (see the module docstring). Preference tuning: a
    micro-batch of pairs is 2 rows each, plus the reference's forward (``preference_factor``)."""
    if cfg.train.task == "preference":
        plain = cfg.model_copy(update={"train": cfg.train.model_copy(update={"task": "sft"})})
        parts = step_breakdown(plain, 2 * micro_batch, rates, precision, accumulation)
        extra = preference_factor(cfg) / 2 - 1
        if extra:
            parts["reference"] = extra * (parts["gemm"] + parts["attention"] + parts["elementwise"])
        return parts
    if cfg.train.task == "rl":
        plain = cfg.model_copy(update={"train": cfg.train.model_copy(update={"task": "sft"})})
        parts = step_breakdown(plain, micro_batch, rates, precision, accumulation)
        parts["sampling"] = (rl_factor(cfg) - 1) * (parts["gemm"] + parts["attention"] + parts["elementwise"])
        return parts
    passes = 4 if cfg.train.gradient_checkpointing else 3
    lora = cfg.model.lora.enabled
    vocab = vocab_size(cfg)
    gemm = 0.0
    for g in forward_gemms(cfg, micro_batch):
        # LoRA: frozen projections need no weight gradient; the head is computed as usual
        n_pass = passes - 1 if lora and g.n != vocab else passes
        gemm += n_pass * g.flops / rates.gemm(g)
    attention = rates.attention_seconds(attention_shape(cfg, micro_batch)) * cfg.model.num_hidden_layers
    if cfg.train.gradient_checkpointing:
        attention *= 4 / 3
    tokens = micro_batch * cfg.train.sequence_length_tokens
    loss = rates.cross_entropy_seconds(tokens, vocab)
    bandwidth = rates.bandwidth_bytes_s * ELEMENTWISE_EFFICIENCY.get(rates.device_kind, 0.7)
    elementwise = elementwise_bytes(cfg, micro_batch, precision) / bandwidth
    if cfg.train.compile is True and rates.device_kind == "cpu":
        elementwise *= COMPILED_ELEMENTWISE["fp32" if precision == "fp32" else "bf16"]
    keep_bf16 = train_precision(cfg, rates.device_kind, compute=precision).bf16_weights
    per_param = FUSED_OPTIMIZER_BYTES_PER_PARAM + (MASTER_COPY_BYTES_PER_PARAM if keep_bf16 else 0)
    optimizer = per_param * trainable_parameters(cfg) / bandwidth
    return {"gemm": accumulation * gemm, "attention": accumulation * attention, "loss": accumulation * loss,
            "elementwise": accumulation * elementwise, "optimizer": optimizer}


def step_seconds(cfg: RunConfig, micro_batch: int, rates: Rates, precision: str = "bf16", accumulation: int = 1) -> float:
    """Seconds per optimizer step (the sum of ``step_breakdown``)."""
    return sum(step_breakdown(cfg, micro_batch, rates, precision, accumulation).values())


def data_parallel_step_seconds(step_one_s: float, ranks: int, comm_s: float, shares_cores: bool = False) -> float:
    """Seconds per optimizer step when ``ranks`` data-parallel processes do what one did in
    ``step_one_s``: the compute splits over the ranks (unless they share one CPU's cores, as
    processes on one CPU do: then it does not shrink), plus ``comm_s`` of collectives per step,
    not overlapped with compute (gloo; NCCL overlaps part of it, so GPUs do at least this well).
    ``benchmarks/ddp_scaling.py`` measures both terms and compares."""
    compute = step_one_s if shares_cores else step_one_s / ranks
    return compute + comm_s


PROBE_SIZE = 512  # the steadiness probe: one (512 x 512) x (512 x 512) product, best of a few


def steadiness(probes: list[float], what: str) -> str | None:
    """A line saying how much ``probes`` (FLOP/s of the same product, taken while measuring) varied,
    when their range is over a tenth of their median: the plan's times are that uncertain."""
    import statistics

    if len(probes) < 2:
        return None
    low, high, mid = min(probes), max(probes), statistics.median(probes)
    if (high - low) / mid <= 0.10:
        return None
    return (f"this machine's speed varied while it was measured: {low / 1e9:,.0f}-{high / 1e9:,.0f} GFLOP/s over "
            f"{len(probes)} probes ({what}); its times are as uncertain (other work on the machine, or its clock)")
