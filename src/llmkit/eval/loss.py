"""The loss and the evaluator: one masked cross-entropy, used by training and by `llmkit eval`.

Batches are dicts of numpy arrays as the providers of ``llmkit.data.batches`` make them:
``input_ids`` (B, T), ``labels`` (B, T) aligned so that ``labels[:, t]`` is the target of
position t (``-100``: no loss there), or (B,) class ids for classification, and an optional
``attention_mask`` (B, T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.data.sft import IGNORE_INDEX as IGNORE
from llmkit.device import autocast


def compute_loss(model: Any, batch: dict[str, Any], classify: bool, chunked: bool = False) -> tuple[Any, int, Any]:
    """(mean cross-entropy over the positions with a label, how many there were, the logits).

    Language models: logits (B, T, V) against labels (B, T), ignoring ``IGNORE``; classifiers:
    logits (B, C) against labels (B,). The loss is computed in fp32 whatever the autocast dtype.
    ``chunked``: a language model's loss goes through its output head in chunks of tokens
    (``llmkit.eval.head_loss``: the (B, T, V) logits are never made, and None is returned in their
    place). Only for models the caller knows run the head's weight outside their forward safely:
    plain, DDP or compiled (not FSDP, whose forward gathers the weight, nor Opacus, whose hooks need
    the head's activations).
    """
    import torch.nn.functional as F

    from llmkit.eval.head_loss import deferred_head, linear_cross_entropy, output_head

    labels = batch["labels"]
    head = output_head(model) if chunked and not classify else None
    if head is not None:
        with deferred_head(head):
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
        count = int((labels != IGNORE).sum())
        total = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight, labels.reshape(-1))
        return total / max(count, 1), count, None
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    logits = out.logits.float()
    if classify:
        return F.cross_entropy(logits, labels), int(labels.numel()), logits
    count = int((labels != IGNORE).sum())
    total = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return total / max(count, 1), count, logits


def loss_weight(batch: dict[str, Any], classify: bool) -> int:
    """How many terms ``compute_loss`` averages over for ``batch`` (labelled positions, or examples),
    known before the forward pass: the loop weighs micro-batches by it."""
    labels = batch["labels"]
    return int(labels.shape[0]) if classify else int((labels != IGNORE).sum())


@dataclass(frozen=True)
class EvalResult:
    """Validation metrics over a fixed set of batches.

    ``val_loss``: mean nats per labelled position (or per example, classifiers). Language models:
    ``val_ppl`` and, given a byte table, ``bits_per_byte``. Classifiers: ``val_accuracy`` and the
    confusion matrix (rows: true class, columns: predicted).
    """

    val_loss: float
    count: int
    val_ppl: float | None = None
    bits_per_byte: float | None = None
    val_accuracy: float | None = None
    confusion: list[list[int]] | None = None

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, as metrics.jsonl records them."""
        keys = ("val_loss", "val_ppl", "bits_per_byte", "val_accuracy")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def evaluate(model: Any, batches: list[dict[str, np.ndarray]], precision: str = "fp32", classify: bool = False,
             num_labels: int | None = None, byte_table: np.ndarray | None = None, chunked: bool = True) -> EvalResult:
    """Run ``model`` over ``batches`` once (no gradients, eval mode, restored afterwards).

    ``byte_table``: UTF-8 bytes per token id, for bits per byte. ``num_labels``: classifiers, the
    size of the confusion matrix. ``chunked``: the loss over the head in chunks (``compute_loss``);
    callers pass False for FSDP-wrapped models.
    """
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, count, correct, nbytes = 0.0, 0, 0, 0
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64) if classify and num_labels else None
    with torch.no_grad(), autocast(device, precision):
        for np_batch in batches:
            batch = {k: torch.from_numpy(v).to(device) for k, v in np_batch.items()}
            loss, n, logits = compute_loss(model, batch, classify, chunked)
            loss_sum += float(loss) * n
            count += n
            if classify:
                predicted = logits.argmax(-1)
                correct += int((predicted == batch["labels"]).sum())
                if confusion is not None:
                    np.add.at(confusion, (np_batch["labels"], predicted.cpu().numpy()), 1)
            elif byte_table is not None:
                valid = np_batch["labels"][np_batch["labels"] != IGNORE]
                nbytes += int(byte_table[np.clip(valid, 0, len(byte_table) - 1)].sum())
    model.train(was_training)
    val_loss = loss_sum / max(count, 1)
    if classify:
        return EvalResult(val_loss, count, val_accuracy=correct / max(count, 1),
                          confusion=confusion.tolist() if confusion is not None else None)
    bpb = loss_sum / math.log(2) / max(nbytes, 1) if byte_table is not None else None
    return EvalResult(val_loss, count, val_ppl=math.exp(min(val_loss, 700.0)), bits_per_byte=bpb)
