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
# Architectures without llmkit's decode step (gpt2) decode through transformers' forward, whose
# per-call work (4-D mask, cache object, output classes) the layer replica does not do: measured
# on the `tiny` shape as gpt2 (4 x 192) on the same CPU, ~0.6 ms a step more than the replica.
FORWARD_CALL_S = 6e-4
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
    import torch
    import torch.nn.functional as F

    from llmkit.config.derived import intermediate_size, vocab_size
    from llmkit.planning.params import count_parameters
    from llmkit.planning.serving import StepSpeed, element_bytes

    torch_type = torch.float32 if dtype == "fp32" else torch.bfloat16
    m = cfg.model
    h, layers, heads = m.hidden_size, m.num_hidden_layers, m.num_attention_heads
    kv_heads = m.num_key_value_heads or heads
    head_dim, inter, vocab = h // heads, intermediate_size(m), vocab_size(cfg)
    gpt2 = m.architecture == "gpt2"
    e = element_bytes(dtype)
    llc = _last_level_cache_bytes()
    pc = count_parameters(m, vocab)
    layer_bytes = (pc.matmul - h * vocab) * e // layers
    streams = pc.matmul * e > llc
    copies = min(layers, max(1, -(-2 * llc // max(1, layer_bytes)))) if streams else min(layers, 4)
    timings: dict[tuple[Any, ...], float] = {}

    def best(fn: Callable[[], Any]) -> float:
        return _best_seconds(fn, budget_s=budget_s, max_runs=5)

    def linear(k: int, n: int) -> Any:
        return torch.nn.Linear(k, n, bias=gpt2, dtype=torch_type)

    class Norm(torch.nn.Module):  # the Hugging Face RMSNorm's operations
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(h, dtype=torch_type))

        def forward(self, x: Any) -> Any:
            f = x.to(torch.float32)
            f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
            return self.weight * f.to(x.dtype)

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kv = kv_heads * head_dim
            self.q, self.k, self.v, self.o = linear(h, h), linear(h, kv), linear(h, kv), linear(h, h)
            self.gate, self.up, self.down = linear(h, inter), (None if gpt2 else linear(h, inter)), linear(inter, h)
            self.norm1, self.norm2 = Norm(), Norm()
            # what the products go through: the modules, or their packed copies where serve.pack_weights
            # has the server pack them (its decode step and its model's forward, a prefill, use them)
            self.fn: dict[str, Any] = {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "gate": self.gate,
                                       "up": self.up, "down": self.down}

        def mlp(self, x: Any) -> Any:
            f = self.fn
            if self.up is None:
                return f["down"](F.gelu(f["gate"](x), approximate="tanh"))
            return f["down"](F.silu(f["gate"](x)) * f["up"](x))


        def forward(self, x: Any, cos: Any, sin: Any, keys: Any, values: Any, mask: Any) -> Any:
            b, t = x.shape[:2]
            y = self.norm1(x)
            f = self.fn
            q = f["q"](y).view(b, t, -1, head_dim).transpose(1, 2)
            k = f["k"](y).view(b, t, -1, head_dim).transpose(1, 2)
            v = f["v"](y).view(b, t, -1, head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            keys[:, :, -t:] = k
            values[:, :, -t:] = v
            if t == 1:
                o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=0.125,
                                                   enable_gqa=kv_heads != heads)
            else:
                o = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=kv_heads != heads)
            x = x + f["o"](o.transpose(1, 2).reshape(b, t, -1))
            return x + self.mlp(self.norm2(x))

    def rotate_half(x: Any) -> Any:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    with torch.inference_mode():
        stack = [Layer() for _ in range(copies)]

    def layer_seconds(rows: int, length: int, span: int) -> float:
        """One decoder layer: ``rows`` sequences of ``length`` new positions over a ``span``."""
        key = ("layer", rows, length, span)
        if key not in timings:
            x = torch.randn(rows, length, h, dtype=torch_type)
            cos = torch.randn(rows, 1, length, head_dim, dtype=torch_type)
            sin = torch.randn(rows, 1, length, head_dim, dtype=torch_type)
            buffers = [(torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=torch_type),
                        torch.zeros(rows, kv_heads, 2 * span, head_dim, dtype=torch_type)) for _ in stack]
            valid = torch.ones(rows, 2 * span, dtype=torch.long)

            def run() -> None:
                mask = valid[:, :span].bool()[:, None, None, :]
                for layer, (k, v) in zip(stack, buffers):
                    layer(x, cos, sin, k[:, :, :span], v[:, :, :span], mask)

            with torch.inference_mode():
                timings[key] = best(run) / len(stack)
        return timings[key]

    with torch.inference_mode():
        head = linear(h, min(vocab, max(1, 256 * 2**20 // (h * e))))  # a slice of a huge head, scaled
    head_scale = vocab / head.out_features
    head_fn = head
    pack = getattr(getattr(cfg, "serve", None), "pack_weights", False)
    if pack and not gpt2:  # the server's decode step packs as serve.pack_weights says; so is it timed
        from llmkit.packing import PackedLinear, available_memory, faster_packed, packable, shape_of

        free = available_memory()
        if packable(head) and not (free is not None and pc.matmul * e > free // 2):
            linears = [m for m in (*stack[0].fn.values(), head) if m is not None]
            faster = {shape_of(m): True for m in linears} if pack is True else faster_packed(linears)
            for layer in stack:
                layer.fn = {k: PackedLinear(m) if m is not None and faster.get(shape_of(m)) else m
                            for k, m in layer.fn.items()}
            head_fn = PackedLinear(head) if faster.get(shape_of(head)) else head
    embedding = torch.nn.Embedding(min(vocab, 65536), h, dtype=torch_type)
    norm = Norm()
    inv_freq = torch.rand(head_dim // 2)

    def step_other_seconds(rows: int) -> float:
        """The step's work outside the layers: embedding, rotary angles, final norm, head, sampling."""
        key = ("step", rows)
        if key not in timings:
            tokens = torch.randint(0, embedding.num_embeddings, (rows,))
            positions = torch.randint(0, 100, (rows, 1))
            x = torch.randn(rows, 1, h, dtype=torch_type)
            generators = [torch.Generator().manual_seed(i) for i in range(rows)]

            def run() -> None:
                embedding(tokens[:, None])
                freqs = positions[..., None].float() * inv_freq
                emb = torch.cat((freqs, freqs), dim=-1)
                (emb.cos() * 1.0).to(torch_type), (emb.sin() * 1.0).to(torch_type)
                logits = head_fn(norm(x))[:, 0].float()
                chosen = logits.argmax(-1)
                if sampled:
                    probs = (logits / 0.8).softmax(-1)
                    for r in range(rows):
                        chosen[r] = torch.multinomial(probs[r], 1, generator=generators[r])[0]
                chosen.tolist()
                positions + 1

            with torch.inference_mode():
                timings[key] = best(run) * (head_scale if head_scale > 1 else 1.0)
        return timings[key]

    def decode_layer(rows: int, span: int) -> float:
        if span <= SPAN_CAP:
            return layer_seconds(rows, 1, span)
        low, high = layer_seconds(rows, 1, SPAN_CAP // 2), layer_seconds(rows, 1, SPAN_CAP)
        return high + max(0.0, high - low) * (span - SPAN_CAP) / (SPAN_CAP // 2)  # attention: linear in span

    def prefill_layer(tokens: int) -> float:
        if tokens <= PREFILL_CAP:
            return layer_seconds(1, tokens, tokens)
        c = PREFILL_CAP
        half, full = layer_seconds(1, c // 2, c // 2), layer_seconds(1, c, c)
        quadratic = max(0.0, 2 * (full - 2 * half) / c**2)  # causal attention; the rest is linear in tokens
        return (full - quadratic * c**2) / c * tokens + quadratic * tokens**2

    def parts(rows: int, span: int) -> dict[str, float]:
        out = {"layers": layers * decode_layer(rows, span), "head and sampling": step_other_seconds(rows),
               "python": STEP_PYTHON_S + rows * ROW_PYTHON_S}
        if gpt2:
            out["transformers forward"] = FORWARD_CALL_S
        return out

    def step_seconds(rows: int, span: int) -> float:
        return sum(parts(rows, span).values())

    def prefill_seconds(tokens: int) -> float:
        return layers * prefill_layer(tokens) + step_other_seconds(1) + REQUEST_PYTHON_S

    return StepSpeed(step_seconds, prefill_seconds, parts)
