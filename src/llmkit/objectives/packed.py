"""A model's inputs for a batch: plain rows, or packed rows whose examples cannot see each other.

A packed SFT batch (``llmkit.data.sft.collate_packed``) carries ``segments`` (which example of
its row each token belongs to; 0 is padding) and ``position_ids`` restarting at 0 for each
example. Here the segments become the attention mask: causal within an example, nothing across
examples, given to transformers as an additive 4-D float mask (B, 1, T, T), which every attention
implementation applies as it is (SDPA on CPUs; eager). Models that mix sliding-window and full
attention layers (Gemma 2/3, and Qwen 2 or Mistral with a window) get one mask per layer type,
the sliding one also cut to the window. Each example's loss is then its loss alone
(tests/unit/objectives/test_packed.py). Variable-length flash attention on GPUs, which needs no
mask at all, is not wired in yet: the mask costs 4 x T x T bytes per row.
"""

from __future__ import annotations

from typing import Any


def _config(model: Any) -> Any:
    inner = model
    for attr in ("module", "_orig_mod"):  # DDP, then a compiled module
        inner = getattr(inner, attr, inner)
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    return getattr(inner, "config", None)


def block_masks(model: Any, segments: Any, dtype: Any) -> Any:
    """The additive attention mask(s) of packed rows: one (B, 1, T, T) tensor, or a dict of them by
    layer type for models that mix sliding-window and full attention."""
    import torch

    cfg = _config(model)
    t = segments.shape[1]
    i = torch.arange(t, device=segments.device)
    causal = i[:, None] >= i[None, :]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] != 0)
    allowed = (same & causal) | torch.eye(t, dtype=torch.bool, device=segments.device)  # padding sees itself
    window = getattr(cfg, "sliding_window", None)
    kinds = set(getattr(cfg, "layer_types", None) or [])

    def additive(keep: Any) -> Any:
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)[:, None]

    if window and "sliding_attention" in kinds:
        slide = allowed & ((i[:, None] - i[None, :]) < window)
        return {kind: additive(slide if kind == "sliding_attention" else allowed) for kind in kinds}
    if window and not kinds and getattr(cfg, "model_type", None) == "mistral":
        return additive(allowed & ((i[:, None] - i[None, :]) < window))
    return additive(allowed)


def model_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """``input_ids`` with the attention mask (and, for packed rows, the position ids) the model
    is called with."""
    import torch

    if "segments" not in batch:
        return {"input_ids": batch["input_ids"], "attention_mask": batch.get("attention_mask")}
    dtype = torch.get_autocast_dtype(batch["input_ids"].device.type) if torch.is_autocast_enabled() else torch.float32
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
            "attention_mask": block_masks(model, batch["segments"], dtype)}
