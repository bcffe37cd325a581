"""Weight-only quantized linear layers for the llmkit engine on a CPU (``serve.dtype: int8 | int4``).

Decoding a small batch streams every weight from memory once per token; storing weights in 8 or 4
bits instead of 32 cuts that traffic 4x or 8x. The activations (and the key/value cache) are bf16
or fp32, whichever the kernels run faster with on the CPU at hand (:func:`activation_dtype`, timed
at start-up: PyTorch's kernels take a fast path for bf16; with fp32 activations they were 5-15x
slower than plain fp32 products on a 2-core AVX-512 BF16 EPYC). The weights are rounded:

- int8: one scale per output row, symmetric (``q = round(w / s)``, ``|q| <= 127``,
  ``s = max|w_row| / 127``), multiplied by PyTorch's CPU kernel ``aten._weight_int8pack_mm``;
- int4: groups of ``GROUP`` inputs per output row, asymmetric (16 levels from the group's minimum
  to its maximum: ``w ~ (q - 8) * scale + zero``), multiplied by ``aten._weight_int4pack_mm_for_cpu``
  on weights packed once by ``aten._convert_weight_to_int4pack_for_cpu``. That kernel needs the
  output size divisible by 16 and the input size by the group: other matrices, and the output head
  (which sets every logit, as llama.cpp keeps its output matrix at 6 bits in q4_k_m), take int8.

Every ``nn.Linear`` of the decoder's layers and the head is replaced in place by a
:class:`QuantizedLinear`, so ``forward`` (a prefill) and llmkit's decode step both run on it, and
the token embedding by a :class:`QuantizedEmbedding` (int8 rows; a tied one shares the head's);
the fp32 weights are freed.
``llmkit verify --endpoint`` measures what this costs a served model (perplexity ratio against fp32).
"""

from __future__ import annotations

from typing import Any

import torch

GROUP = 32  # int4 inputs per scale and zero (llama.cpp's q4_0 block)
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4 / 4096, "int4": 0.5 + 8 / GROUP}


def supported() -> str | None:
    """Why this torch cannot run the quantized products (None: it can)."""
    needed = ("_weight_int8pack_mm", "_weight_int4pack_mm_for_cpu", "_convert_weight_to_int4pack_for_cpu")
    missing = [name for name in needed if not hasattr(torch.ops.aten, name)]
    return f"this torch ({torch.__version__}) lacks aten.{', aten.'.join(missing)}" if missing else None


class QuantizedLinear(torch.nn.Module):
    """``nn.Linear``'s product with its weight stored in ``bits`` (8 or 4) bits; see the module docstring."""

    def __init__(self, linear: torch.nn.Linear, bits: int):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits = bits if bits == 8 or int4_fits(linear) else 8
        if self.bits == 8:
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale)
        else:
            n, k = w.shape
            groups = w.reshape(n, k // GROUP, GROUP)
            low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
            scale = (high - low).clamp(min=1e-12) / 15
            q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
            zero = low + 8 * scale
            self.register_buffer("qweight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
            # (k / GROUP, n, 2): each group's scale and zero, as the kernel reads them
            self.register_buffer("scales", torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(self.scales.dtype)  # the activations' dtype: the scales'
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, GROUP, self.scales)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The (out, in) fp32 weight this layer multiplies by (for tests and measurements)."""
        eye = torch.eye(self.in_features, dtype=self.scales.dtype)
        bias, self.bias = self.bias, None
        try:
            return self.forward(eye).float().T.contiguous()
        finally:
            self.bias = bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


class QuantizedEmbedding(torch.nn.Module):
    """An embedding whose rows are stored in int8 with a scale each; a tied model's embedding
    shares the int8 head's rows (the same matrix: one scale per vocabulary row)."""

    def __init__(self, embedding: torch.nn.Embedding, head: QuantizedLinear | None = None):
        super().__init__()
        # a tied head's buffers, read through it (in a list: not a submodule; casts replace its tensors)
        self._head = [head] if head is not None and head.bits == 8 else []
        if not self._head:
            w = embedding.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scales", scale)
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.embed_scale = getattr(embedding, "embed_scale", None)  # Gemma's scaled embedding

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 rows, their scales)."""
        owner = self._head[0] if self._head else self
        return owner.qweight, owner.scales

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, scales = self.rows()
        rows = torch.nn.functional.embedding(ids, q).to(scales.dtype) * scales[ids].unsqueeze(-1)
        return rows * self.embed_scale.to(rows.dtype) if self.embed_scale is not None else rows


def int4_fits(linear: torch.nn.Linear) -> bool:
    return linear.out_features % 16 == 0 and linear.in_features % GROUP == 0


def activation_dtype() -> torch.dtype:
    """bf16 or fp32, whichever the int8 kernel runs faster with on this CPU (timed once, a
    1-row product by a 1024 x 1024 weight: on a 2-core AVX-512 BF16 EPYC bf16 is ~15x faster)."""
    global _ACTIVATIONS
    if _ACTIVATIONS is None:
        import time

        q, times = torch.ones(1024, 1024, dtype=torch.int8), {}
        for dtype in (torch.bfloat16, torch.float32):
            x, scales = torch.randn(1, 1024, dtype=dtype), torch.ones(1024, dtype=dtype)
            best = float("inf")
            for _ in range(7):
                started = time.perf_counter()
                torch.ops.aten._weight_int8pack_mm(x, q, scales)
                best = min(best, time.perf_counter() - started)
            times[dtype] = best
        _ACTIVATIONS = min(times, key=times.__getitem__)
    return _ACTIVATIONS


_ACTIVATIONS: torch.dtype | None = None


def quantize_model(model: Any, bits: int, activations: torch.dtype | None = None) -> dict[str, int]:
    """Replace the decoder's and the head's ``nn.Linear`` layers of a CPU fp32 ``model`` (in place)
    by :class:`QuantizedLinear` at ``bits`` (the head at 8) and its token embedding by a
    :class:`QuantizedEmbedding`, quantizing from the fp32 weights; then cast what stays floating
    (norms, biases, scales) to ``activations`` (default :func:`activation_dtype`), the dtype the
    model then computes in. Returns how many layers took each width and the activations' dtype."""
    why = supported()
    if why is not None:
        raise RuntimeError(why)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    counts = {"int8": 0, "int4": 0}
    targets = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    for name, linear in targets:
        if linear.weight.device.type != "cpu":
            raise RuntimeError(f"{name} is on {linear.weight.device}: weight-only int8/int4 runs on the CPU")
        layer = QuantizedLinear(linear, 8 if linear is head else bits)
        _replace(model, name, layer)
        counts[f"int{layer.bits}"] += 1
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if type(embedding) in (torch.nn.Embedding,) or type(embedding).__name__.endswith("ScaledWordEmbedding"):
        tied = head is not None and head.weight is embedding.weight
        quantized_head = model.get_output_embeddings() if tied else None
        name = next(n for n, m in model.named_modules() if m is embedding)
        _replace(model, name, QuantizedEmbedding(embedding, quantized_head))
        counts["int8"] += 1
    chosen = activations or activation_dtype()
    model.to(chosen)
    return {**counts, "bf16_activations": int(chosen == torch.bfloat16)}


def _replace(model: Any, name: str, module: torch.nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def describe(counts: dict[str, int]) -> str:
    parts = [f"{counts[kind]} at {kind}" for kind in ("int8", "int4") if counts.get(kind)]
    acts = "bf16" if counts.get("bf16_activations") else "fp32"
    return f"weight-only quantized layers: {', '.join(parts)}; activations in {acts} (measured faster here)"
