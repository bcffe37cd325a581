"""Sequence classification (train.task classify): cross-entropy of the class logits (B, C)
against the labels (B,); accuracy, macro-F1 and the confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.objectives.base import EvalResult, Objective


class ClassifyMetrics:
    """Loss, accuracy and the confusion matrix (rows: true class, columns: predicted)."""

    def __init__(self, num_labels: int | None) -> None:
        self.loss_sum, self.count, self.correct = 0.0, 0, 0
        self.confusion = np.zeros((num_labels, num_labels), dtype=np.int64) if num_labels else None

    def add(self, batch: dict[str, Any], loss: float, count: int, out: Any) -> None:
        self.loss_sum += loss * count
        self.count += count
        predicted = out.argmax(-1).cpu().numpy()
        self.correct += int((predicted == batch["labels"]).sum())
        if self.confusion is not None:
            np.add.at(self.confusion, (batch["labels"], predicted), 1)

    def result(self) -> EvalResult:
        return EvalResult(self.loss_sum / max(self.count, 1), self.count,
                          val_accuracy=self.correct / max(self.count, 1),
                          confusion=self.confusion.tolist() if self.confusion is not None else None)


def macro_f1(confusion: np.ndarray) -> float:
    """The mean over classes of F1 (a class never predicted nor present: 0)."""
    f1s = []
    for c in range(confusion.shape[0]):
        tp = confusion[c, c]
        precision = tp / max(confusion[:, c].sum(), 1)
        recall = tp / max(confusion[c, :].sum(), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(f1s))


class Classification(Objective):
    """A label per text, from the model's classification head."""

    name = "classify"
    head = "sequence_classification"
    generates = False

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits.float()
        labels = batch["labels"]
        return F.cross_entropy(logits, labels), int(labels.numel()), logits

    def loss_weight(self, batch: dict[str, Any]) -> int:
        return int(batch["labels"].shape[0])

    def example_losses(self, model: Any, batch: dict[str, Any]) -> Any:
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits.float()
        return F.cross_entropy(logits, batch["labels"], reduction="none")

    def metrics(self, data: Any, tokenizer: Any = None) -> ClassifyMetrics:
        return ClassifyMetrics(data.num_labels)

    def report(self, result: EvalResult, data: Any) -> dict[str, Any]:
        labels = data.id2label or {}
        confusion = np.array(result.confusion, dtype=np.int64)
        return {"val_accuracy": result.val_accuracy, "macro_f1": macro_f1(confusion),
                "labels": [labels[i] for i in range(len(labels))], "confusion_matrix": confusion.tolist(),
                "val_examples": result.count}


OBJECTIVE = Classification()
