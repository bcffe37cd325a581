"""Cross-entropy over the vocabulary without the logits of the whole micro-batch.

A language model's last step multiplies each position's hidden state (H) by the output matrix
(V x H) and takes a log-softmax over V. Done at once, that is a (tokens x V) fp32 tensor kept for
the backward pass: for the reference model (2,048 tokens x 8,192) 64 MB, plus its bf16 copy and
the softmax's gradient; for a 128k vocabulary, gigabytes. Here the tokens go through the head in
chunks: each chunk's logits are made, turned into its loss and into its gradients (with respect
to the hidden states and to the head's weight) at once, and dropped. The backward pass then only
scales the saved gradients. Peak extra memory: one chunk's logits plus the two gradients. Chunks
are about 8 M logits but at least 1,024 tokens (``llmkit.planning.memory.chunk_tokens``: smaller
ones spend more time adding the head's gradient than they save).

Numerics follow the usual path: the matmuls in the autocast dtype (or the inputs' dtype), the
log-softmax in fp32, a sum over the labelled positions. ``benchmarks/train_throughput.py``
measures time and peak memory of both paths; ``tests/unit/objectives/test_head_loss.py`` checks loss
and gradients against ``F.cross_entropy`` on full logits.

:func:`deferred_head` makes a Hugging Face causal LM return its final hidden states instead of
logits (the head's ``forward`` is replaced by the identity on the instance, for one call), so
the loss can use the head's weight here; parameters, names and state dicts are untouched.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from llmkit.planning.memory import chunk_tokens

IGNORE = -100


# Model types whose forward is exactly ``logits = head(final hidden states)``: no logit
# soft-capping (Gemma 2/3), scaling (Cohere, Granite) or other transform after the head, which the
# chunked loss would skip. Others keep the full-logits path.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "gpt2", "mistral", "qwen2", "qwen3"})


def output_head(model: Any) -> Any:
    """The output projection (an ``nn.Linear`` without bias) of a causal LM whose logits are that
    projection and nothing more (``PLAIN_HEAD_MODEL_TYPES``), through the wrappers llmkit puts
    around it (DDP, ``torch.compile``, PEFT); None otherwise."""
    import torch

    inner = model
    for attr in ("module", "_orig_mod"):  # DDP, then a compiled module
        inner = getattr(inner, attr, inner)
    if getattr(getattr(inner, "config", None), "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    return head


def _identity(x: Any) -> Any:
    return x


@contextlib.contextmanager
def deferred_head(head: Any) -> Iterator[None]:
    """While inside, ``head(x)`` returns ``x``: the model's "logits" are its final hidden states."""
    head.forward = _identity
    try:
        yield
    finally:
        del head.forward


def _compute_dtype(hidden: Any) -> Any:
    import torch

    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return hidden.dtype


def _chunk_loss(h: Any, weight: Any, labels: Any) -> tuple[Any, Any, Any]:
    """(summed loss, fp32 logits, the clamped labels) of one chunk."""
    logits = (h @ weight.t()).float()
    lse = logits.logsumexp(-1)
    safe = labels.clamp(min=0)
    picked = logits.gather(1, safe[:, None])[:, 0]
    valid = labels != IGNORE
    return ((lse - picked) * valid).sum(), logits.sub_(lse[:, None]).exp_(), safe


@functools.cache
def _function() -> Any:
    """The autograd function (made on first use: torch is imported lazily in this package)."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Forward computes the loss and both gradients chunk by chunk; backward scales them."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, labels: Any, chunk: int) -> Any:  # type: ignore[override]
            dtype = _compute_dtype(hidden)
            with torch.autocast(hidden.device.type, enabled=False):
                h_all, w = hidden.to(dtype), weight.to(dtype)
                total = torch.zeros((), dtype=torch.float32, device=hidden.device)
                grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
                grad_w = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                          if weight.requires_grad else None)
                # the weight's gradient accumulates in fp32: in place when the chunk's is fp32, else
                # through one reused buffer in the compute dtype (no (V x H) allocation per chunk)
                part = torch.empty(weight.shape, dtype=dtype, device=weight.device) \
                    if grad_w is not None and dtype != torch.float32 else None
                for s in range(0, h_all.size(0), chunk):
                    h, y = h_all[s:s + chunk], labels[s:s + chunk]
                    loss, probs, safe = _chunk_loss(h, w, y)
                    total += loss
                    # d(sum of losses)/d(logits) = softmax - one-hot, on labelled rows only
                    probs[torch.arange(len(y), device=y.device), safe] -= 1.0
                    probs.mul_((y != IGNORE)[:, None])
                    g = probs.to(dtype)
                    if grad_h is not None:
                        grad_h[s:s + chunk] = g @ w
                    if grad_w is not None and part is None:
                        grad_w.addmm_(g.t(), h)
                    elif grad_w is not None:
                        torch.mm(g.t(), h, out=part)
                        grad_w += part
                    # freed before the next chunk's logits are made, not when the names are rebound
                    # after them: one chunk's logits at a time (measured: ~48 MB less at 8 M logits)
                    del loss, probs, g
            ctx.save_for_backward(grad_h, grad_w)
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
            grad_h, grad_w = ctx.saved_tensors
            dh = (grad_h * grad_out).to(grad_h.dtype) if grad_h is not None else None
            dw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
            return dh, dw, None, None

    return LinearCrossEntropy


def linear_cross_entropy(hidden: Any, weight: Any, labels: Any, chunk: int | None = None) -> Any:
    """Summed cross-entropy of ``hidden @ weight.T`` (N x V logits, never all at once) against
    ``labels`` (N,), positions labelled ``IGNORE`` skipped. Differentiable in ``hidden`` and
    ``weight`` (whichever requires grad)."""
    import torch

    chunk = chunk or chunk_tokens(weight.size(0))
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if needs_grad:
        return _function().apply(hidden, weight, labels, chunk)
    dtype = _compute_dtype(hidden)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        for s in range(0, hidden.size(0), chunk):
            total += _chunk_loss(hidden[s:s + chunk].to(dtype), w, labels[s:s + chunk])[0]
    return total


def _chunk_logprobs(h: Any, weight: Any, labels: Any) -> tuple[Any, Any]:
    """(log-probability of each row's label (0 where unlabelled), fp32 softmax) of one chunk."""
    logits = (h @ weight.t()).float()
    lse = logits.logsumexp(-1)
    safe = labels.clamp(min=0)
    picked = (logits.gather(1, safe[:, None])[:, 0] - lse) * (labels != IGNORE)
    return picked, logits.sub_(lse[:, None]).exp_()


@functools.cache
def _logprob_function() -> Any:
    """Per-token log-probabilities through the head in chunks; the backward recomputes each chunk's
    softmax (the gradient of a per-token output needs its incoming gradient, not known ahead)."""
    import torch

    class LinearLogprobs(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, labels: Any, chunk: int) -> Any:  # type: ignore[override]
            dtype = _compute_dtype(hidden)
            with torch.autocast(hidden.device.type, enabled=False):
                w = weight.to(dtype)
                out = torch.cat([_chunk_logprobs(hidden[s:s + chunk].to(dtype), w, labels[s:s + chunk])[0]
                                 for s in range(0, hidden.size(0), chunk)])
            ctx.save_for_backward(hidden, weight, labels)
            ctx.chunk, ctx.dtype = chunk, dtype
            return out

        @staticmethod
        def backward(ctx: Any, grad_out: Any) -> Any:  # type: ignore[override]
            hidden, weight, labels = ctx.saved_tensors
            chunk, dtype = ctx.chunk, ctx.dtype
            grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
                if ctx.needs_input_grad[1] else None
            with torch.autocast(hidden.device.type, enabled=False):
                w = weight.to(dtype)
                for s in range(0, hidden.size(0), chunk):
                    h, y = hidden[s:s + chunk].to(dtype), labels[s:s + chunk]
                    _, probs = _chunk_logprobs(h, w, y)
                    # d log p(y) / d logits = one-hot - softmax, on labelled rows, times the incoming gradient
                    probs.neg_()[torch.arange(len(y), device=y.device), y.clamp(min=0)] += 1.0
                    probs.mul_(((y != IGNORE) * grad_out[s:s + chunk].float())[:, None])
                    g = probs.to(dtype)
                    if grad_h is not None:
                        grad_h[s:s + chunk] = g @ w
                    if grad_w is not None:
                        grad_w += (g.t() @ h).float()
                    del probs, g  # before the next chunk's softmax is made (one chunk's at a time)
            return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None

    return LinearLogprobs


def linear_token_logprobs(hidden: Any, weight: Any, labels: Any, chunk: int | None = None) -> Any:
    """log p(label) of each row of ``hidden @ weight.T`` (N,), 0 where the label is ``IGNORE``,
    without the (N x V) logits at once. Differentiable in ``hidden`` and ``weight``."""
    import torch

    chunk = chunk or chunk_tokens(weight.size(0))
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _logprob_function().apply(hidden, weight, labels, chunk)
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        w = weight.to(dtype)
        return torch.cat([_chunk_logprobs(hidden[s:s + chunk].to(dtype), w, labels[s:s + chunk])[0]
                          for s in range(0, hidden.size(0), chunk)])
