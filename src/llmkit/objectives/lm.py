"""Language modelling (train.task pretrain and sft): next-token cross-entropy over the positions
that have a label (SFT masks the prompt with -100), perplexity and bits per byte."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from llmkit.data.sft import IGNORE_INDEX as IGNORE
from llmkit.objectives.base import EvalResult, Objective
from llmkit.objectives.packed import model_inputs


def token_bytes(tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes each token id stands for (special tokens: 0)."""
    vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    table = np.zeros(vocab, dtype=np.int64)
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    byte_level = pre is not None and "ByteLevel" in repr(pre)
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab)))
    for i, tok in enumerate(tokens):
        if i in special or tok is None:
            continue
        # byte-level BPE: one character per byte; otherwise decode (approximate at partial chars)
        table[i] = len(tok) if byte_level else len(tokenizer.decode([i]).encode("utf-8"))
    return table


class LmMetrics:
    """Loss, perplexity and (given a byte table) bits per byte."""

    def __init__(self, byte_table: np.ndarray | None) -> None:
        self.byte_table, self.loss_sum, self.count, self.nbytes = byte_table, 0.0, 0, 0

    def add(self, batch: dict[str, Any], loss: float, count: int, out: Any) -> None:
        self.loss_sum += loss * count
        self.count += count
        if self.byte_table is not None:
            labels = batch["labels"]
            valid = labels[labels != IGNORE]
            self.nbytes += int(self.byte_table[np.clip(valid, 0, len(self.byte_table) - 1)].sum())

    def result(self) -> EvalResult:
        val_loss = self.loss_sum / max(self.count, 1)
        bpb = self.loss_sum / math.log(2) / max(self.nbytes, 1) if self.byte_table is not None else None
        return EvalResult(val_loss, self.count, val_ppl=math.exp(min(val_loss, 700.0)), bits_per_byte=bpb)


class LanguageModeling(Objective):
    """Next-token prediction; the loss over the vocabulary in chunks where the model allows it."""

    name = "lm"
    head = "causal_lm"
    generates = True

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        """Mean cross-entropy of logits (B, T, V) against labels (B, T), ignoring -100. ``chunked``:
        through the output head in chunks of tokens (``llmkit.objectives.head_loss``: the (B, T, V)
        logits are never made, and None is returned in their place). Only for models the caller
        knows run the head's weight outside their forward safely: plain, DDP or compiled (not
        FSDP, whose forward gathers the weight, nor Opacus, whose hooks need the head's activations)."""
        import torch.nn.functional as F

        from llmkit.objectives.head_loss import deferred_head, linear_cross_entropy, output_head

        labels = batch["labels"]
        head = output_head(model) if chunked else None
        if head is not None:
            with deferred_head(head):
                hidden = model(**model_inputs(model, batch)).logits
            count = int((labels != IGNORE).sum())
            total = linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), head.weight, labels.reshape(-1))
            return total / max(count, 1), count, None
        logits = model(**model_inputs(model, batch)).logits.float()
        count = int((labels != IGNORE).sum())
        total = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE,
                                reduction="sum")
        return total / max(count, 1), count, logits

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def example_losses(self, model: Any, batch: dict[str, Any]) -> Any:
        """Each sequence's mean loss over its labelled tokens (B,)."""
        import torch.nn.functional as F

        logits = model(**model_inputs(model, batch)).logits.float()
        labels = batch["labels"]
        per_token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")  # (B, T)
        counts = (labels != IGNORE).sum(dim=1).clamp(min=1)
        return per_token.sum(dim=1) / counts

    def metrics(self, data: Any, tokenizer: Any = None) -> LmMetrics:
        return LmMetrics(token_bytes(tokenizer) if tokenizer is not None else None)

    def report(self, result: EvalResult, data: Any) -> dict[str, Any]:
        return {**result.metrics(), "val_tokens": result.count}


OBJECTIVE = LanguageModeling()
