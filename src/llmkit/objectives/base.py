"""The interface of a training objective, and the metrics record every objective fills.

Batches are dicts of arrays as the providers of ``llmkit.data.batches`` make them: ``input_ids``
(B, T), ``labels`` (B, T) aligned so that ``labels[:, t]`` is the target of position t (``-100``:
no loss there), or (B,) class ids for classification, and an optional ``attention_mask`` (B, T).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from llmkit.config.schema import RunConfig


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
    extra: dict[str, float] | None = None
    """An objective's own validation metrics (preference: val_reward_accuracy, ...)."""

    def metrics(self) -> dict[str, float]:
        """The scalar metrics, as metrics.jsonl records them."""
        keys = ("val_loss", "val_ppl", "bits_per_byte", "val_accuracy")
        return {**{k: getattr(self, k) for k in keys if getattr(self, k) is not None}, **(self.extra or {})}


class Metrics(Protocol):
    """Accumulates one evaluation pass: ``add`` per batch, then ``result``."""

    def add(self, batch: dict[str, Any], loss: float, count: int, out: Any) -> None:
        """One batch: its arrays (numpy), its mean loss, how many terms, the objective's output."""

    def result(self) -> EvalResult:
        """The metrics of every batch added."""


class Objective:
    """What the loop and the evaluator need from one way of learning. Subclasses set the class
    attributes and implement the methods; the module of each sets ``OBJECTIVE`` to an instance."""

    name: ClassVar[str]
    head: ClassVar[Literal["causal_lm", "sequence_classification"]]
    """The model it trains and saves in final/: a causal LM or a sequence classifier."""
    generates: ClassVar[bool]
    """Whether the trained model generates text (eval samples, canaries)."""
    section: ClassVar[str | None] = None
    """The config section holding this objective's own settings (None: it has none)."""
    compiles: ClassVar[bool] = True
    """Whether train.compile may compile its training step (False: it always trains eager)."""

    def check(self, cfg: RunConfig) -> None:
        """Refuse, with a ConfigError, what this objective cannot train (nothing by default)."""

    def batches(self, cfg: RunConfig, run_root: Path, micro: int, rank: int = 0, world: int = 1) -> Any:
        """The resumable batch provider of this rank (``llmkit.data.batches``)."""
        from llmkit.data.batches import task_batches

        return task_batches(cfg, run_root, micro, rank, world)

    def for_run(self, cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str,
                log: Any, starting: bool = True, is_main: bool = True) -> Objective:
        """This objective as one run trains or evaluates with it: what it needs beyond the batch (a
        reference model, say) made from the run's config, its ``model`` (the starting weights when
        ``starting``, else a trained model) and its data. Default: itself."""
        return self

    def standalone(self) -> Objective:
        """The objective that scores a model on its own, without what ``for_run`` attached (the
        merge check of final/ compares two models with it). Default: itself."""
        return self

    def step_metrics(self, out: Any) -> dict[str, tuple[float, float]]:
        """(sum, count) per statistic of one micro-batch's ``loss`` output, which the loop adds up
        over the step (all ranks) and records as sum / count beside the loss. Default: none."""
        return {}

    def loss(self, model: Any, batch: dict[str, Any], chunked: bool = False) -> tuple[Any, int, Any]:
        """(mean loss over the batch's terms, how many terms, the output the metrics need). The loss
        is computed in fp32 whatever the autocast dtype. ``chunked``: the caller allows the loss
        to run the output head's weight outside the model's forward (see ``head_loss``)."""
        raise NotImplementedError

    def loss_weight(self, batch: dict[str, Any]) -> int:
        """How many terms ``loss`` averages over, known before the forward pass: the loop weighs
        micro-batches by it."""
        raise NotImplementedError

    def example_losses(self, model: Any, batch: dict[str, Any]) -> Any:
        """Each example's own loss (B,), for per-example gradients (privacy.dp)."""
        raise NotImplementedError

    def metrics(self, data: Any, tokenizer: Any = None) -> Metrics:
        """A fresh accumulator for one evaluation pass over ``data``'s validation batches
        (``tokenizer``: for metrics that need it, such as bits per byte)."""
        raise NotImplementedError

    def report(self, result: EvalResult, data: Any) -> dict[str, Any]:
        """The metrics of eval.json from an evaluation's result."""
        return {**result.metrics()}
