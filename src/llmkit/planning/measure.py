"""Measure a device for the step-time model: the primitives ``plan.compute`` sums.

Each primitive is timed at the shape the configuration uses (best of a few runs): the GEMMs, one
layer's causal attention forward and backward, the loss over the logits, and streaming-copy
bandwidth. Nothing here runs the model itself. torch is imported on call. On a GPU every timing
waits for the device (``torch.cuda.synchronize``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmkit.device import torch_dtype
from llmkit.planning.compute import Attention, Gemm, Rates
from llmkit.planning.memory import chunk_tokens


def _best_seconds(fn: Callable[[], Any], budget_s: float = 0.5, max_runs: int = 7,
                  sync: Callable[[], None] = lambda: None) -> float:
    fn()  # warm-up
    sync()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < max_runs and (runs < 2 or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def measure_cpu_rates(precision: str) -> Rates:
    """Rates for this CPU in a precision (``bf16`` means bf16 autocast, as llmkit trains on CPU)."""
    return measure_rates(precision, "cpu")


def measure_rates(precision: str, device: str = "cpu") -> Rates:
    """Rates for a torch device (``cpu``, ``cuda``, ``cuda:1`` ...) in a precision."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def best(fn: Callable[[], Any], **kw: Any) -> float:
        return _best_seconds(fn, sync=sync, **kw)

    dtype = torch_dtype(precision)
    gemm_cache: dict[tuple[int, int, int, int], float] = {}
    attention_cache: dict[Attention, float] = {}
    loss_cache: dict[tuple[int, int], float] = {}

    def gemm(g: Gemm) -> float:
        key = (g.m, g.k, g.n, g.batch)
        if key not in gemm_cache:
            a = torch.randn(g.batch, g.m, g.k, device=dev).to(dtype)
            b = torch.randn(g.batch, g.k, g.n, device=dev).to(dtype)
            gemm_cache[key] = 2 * g.batch * g.m * g.k * g.n / best(lambda: torch.bmm(a, b))
        return gemm_cache[key]

    def attention_seconds(a: Attention) -> float:
        if a not in attention_cache:
            shape = (a.batch, a.heads, a.seq, a.head_dim)
            q, k, v = (torch.randn(shape, device=dev).to(dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, device=dev).to(dtype)

            def run() -> None:
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)

            attention_cache[a] = best(run)
        return attention_cache[a]

    def cross_entropy_seconds(tokens: int, vocab: int) -> float:
        # the chunked loss's arithmetic (llmkit.objectives.head_loss) without its GEMMs, which are timed as
        # GEMMs: per chunk, the logits to fp32, log-sum-exp, the softmax gradient, back to the dtype
        if (tokens, vocab) not in loss_cache:
            chunk = min(tokens, chunk_tokens(vocab))
            logits = torch.randn(chunk, vocab, device=dev).to(dtype)
            labels = torch.randint(0, vocab, (chunk,), device=dev)
            rows = torch.arange(chunk, device=dev)

            def run() -> None:
                f = logits.float()
                lse = f.logsumexp(-1)
                f.gather(1, labels[:, None])
                probs = f.sub_(lse[:, None]).exp_()
                probs[rows, labels] -= 1.0
                probs.mul_((labels >= 0)[:, None]).to(dtype)

            loss_cache[(tokens, vocab)] = best(run) * -(-tokens // chunk)
        return loss_cache[(tokens, vocab)]

    n = (16 if dev.type == "cpu" else 256) * 2**20  # 64 MiB (CPU) / 1 GiB (GPU) of fp32: past the caches
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    bandwidth = 2 * 4 * n / best(lambda: dst.copy_(src), budget_s=1.0, max_runs=15)
    return Rates(gemm, attention_seconds, cross_entropy_seconds, bandwidth,
                 device_kind="cpu" if dev.type == "cpu" else "gpu")


def matmul_peak_flops(device: Any, dtype: Any, seconds: float = 0.3, size: int = 1024) -> float:
    """Best FLOP/s of repeated (size x size) matmuls on ``device`` in ``dtype`` (the MFU denominator)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(3):
        a @ b  # warm-up (kernel selection, caches)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


def _last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs), or 32 MB when it cannot be read."""
    from pathlib import Path

    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * scale)
        except ValueError:
            continue
    return max(sizes, default=32 * 2**20)


# llmkit's own work around the tensor operations while serving, on the CPU: per generated token
# (detokenizing a short window, the event, the stream's SSE chunk and its write), per step (the
# engine's hand-over to the event loop, waking it, the batch bookkeeping) and per request (HTTP
# parsing, validation, tokenization, queueing). Fitted to benchmarks/serve_load.py on the `tiny`
# preset (where they are most of the time) on a 2-core AMD EPYC, whose streaming client runs on the
# same cores, as a load test's usually does; the ~100M-parameter rows check them independently.
# Python's speed varies less between CPUs than the tensor work, which is measured where plan runs.
ROW_PYTHON_S = 1e-4
STEP_PYTHON_S = 1.0e-3
REQUEST_PYTHON_S = 8e-3
SPAN_CAP = 1024  # longer spans are timed at 512 and 1,024 positions and extrapolated (linear)
PREFILL_CAP = 512  # longer prompts: timed at 256 and 512 tokens, extrapolated (linear + quadratic)


def measure_cpu_serving(cfg: Any, dtype: str = "fp32", sampled: bool = True, budget_s: float = 0.15) -> Any:
    """llmkit's serving engine on this CPU for ``cfg``'s model, as a ``plan.serving.StepSpeed``.

    A decode step is timed in two parts at the batch and span asked for, at the model's shapes and
    dtype, without building the model: a replica of one decoder layer as
    ``llmkit.generate.fastpath`` runs it (``nn.Linear`` projections, or their oneDNN-packed copies
    where ``serve.pack_weights`` has the server pack them (``llmkit.packing``), the Hugging Face RMSNorm's
    operations, rotary embedding, the writes into a cache buffer of twice the span and attention
    over its slice with a bool mask and grouped-query heads, residuals, the activation), cycled
    over enough copies of the layer's weights that they stream from memory when the model's
    weights exceed the last-level cache, as they do in the step; and the step's own work
    (embedding, rotary angles, final norm, the head, sampling). Timing the layer whole keeps the
    interplay of its operations (threads waking between small ones, cache traffic) in the figure;
    its pieces timed alone came out 1.3-2x too fast. Prefill is the same layer over ``tokens``
    positions with causal attention, plus the request's own handling (``REQUEST_PYTHON_S``). Long
    spans and prompts are timed at ``SPAN_CAP`` / ``PREFILL_CAP`` and extrapolated, so a plan for
    long contexts stays a few seconds.
    """
    from llmkit.planning.serving import StepSpeed

    timer = _ServingTimer(cfg, dtype, sampled, budget_s)
    return StepSpeed(timer.step_seconds, timer.prefill_seconds, timer.parts)


class _ServingTimer:
    """The timings behind ``measure_cpu_serving``, each measured once when first asked for, on a
    model of the config's shapes with ``copies`` decoder layers and a slice of its vocabulary,
    through the server's own code: ``llmkit.generate.fastpath.DecodeStep.layer`` (packed as
    serve.pack_weights has the server pack it) for a decode step, the model's forward (as
    ``generate.batch`` prefills, and decodes architectures without a decode step) otherwise."""

    def __init__(self, cfg: Any, dtype: str, sampled: bool, budget_s: float) -> None:
        import torch

        from llmkit.config.derived import vocab_size
        from llmkit.generate.batch import cache_argument
        from llmkit.generate.fastpath import DecodeStep, supports
        from llmkit.model.build import build_model
        from llmkit.planning.params import count_parameters
        from llmkit.planning.serving import element_bytes

        self.torch_type = torch.bfloat16 if dtype == "bf16" else torch.float32
        m = cfg.model
        h, self.layers, vocab = m.hidden_size, m.num_hidden_layers, vocab_size(cfg)
        self.h, self.sampled, self.budget_s = h, sampled, budget_s
        e = {"int8": 1, "int4": 1}.get(dtype, element_bytes(dtype))  # bytes per weight, about
        llc = _last_level_cache_bytes()
        pc = count_parameters(m, vocab)
        layer_bytes = (pc.matmul - h * vocab) * e // self.layers
        streams = pc.matmul * e > llc  # then enough layers that they stream from memory, as in the step
        self.copies = min(self.layers, max(1, -(-2 * llc // max(1, layer_bytes)))) if streams else min(self.layers, 4)
        kept = min(vocab, max(1, 256 * 2**20 // (h * e)))  # a slice of a huge vocabulary, its time scaled
        self.head_scale = vocab / kept
        replica = m.model_copy(update={"num_hidden_layers": self.copies, "vocab_size": None})
        with torch.no_grad():
            self.model = build_model(replica, kept, 0, None, seed=0).to(self.torch_type).eval()
        if dtype in ("int8", "int4"):  # as load_for_inference quantizes a served model
            from llmkit.wquant import quantize_model

            quantize_model(self.model, 8 if dtype == "int8" else 4)
        self.model.config.use_cache = True
        self.cache_kw = cache_argument(self.model)
        pack = getattr(getattr(cfg, "serve", None), "pack_weights", False)
        # as serving.engine.decode_step builds the server's step: packed as asked, its forward too
        self.step = DecodeStep(self.model, pack=pack, pack_forward=True) if supports(self.model) else None
        self.timings: dict[tuple[Any, ...], float] = {}

    def _best(self, fn: Callable[[], Any]) -> float:
        return _best_seconds(fn, budget_s=self.budget_s, max_runs=5)

    def _forward_seconds(self, rows: int, length: int, span: int) -> float:
        """The model's forward (all its layers) over ``length`` new positions of ``rows`` sequences
        whose cache already holds ``span - length``, as ``generate.batch`` calls it."""
        import torch
        from transformers import DynamicCache

        held = span - length
        mask = torch.ones(rows, span, dtype=torch.long)
        ids = torch.randint(0, self.model.config.vocab_size, (rows, span))
        with torch.inference_mode():
            cache = DynamicCache()
            if held:
                self.model(input_ids=ids[:, :held], attention_mask=mask[:, :held], use_cache=True, logits_to_keep=1,
                           **{self.cache_kw: cache})
            positions = torch.arange(held, span).expand(rows, length)

            def run() -> None:
                self.model(input_ids=ids[:, held:], attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{self.cache_kw: cache})
                cache.crop(held)  # the next run sees the same span

            return self._best(run)

    def layer_seconds(self, rows: int, length: int, span: int) -> float:
        """One decoder layer: ``rows`` sequences of ``length`` new positions over a ``span``."""
        key = ("layer", rows, length, span)
        if key not in self.timings:
            if length == 1 and self.step is not None:
                self.timings[key] = self._step_layers_seconds(rows, span) / self.copies
            else:  # a prefill, or a decode step through transformers' forward (the head's row aside)
                outside = self._outside_seconds(rows) if length == 1 else 0.0
                self.timings[key] = max(0.0, self._forward_seconds(rows, length, span) - outside) / self.copies
        return self.timings[key]

    def _step_layers_seconds(self, rows: int, span: int) -> float:
        """The decode step's layers (``DecodeStep.layer``, every copy) for ``rows`` rows over ``span``."""
        import torch

        step, t = self.step, self.torch_type
        heads = self.model.config.num_attention_heads
        kv_heads = self.model.config.num_key_value_heads or heads
        head_dim = self.h // heads
        x = torch.randn(rows, 1, self.h, dtype=t)
        cos = torch.randn(rows, 1, 1, head_dim, dtype=t)
        sin = torch.randn(rows, 1, 1, head_dim, dtype=t)
        buffers = [(torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=t),
                    torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=t)) for _ in range(self.copies)]
        valid = torch.ones(rows, 2 * span, dtype=torch.long)

        def run() -> None:
            mask = valid[:, :span].bool()[:, None, None, :]
            for i, (k, v) in enumerate(buffers):
                step.layer(i, x, cos, sin, k[:, :, :span], v[:, :, :span], mask)

        with torch.inference_mode():
            return self._best(run)

    def _ends(self) -> tuple[Any, Any, Any, Any]:
        """The model's modules outside its layers, as the step calls them: (embedding, final norm,
        the head's product (packed where the step packed it), rotary embedding or None)."""
        body = self.model.base_model
        head_fn = self.step.head_fn if self.step is not None else self.model.get_output_embeddings()
        norm = getattr(body, "norm", None) or getattr(body, "ln_f")
        return self.model.get_input_embeddings(), norm, head_fn, getattr(body, "rotary_emb", None)

    def _outside_seconds(self, rows: int) -> float:
        """The forward's work outside its layers for one new position of ``rows`` sequences:
        embedding, final norm, head (the model's own modules; the head as the step multiplies)."""
        import torch

        key = ("outside", rows)
        if key not in self.timings:
            embed, norm, head_fn, _ = self._ends()
            tokens = torch.randint(0, embed.num_embeddings, (rows, 1))

            def run() -> Any:
                return head_fn(norm(embed(tokens)))[:, 0].float()

            with torch.inference_mode():
                self.timings[key] = self._best(run)
        return self.timings[key]

    def step_other_seconds(self, rows: int) -> float:
        """The step's work outside the layers: embedding, rotary angles, final norm, head, sampling."""
        import torch

        from llmkit.generate.sampling import sample_rows

        key = ("step", rows)
        if key not in self.timings:
            embed, norm, head_fn, rotary = self._ends()
            tokens = torch.randint(0, embed.num_embeddings, (rows,))
            positions = torch.randint(0, 100, (rows, 1))
            generators = [torch.Generator().manual_seed(i) for i in range(rows)]

            def run() -> None:
                x = embed(tokens[:, None])
                if rotary is not None:
                    rotary(x, positions)
                logits = head_fn(norm(x))[:, 0].float()
                chosen = logits.argmax(-1)
                if self.sampled:
                    chosen = sample_rows((logits / 0.8).softmax(-1), generators)
                chosen.tolist()

            with torch.inference_mode():
                self.timings[key] = self._best(run) * (self.head_scale if self.head_scale > 1 else 1.0)
        return self.timings[key]

    def decode_layer(self, rows: int, span: int) -> float:
        if span <= SPAN_CAP:
            return self.layer_seconds(rows, 1, span)
        low, high = self.layer_seconds(rows, 1, SPAN_CAP // 2), self.layer_seconds(rows, 1, SPAN_CAP)
        return high + max(0.0, high - low) * (span - SPAN_CAP) / (SPAN_CAP // 2)  # attention: linear in span

    def prefill_layer(self, tokens: int) -> float:
        if tokens <= PREFILL_CAP:
            return self.layer_seconds(1, tokens, tokens)
        c = PREFILL_CAP
        half, full = self.layer_seconds(1, c // 2, c // 2), self.layer_seconds(1, c, c)
        quadratic = max(0.0, 2 * (full - 2 * half) / c**2)  # causal attention; the rest is linear in tokens
        return (full - quadratic * c**2) / c * tokens + quadratic * tokens**2

    def parts(self, rows: int, span: int) -> dict[str, float]:
        return {"layers": self.layers * self.decode_layer(rows, span), "head and sampling": self.step_other_seconds(rows),
                "python": STEP_PYTHON_S + rows * ROW_PYTHON_S}

    def step_seconds(self, rows: int, span: int) -> float:
        return sum(self.parts(rows, span).values())

    def prefill_seconds(self, tokens: int) -> float:
        return self.layers * self.prefill_layer(tokens) + self.step_other_seconds(1) + REQUEST_PYTHON_S
