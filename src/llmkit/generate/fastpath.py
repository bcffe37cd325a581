"""One decode step of a Llama-family model over the slot cache, without transformers' per-call work.

A step of the running batch feeds one token per row. Through ``model.forward`` that costs, besides
the matrix products, the building of a 4-D mask, output dataclasses, config look-ups, deprecation
and output-capturing wrappers and a Cache object per call: on the `tiny` preset about a third of a
batch-1 step (benchmarks/generate_throughput.py). :class:`DecodeStep` runs the same modules (the
model's own norms, projections, rotary embedding, activation and head, so LoRA layers, rope
scaling and bf16 weights behave exactly as in ``forward``) in the order ``forward`` runs them, and
writes keys and values straight into the slot cache's buffers.

Only architectures whose decoder layer is exactly this computation take it (``supports``): Llama,
Mistral and Qwen2 without a sliding window, Qwen3. Everything else decodes through ``forward``.
The step's logits equal ``forward``'s (tests/unit/generate/test_fastpath.py, per architecture).

``compile`` wraps the step in ``torch.compile`` (dynamic shapes: the batch and the time axis
change every step); on the CPU with inductor's C++ wrapper, which removes the Python call per
kernel. ``compile(frozen=True)`` (a served model whose weights never change: no LoRA adapters
loaded or swapped while it serves) also lets inductor treat the weights as constants: it lays them
out once for oneDNN itself and fuses the small operations around the products, so the step then
multiplies by the modules' own weights rather than ``pack``'s copies (which inductor cannot take
as constants). On `tiny` (2-core AVX-512 CPU, batch 1) decode went 1.4-2.6x faster than the eager
packed step; on a ~100M model, whose step is the products' memory traffic, 0.7-0.8x at fp32/bf16
and 1.3-1.4x at int8/int4 (benchmarks/quantized_decode.py --compile prints both). A compile failure falls back to the eager step with
one warning.

``pack`` (the server's step, ``serve.pack_weights``): on a CPU, the step multiplies by copies of the
projection weights laid out once for oneDNN (``PackedLinear``) instead of calling ``nn.Linear``,
whose BLAS call re-packs the whole weight matrix at every call. That re-packing is most of a
decode step's GEMM time when a few rows multiply a large weight streamed from memory: on a
~100M-parameter Llama (2-core AVX-512 CPU) a 1-row step went from 33 to 23 ms and a 16-row step
from 66 to 35 ms. For small matrices oneDNN's per-call overhead is larger than BLAS's, so ``auto``
times both on each distinct weight shape (1 row and 16 rows) and packs only the shapes where the
packed product is faster; the copies take memory (the projections' bytes once more), so nothing is
packed when they would not fit in half the RAM available. Only plain ``nn.Linear`` projections of a
CPU model are packed (LoRA layers are called as themselves). The products equal ``nn.Linear``'s to
float rounding (a different summation order), as any two BLAS libraries do.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from llmkit.packing import PackedLinear, available_memory, faster_packed, packable, shape_of

FULL_ATTENTION_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def _inner(model: Any) -> Any:
    """The causal LM under a PEFT wrapper (its LoRA layers stay in place and are called)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: Any) -> bool:
    """Whether :class:`DecodeStep` computes exactly what ``model.forward`` does for this model."""
    lm = _inner(model)
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in FULL_ATTENTION_TYPES:
        return False
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return False
    window = getattr(cfg, "sliding_window", None)
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        return False
    if cfg.model_type == "mistral" and window is not None and window < int(cfg.max_position_embeddings):
        return False
    body = getattr(lm, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if body is None or not all(hasattr(body, n) for n in needed) or getattr(lm, "lm_head", None) is None:
        return False
    attn = body.layers[0].self_attn
    return all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim"))


class DecodeStep:
    """``step(tokens, positions, kv)``: the (rows, V) logits of the next token for every live row of
    ``kv`` (a :class:`~llmkit.generate.kvcache.SlotCache`), its keys and values written at ``kv.end``."""

    def __init__(self, model: Any, pack: bool | str = False, pack_forward: bool = False):
        """``pack``: multiply by oneDNN-packed copies of the projection weights (CPU only): True for
        every plain ``nn.Linear``, ``"auto"`` for the weight shapes where it is measured faster,
        False never. :attr:`packed` says how many projections were packed. ``pack_forward``: the
        packed modules' own ``forward`` multiplies by the copies too (set on the instances; the
        parameters and state dict are untouched), so that the model's ``forward`` (a prefill)
        also runs on them: for a model that is only served, never trained again."""
        lm = _inner(model)
        self.body, self.head = lm.model, lm.lm_head
        cfg = lm.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.gqa = bool(self.kv_heads != self.heads)  # a constant to torch.compile, not a symbolic int
        self.qk_norm = hasattr(self.body.layers[0].self_attn, "q_norm")
        self.fn = self.forward
        self.packed, self.pack_note = 0, "not asked for"
        # the callables each layer's projections go through: the modules, or packed copies
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        self.proj = [tuple(getattr(layer.self_attn, n) for n in names) for layer in self.body.layers]
        self.mlp: list[Any] = [None] * len(self.body.layers)  # (gate, up, down, act) when packed
        self.head_fn: Any = self.head
        if pack:
            self._pack(pack, pack_forward)

    def _pack(self, mode: bool | str, forward: bool) -> None:
        """Replace the projections by packed copies where ``mode`` says (see the module docstring)."""
        linears = [m for proj in self.proj for m in proj] + [self.head]
        for layer in self.body.layers:
            linears += [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        candidates = [m for m in linears if packable(m)]
        if not candidates:
            self.pack_note = "no plain CPU nn.Linear projections to pack"
            return
        need = sum(m.weight.numel() * m.weight.element_size() for m in {id(m): m for m in candidates}.values())
        free = available_memory()
        if free is not None and need > free // 2:
            self.pack_note = (f"not packed: the copies would take {need / 2**30:.1f} GiB, over half of the "
                              f"{free / 2**30:.1f} GiB available")
            return
        faster = {shape: True for shape in map(shape_of, candidates)} if mode is True else faster_packed(candidates)
        made: dict[int, PackedLinear] = {}

        def packed(m: Any) -> Any:
            if not packable(m) or not faster.get(shape_of(m)):
                return m
            if id(m) not in made:
                made[id(m)] = PackedLinear(m)
            return made[id(m)]

        self.proj = [tuple(packed(m) for m in proj) for proj in self.proj]
        for i, layer in enumerate(self.body.layers):
            parts = [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            act = getattr(layer.mlp, "act_fn", None)
            # LlamaMLP's computation, down(act(gate(x)) * up(x)), only when that is what the module is
            if type(layer.mlp).__name__.endswith("MLP") and act is not None and all(packable(m) for m in parts):
                chosen = [packed(m) for m in parts]
                if any(isinstance(c, PackedLinear) for c in chosen):
                    self.mlp[i] = (*chosen, act)
        self.head_fn = packed(self.head)
        self.packed = len(made)
        if forward:
            for m in candidates:
                if id(m) in made:
                    m.forward = made[id(m)]  # an instance attribute: nn.Module.__call__ calls it
        shapes = sorted({f"{k}x{n}" for (k, n, *_rest), ok in faster.items() if ok})
        self.pack_note = (f"{self.packed} projections packed for oneDNN ({', '.join(shapes)})" if made
                          else "no weight shape was faster packed")

    def _unpack(self) -> None:
        """Multiply by the modules' own weights (plain ``nn.Linear`` ones through ``F.linear``), not
        by packed copies: for a frozen compile, where inductor lays the weights out itself."""
        def plain(m: Any) -> Any:
            return _Plain(m) if type(m) is torch.nn.Linear else m

        self.proj = [tuple(plain(m) for m in proj) for proj in (
            tuple(getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
            for layer in self.body.layers)]
        for i, layer in enumerate(self.body.layers):
            parts = [getattr(layer.mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
            act = getattr(layer.mlp, "act_fn", None)
            plain_mlp = type(layer.mlp).__name__.endswith("MLP") and act is not None
            self.mlp[i] = (*[plain(m) for m in parts], act) if plain_mlp and all(parts) else None
        self.head_fn = plain(self.head)

    def __call__(self, tokens: Any, positions: Any, kv: Any) -> Any:
        """The next-token logits of every live row of ``kv``, whose step must be reserved
        (``kv.reserve_step()``); writes their keys and values at ``kv.end``."""
        span = slice(kv.start, kv.end + 1)
        keys = [k[:kv.rows, :, span] for k in kv.keys]
        values = [v[:kv.rows, :, span] for v in kv.values]
        return self.fn(tokens, positions, keys, values, kv.valid[:kv.rows, span].bool())

    def forward(self, tokens: Any, positions: Any, keys: list[Any], values: list[Any], valid: Any) -> Any:
        """tokens (B,), positions (B, 1); per layer the keys and values of the rows' span, whose
        last position is written here: (B, kv_heads, span, D); valid (B, span) bool, True where attended.
        Written on slices (not buffers with start/end) so that a compiled step sees only two
        dynamic sizes, the batch and the span."""
        body = self.body
        x = body.embed_tokens(tokens[:, None])  # (B, 1, hidden)
        cos, sin = body.rotary_emb(x, positions)  # (B, 1, D)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, 1, D): broadcast over heads
        mask = valid[:, None, None, :]  # (B, 1, 1, span)
        for i in range(len(body.layers)):
            x = self.layer(i, x, cos, sin, keys[i], values[i], mask)
        return self.head_fn(body.norm(x))[:, 0]

    def layer(self, i: int, x: Any, cos: Any, sin: Any, keys: Any, values: Any, mask: Any) -> Any:
        """Decoder layer ``i`` over x (B, 1, hidden): its keys and values written at the last position
        of ``keys`` / ``values`` (B, kv_heads, span, D), attention over the span where ``mask``
        (B, 1, 1, span) is True. ``llmkit plan --serve`` times this same method."""
        layer = self.body.layers[i]
        attn = layer.self_attn
        b = x.shape[0]
        h = layer.input_layernorm(x)
        q_proj, k_proj, v_proj, o_proj = self.proj[i]
        q = q_proj(h).view(b, 1, -1, attn.head_dim)
        k = k_proj(h).view(b, 1, -1, attn.head_dim)
        v = v_proj(h).view(b, 1, -1, attn.head_dim)
        if self.qk_norm:
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, 1, D)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys[:, :, -1:] = k
        values[:, :, -1:] = v
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=self.gqa)
        x = x + o_proj(o.transpose(1, 2).reshape(b, 1, -1))
        h = layer.post_attention_layernorm(x)
        if self.mlp[i] is None:
            return x + layer.mlp(h)
        gate, up, down, act = self.mlp[i]
        return x + down(act(gate(h)) * up(h))

    def compile(self, frozen: bool = False) -> bool:
        """Use a ``torch.compile``d step from now on; False (and one warning) when it cannot be built.
        The compile itself happens at the first call, which must be under ``torch.inference_mode``
        when ``frozen`` (inductor's weight freezing; see the module docstring): the weights are
        then captured as they are at that call."""
        try:
            options: dict[str, Any] = {}
            if not torch.cuda.is_available():
                options["cpp_wrapper"] = True
            if frozen:
                options["freezing"] = True
                self._unpack()
            self.fn = torch.compile(self.forward, dynamic=True, options=options)
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means eager
            warnings.warn(f"the compiled decode step could not be built ({type(exc).__name__}: {exc}); "
                          "decoding eagerly", stacklevel=2)
            self.fn = self.forward
            return False


class _Plain:
    """``F.linear`` with a module's own weight and bias: what a frozen compiled step multiplies by
    (the module's ``forward`` may be a packed copy's, set by ``pack_forward`` for the prefill)."""

    def __init__(self, linear: Any):
        self.weight, self.bias = linear.weight, linear.bias

    def __call__(self, x: Any) -> Any:
        return F.linear(x, self.weight, self.bias)


def _rotate_half(x: Any) -> Any:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
