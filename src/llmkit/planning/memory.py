"""Training memory of a config, per device, as llmkit's loop allocates it (pure arithmetic).

The loop keeps fp32 weights and runs the forward under autocast, so with bf16/fp16 the
half-precision copies of the weights that autocast caches during the forward are counted too;
where the precision policy keeps bf16 weights with fp32 masters (``llmkit.device.bf16_weights``)
the weights are bf16 plus an fp32 master per trainable parameter, and there are no copies.
Activations are what the backward pass keeps per token and layer (PyTorch SDPA attention: no
(seq x seq) matrix is stored), plus the loss over the vocabulary: one chunk of tokens' logits
and the head's gradients when the loop chunks it (``llmkit.objectives.head_loss``: everywhere but FSDP
and privacy.dp), else the whole micro-batch's logits, large for big vocabularies. Sharding
(FSDP) divides weights, gradients and optimizer state over the devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.config.derived import intermediate_size, linear_shapes, train_precision, vocab_size
from llmkit.planning.params import count_parameters, trainable_parameters

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
    reference_bytes: int = 0
    """Preference tuning and RL: a frozen reference copy of the weights, and its forward's logits."""
    rollout_bytes: int = 0
    """RL: the KV cache and sampling logits of one generation's answers, all decoded together. It
    exists between training passes, so the peak counts the larger of it and activations + logits."""

    @property
    def peak_bytes(self) -> int:
        return (self.weights_bytes + self.autocast_copies_bytes + self.gradients_bytes + self.optimizer_bytes
                + max(self.activations_bytes + self.logits_bytes, self.rollout_bytes) + self.overhead_bytes
                + self.reference_bytes)

    def parts(self) -> dict[str, int]:
        """Bytes by part, summing to the peak: the rollouts count only what they need beyond the
        activations and logits, whose memory they reuse."""
        from dataclasses import asdict

        out = asdict(self)
        out["rollout_bytes"] = max(0, self.rollout_bytes - self.activations_bytes - self.logits_bytes)
        return out

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


def activation_bytes_per_token_layer(cfg: RunConfig, precision: str, device_kind: str = "gpu",
                                     keep_bf16: bool = False) -> int:
    """Bytes the backward pass keeps per token for one transformer block. ``keep_bf16``: the
    model's own weights are bf16 (``llmkit.training.master``), so are its activations. A LoRA
    run on a base below 32 bits (``model.lora.base_bits``) computes in bf16 between bf16 parts on
    a GPU; on a CPU it keeps as much as an fp32 base under autocast (measured with
    benchmarks/plan_accuracy.py once the memory loading the base freed was given back to the OS
    before the baseline: ~1,110 MB above the weights for the ~150 M base at 16 and at 4 bits, where
    bf16-sized activations planned 764)."""
    m = cfg.model
    bf16_base = m.lora.enabled and m.lora.base_bits < 32 and device_kind != "cpu"
    e = 2 if keep_bf16 or bf16_base else activation_element_bytes(precision, device_kind)
    h, inter = m.hidden_size, intermediate_size(m)
    kv_width = h * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    # fp32 residual stream and the two norms' fp32 internals: 4 tensors of h floats; with bf16
    # weights the residual stream is bf16 but the norms still compute in fp32, and the backward's
    # transient fp32 pieces the allocator keeps add about as much again (measured: 30 h in all)
    norms_and_residual = 30 * h if keep_bf16 and device_kind == "cpu" else 16 * h
    if m.architecture == "gpt2":
        # qkv output, attention output, the two norm outputs, MLP input/GELU input/GELU output; in
        # bf16 weights the tanh-GELU's own intermediates are kept too (measured: ~3 more of width inter)
        return norms_and_residual + e * (3 * h + h + 2 * h) + e * (5 if keep_bf16 else 2) * inter
    # q (pre/post rotary), attention output, the two norm outputs; k, v, k rotated; gate, up, silu, product
    base = norms_and_residual + e * (5 * h) + e * 3 * kv_width + e * 4 * inter
    if device_kind == "cpu" and precision == "fp32" and not keep_bf16:
        # measured: without autocast the backward's transient fp32 gradients of the block (freed
        # chunks the allocator keeps) add ~6 hidden-width fp32 tensors per token and layer to the peak
        base += 24 * h
    # LoRA keeps about what the full model keeps: the frozen projections' inputs are saved for the
    # adapters instead of for weight gradients (counted with saved-tensor hooks: within 5%)
    return base


def reference_kind(cfg: RunConfig) -> str:
    """How a preference or RL run has its reference model, as planned: ``none`` (simpo, orpo, RL
    without kl_beta; and every other task), ``precomputed``, ``adapters_off`` (LoRA) or ``copy``
    (full fine-tuning; under ``precompute_reference: auto`` training switches to precomputed when the
    copy does not fit)."""
    if cfg.train.task == "rl":
        return "none" if not cfg.train.rl.kl_beta else ("adapters_off" if cfg.model.lora.enabled else "copy")
    p = cfg.train.preference
    if cfg.train.task != "preference" or p.loss in ("simpo", "orpo"):
        return "none"
    if p.precompute_reference is True:
        return "precomputed"
    return "adapters_off" if cfg.model.lora.enabled else "copy"


def training_memory(cfg: RunConfig, micro_batch: int, precision: str = "bf16", num_devices: int = 1,
                    sharded: bool = False, gradient_checkpointing: bool | None = None,
                    overhead_bytes: int = 0, device_kind: str = "gpu", reference: str | None = None) -> MemoryBreakdown:
    """Peak training memory per device for ``micro_batch`` sequences of the config's length.

    ``train.optimizer`` adamw_8bit / paged_adamw_8bit: 8-bit moments (bitsandbytes' AdamW8bit: 1
    byte per moment plus block-wise scales, ~2 bytes per parameter). A LoRA base at
    ``model.lora.base_bits`` below 32: ``base_weight_bytes``. Preference tuning: a micro-batch of
    pairs is two sequences each, and the reference (``reference``, default ``reference_kind``): a
    copy's weights, its forward's logits.
    """
    if cfg.train.task == "preference":
        return _preference_memory(cfg, micro_batch, precision, num_devices, sharded, gradient_checkpointing,
                                  overhead_bytes, device_kind, reference or reference_kind(cfg))
    if cfg.train.task == "rl":
        return _rl_memory(cfg, micro_batch, precision, num_devices, gradient_checkpointing, overhead_bytes,
                          device_kind)
    m = cfg.model
    total = count_parameters(m, vocab_size(cfg)).total
    lora = m.lora.enabled
    trainable = trainable_parameters(cfg)
    shard = num_devices if sharded else 1
    private = cfg.privacy.dp.enabled
    keep_bf16 = train_precision(cfg, device_kind, num_devices, compute=precision).bf16_weights
    bits = m.lora.base_bits if lora else 32
    if keep_bf16:  # bf16 weights and fp32 masters; AdamW on the masters; no autocast copies
        weights, casts = (2 * total + 4 * trainable) // shard, 0
    elif bits < 32:  # a bf16 or quantized frozen base (bf16 elsewhere), fp32 adapters; no autocast copies
        weights, casts = base_weight_bytes(cfg, bits) + 4 * trainable, 0
    else:  # fp32 weights (and a fp32 LoRA base), fp32 adapters
        weights = (4 * total + (4 * trainable if lora else 0)) // shard
        casts = 0 if precision == "fp32" else ELEMENT[precision] * total // shard
    grads = 4 * trainable // shard
    optimizer = (8 if cfg.train.optimizer == "adamw" else 2) * trainable // shard
    tokens = micro_batch * cfg.train.sequence_length_tokens
    per_layer = activation_bytes_per_token_layer(cfg, precision, device_kind, keep_bf16)
    ckpt = cfg.train.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if ckpt:  # keep each block's input; recompute one block at a time in the backward pass
        acts = tokens * (4 * m.hidden_size * m.num_hidden_layers + per_layer)
    else:
        acts = tokens * per_layer * m.num_hidden_layers
    if cfg.train.compile is True and device_kind == "cpu" and num_devices == 1:
        # inductor fuses elementwise chains and saves fewer tensors for the backward (measured with
        # benchmarks/plan_accuracy.py: 0.52x with bf16 weights, 0.70x in fp32; GPUs and `auto`, which
        # may stay eager, are planned as eager)
        acts = int(acts * (0.55 if keep_bf16 else 0.7))
    vocab = vocab_size(cfg)
    if not sharded and not private:
        logits = chunked_loss_bytes(tokens, vocab, m.hidden_size, precision)
    else:
        # logits in the compute dtype, their fp32 copy (none in fp32), the log-softmax kept for
        # backward, and the logits' fp32 gradient, which exists while the backward pass is at the head
        # (fp32 on a CPU: the log-softmax's input and output gradients are both alive at its backward,
        # and nothing is freed early as the half-precision copy is under autocast: 16 bytes measured)
        per_logit = ELEMENT[precision] + 12 if precision != "fp32" else (16 if device_kind == "cpu" else 12)
        logits = tokens * vocab * per_logit
    return MemoryBreakdown(weights, casts, grads, optimizer, acts, logits, overhead_bytes)


def _preference_memory(cfg: RunConfig, pairs: int, precision: str, num_devices: int, sharded: bool,
                       checkpointing: bool | None, overhead: int, device_kind: str, reference: str) -> MemoryBreakdown:
    """``training_memory`` of a preference run: 2 rows a pair, unchunked logits, the reference."""
    from dataclasses import replace

    rows = 2 * pairs
    base = training_memory(cfg.model_copy(update={"train": cfg.train.model_copy(update={"task": "sft"})}), rows,
                           precision, num_devices, sharded, checkpointing, overhead, device_kind)
    vocab, tokens = vocab_size(cfg), rows * cfg.train.sequence_length_tokens
    # per-token log-probabilities through the head in chunks, as the SFT loss (sharded or private
    # runs: whole logits, as SFT's); the backward recomputes a chunk: one more chunk's fp32 logits
    logits = base.logits_bytes + (chunk_tokens(vocab) * vocab * 4 if not sharded else 0)
    ref = 0
    if reference in ("copy", "adapters_off"):  # the reference's forward: one chunk's fp32 logits, no grad
        ref = min(tokens, chunk_tokens(vocab)) * vocab * 8 if not sharded else tokens * vocab * 8
    if reference == "copy":
        total = count_parameters(cfg.model, vocab).total
        keep_bf16 = train_precision(cfg, device_kind, num_devices, compute=precision).bf16_weights
        ref += (2 if keep_bf16 else 4) * total  # whole on every rank: FSDP does not shard the frozen copy
    return replace(base, logits_bytes=logits, reference_bytes=ref)


def rollout_rows(cfg: RunConfig, num_devices: int = 1) -> int:
    """Answers one rank decodes together in a generation: its prompts of ``steps_per_generation``
    steps, ``group_size`` answers each."""
    rl = cfg.train.rl
    return cfg.train.global_batch_size // max(1, num_devices) * rl.steps_per_generation


def _rl_memory(cfg: RunConfig, rows: int, precision: str, num_devices: int, checkpointing: bool | None,
               overhead: int, device_kind: str) -> MemoryBreakdown:
    """``training_memory`` of an RL run: a micro-batch of answers trains as SFT rows (their
    log-probabilities through the head in chunks, one more chunk for the backward); a generation
    decodes all of this rank's answers at once (``rollout_rows``) in a KV cache of the whole
    sequence length, with each step's fp32 logits; the KL reference as a preference run's."""
    from dataclasses import replace

    sft = cfg.model_copy(update={"train": cfg.train.model_copy(update={"task": "sft"})})
    base = training_memory(sft, rows, precision, num_devices, False, checkpointing, overhead, device_kind)
    vocab, seq = vocab_size(cfg), cfg.train.sequence_length_tokens
    logits = base.logits_bytes + chunk_tokens(vocab) * vocab * 4
    together = rollout_rows(cfg, num_devices)
    rollout = together * kv_cache_bytes(cfg, seq, ELEMENT[precision]) + together * vocab * 8  # + fp32 logits, log-probs
    ref = 0
    kind = reference_kind(cfg)
    if kind in ("copy", "adapters_off"):
        ref = min(rows * seq, chunk_tokens(vocab)) * vocab * 8
    if kind == "copy":
        keep_bf16 = train_precision(cfg, device_kind, num_devices, compute=precision).bf16_weights
        ref += (2 if keep_bf16 else 4) * count_parameters(cfg.model, vocab).total
    return replace(base, logits_bytes=logits, reference_bytes=ref, rollout_bytes=rollout)


NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4 bits, an 8-bit absmax per 64, an fp32 scale per 256 blocks
INT8_BYTES = 1.0  # plus an fp32 scale per output row (counted below)


def base_weight_bytes(cfg: RunConfig, bits: int) -> int:
    """Bytes of a frozen LoRA base at ``bits``
    (``llmkit.model.quantize``): 16 = everything bf16; 8/4 = the blocks' linear projections
    quantized (LLM.int8: a byte each and a scale per row; NF4 with double quantization: ~0.516
    bytes each), the embeddings, norms and output head bf16 (no autocast copies)."""
    m = cfg.model
    vocab = vocab_size(cfg)
    counts = count_parameters(m, vocab)
    if bits == 16:
        return 2 * counts.total
    linear = counts.per_layer_matrices * m.num_hidden_layers
    shapes = [shape for per_name in linear_shapes(m).values() for shape in per_name]
    rows = sum(o for _i, o in shapes) * m.num_hidden_layers
    matrices = len(shapes) * m.num_hidden_layers  # each NF4 matrix keeps its 16-value and 256-value code tables
    quantized = int(linear * NF4_BYTES) + 1088 * matrices if bits == 4 else int(linear * INT8_BYTES) + 4 * rows
    return quantized + 2 * (counts.total - linear)


LOSS_CHUNK_ELEMENTS = 1 << 23  # logits per chunk of the chunked loss (32 MB in fp32)...
LOSS_CHUNK_MIN_TOKENS = 1024  # ...but never fewer tokens: each chunk adds the head's whole (V x H)
# gradient to its fp32 sum, which costs about as much as 80 tokens of the chunk's GEMMs on a CPU
# (measured: 128-token chunks were 1.25x the full-logits step at V = 65,536; 1,024 break even)


def chunk_tokens(vocab: int) -> int:
    """Tokens per chunk of ``llmkit.objectives.head_loss`` for a vocabulary: about LOSS_CHUNK_ELEMENTS
    logits, between LOSS_CHUNK_MIN_TOKENS and 8192 tokens (here because the memory plan and the
    loss must agree)."""
    return max(LOSS_CHUNK_MIN_TOKENS, min(8192, LOSS_CHUNK_ELEMENTS // max(vocab, 1)))


def chunked_loss_bytes(tokens: int, vocab: int, hidden: int, precision: str) -> int:
    """The loss over the vocabulary in chunks (``llmkit.objectives.head_loss``): one chunk at a time,
    its fp32 logits and, at the peak, the temporary of their log-sum-exp (8 bytes a logit: the
    compute-dtype product before it and the compute-dtype gradient after it are smaller; measured
    4.0-4.6 bytes a logit for the log-sum-exp alone); the saved gradient of the hidden states
    (tokens x hidden) and of the head's weight (fp32); in half precision the weight's cast and the
    buffer its per-chunk gradient goes through (2 bytes each)."""
    chunk = min(tokens, chunk_tokens(vocab))
    e = ELEMENT[precision]
    casts = 2 * e * vocab * hidden if precision != "fp32" else 0
    return chunk * vocab * 8 + tokens * hidden * e + 4 * vocab * hidden + casts


def state_fits(cfg: RunConfig, budget_bytes: float, precision: str, device_kind: str = "gpu") -> bool:
    """Whether one device holds the whole training state: weights (and their autocast copies),
    gradients and AdamW moments, unsharded."""
    mem = training_memory(cfg, 1, precision, device_kind=device_kind)
    return mem.weights_bytes + mem.autocast_copies_bytes + mem.gradients_bytes + mem.optimizer_bytes <= budget_bytes


def shards(cfg: RunConfig, num_devices: int, budget_bytes: float, precision: str, device_kind: str = "gpu") -> bool:
    """Whether ``llmkit train`` shards (FSDP) on ``num_devices`` devices: ``train.distributed: fsdp``,
    or ``auto`` on more than one device when the state does not fit one (``state_fits``); ``ddp``
    and a single ``auto`` device never shard. The one rule: train and plan both call it."""
    mode = cfg.train.distributed
    if mode != "auto":
        return mode == "fsdp"
    return num_devices > 1 and not state_fits(cfg, budget_bytes, precision, device_kind)


def kv_cache_bytes(cfg: RunConfig, tokens: int, element_bytes: int = 2) -> int:
    """KV cache for ``tokens`` positions of one sequence (serving)."""
    m = cfg.model
    kv_width = m.hidden_size * (m.num_key_value_heads or m.num_attention_heads) // m.num_attention_heads
    return 2 * m.num_hidden_layers * kv_width * tokens * element_bytes


def fitting_micro_batch(cfg: RunConfig, budget_bytes: float, precision: str, num_devices: int = 1,
                        sharded: bool = False, overhead_bytes: int = 0,
                        device_kind: str = "gpu") -> tuple[int | None, MemoryBreakdown]:
    """The largest divisor of the per-device batch whose planned peak fits ``budget_bytes`` (None:
    not even 1 fits), with its memory (or micro-batch 1's when none fits)."""
    per_device = max(1, cfg.train.global_batch_size // num_devices)

    def memory(mb: int) -> MemoryBreakdown:
        return training_memory(cfg, mb, precision, num_devices, sharded, overhead_bytes=overhead_bytes,
                               device_kind=device_kind)

    for mb in sorted((d for d in range(1, per_device + 1) if per_device % d == 0), reverse=True):
        mem = memory(mb)
        if mem.peak_bytes <= budget_bytes:
            return mb, mem
    return None, memory(1)


def resolve_micro_batch(cfg: RunConfig, budget_bytes: float, precision: str, device_kind: str,
                        num_devices: int = 1, sharded: bool = False) -> tuple[int, MemoryBreakdown]:
    """``train.micro_batch_size`` as a number: the configured one, or for ``auto`` the largest that
    ``fitting_micro_batch`` says fits (1 when none does); with the planned memory of that choice.
    The one rule for ``auto``: training, evaluation, the quickstart and plan all call it. With
    ``num_devices`` ranks the micro-batch divides the global batch's share of one rank."""
    mb = cfg.train.micro_batch_size
    if mb == "auto":
        mb = fitting_micro_batch(cfg, budget_bytes, precision, num_devices, sharded, device_kind=device_kind)[0] or 1
    return mb, training_memory(cfg, mb, precision, num_devices, sharded, device_kind=device_kind)


def micro_batch_for_device(cfg: RunConfig, device: Any, precision: str, num_devices: int = 1,
                           sharded: bool = False) -> tuple[int, int, int]:
    """(micro-batch, planned peak bytes, memory budget bytes) for a torch device: ``resolve_micro_batch``
    with the device's budget (``llmkit.device.memory_budget_bytes``)."""
    from llmkit.device import memory_budget_bytes

    budget = memory_budget_bytes(device)
    mb, mem = resolve_micro_batch(cfg, budget, precision, "cpu" if device.type == "cpu" else "gpu", num_devices, sharded)
    return mb, mem.peak_bytes, budget
