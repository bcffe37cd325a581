"""The batch provider of an RL run: prompts in, sampled and scored answers (rollouts) out.

Every ``train.rl.steps_per_generation`` optimizer steps this rank takes its share of the next
prompts (``global_batch_size / group_size`` prompts a step over all ranks, each prompt's group on
one rank) and has the objective sample ``group_size`` answers to each, score them and compute
their advantages (``sample``, set by ``llmkit.objectives.rl``); micro-batches are then cut from
that buffer of rows in order. The buffer is part of the data position: a checkpoint taken between
two generations resumes with the very rollouts it had, and the next generation's sampling is
seeded by its round number, so a resumed run computes what the uninterrupted one would have.

A row is (prompt + answer ids, prompt length, advantage, the old per-token log-probabilities when
rollouts are reused, and its statistics). Batches are ``input_ids``/``labels``/``attention_mask``
(labels on the answer tokens, its end-of-turn token included), ``advantages`` (B,),
``old_logps`` (B, T) when present, and ``stat_*`` arrays the objective's metrics read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.data.samplers import ExampleSampler
from llmkit.data.sft import IGNORE_INDEX
from llmkit.errors import UsageError
from llmkit.rundir import RunDir

Row = dict[str, Any]


def read_prompts(out: Path, split: str) -> list[dict[str, Any]]:
    from llmkit.privacy import crypto

    path = out / f"{split}.jsonl"
    if not path.exists():
        raise UsageError(f"{path} is missing", "the RL prompts are made by prepare", "run llmkit prepare first")
    return [json.loads(line) for line in crypto.read_text(path).splitlines() if line.strip()]


def collate_rows(rows: list[Row], pad_id: int) -> dict[str, np.ndarray]:
    """Rows of prompt + answer, right-padded: inputs, labels on the answer, attention, advantages,
    old log-probabilities (when the rows have them) and the rows' statistics."""
    width = max(len(r["ids"]) - 1 for r in rows)
    b = len(rows)
    ids = np.full((b, width), pad_id, np.int64)
    labels = np.full((b, width), IGNORE_INDEX, np.int64)
    attention = np.zeros((b, width), np.int64)
    old = np.zeros((b, width), np.float32) if rows[0].get("old") is not None else None
    for i, r in enumerate(rows):
        seq, start = np.asarray(r["ids"], np.int64), r["prompt_len"]
        ids[i, : len(seq) - 1], attention[i, : len(seq) - 1] = seq[:-1], 1
        labels[i, start - 1 : len(seq) - 1] = seq[start:]
        if old is not None:
            old[i, start - 1 : len(seq) - 1] = r["old"]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attention,
             "advantages": np.asarray([r["advantage"] for r in rows], np.float32)}
    if old is not None:
        batch["old_logps"] = old
    for key in rows[0]["stats"]:
        batch[f"stat_{key}"] = np.asarray([r["stats"][key] for r in rows], np.float64)
    return batch


class RolloutBatches:
    """See the module docstring. ``global_batch_size`` and ``micro_batch_size`` count answers."""

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        out = RunDir(run_dir).task_data("rl")
        from llmkit.data.batches import _read_json

        self.meta = _read_json(out / "meta.json", "RL prompts")
        self.vocab_size, self.pad_id = int(self.meta["vocab_size"]), int(self.meta["pad_id"])
        self.eos_id, self.num_labels, self.id2label = self.pad_id, None, None
        self.prompts = {s: read_prompts(out, s) for s in ("train", "val")}
        rl, tc = cfg.train.rl, cfg.train
        if tc.global_batch_size % (rl.group_size * world):
            raise UsageError(f"train.global_batch_size {tc.global_batch_size} is not a multiple of group_size x ranks "
                             f"({rl.group_size} x {world})", "each prompt's group of answers stays on one rank",
                             "raise global_batch_size to a multiple of it")
        self.per_round = tc.global_batch_size // (rl.group_size * world) * rl.steps_per_generation  # prompts, this rank
        self.sampler = ExampleSampler(len(self.prompts["train"]), tc.seed)
        self.micro, self.rank, self.world, self.group = micro, rank, world, rl.group_size
        self.eval_limit = tc.eval_batches * micro
        self.fingerprint = {"meta": {k: v for k, v in self.meta.items() if k != "pii"}}
        self.buffer: list[Row] = []
        self.round = 0
        self.sample: Callable[[list[dict[str, Any]], int], list[Row]] | None = None
        """Set by the objective: (prompts, round) -> this round's rows, in micro-batch order."""

    def _next_round(self) -> None:
        if self.sample is None:
            raise RuntimeError("the RL objective has not attached its sampler (Rl.for_run)")
        self.sampler.skip(self.rank * self.per_round)
        mine = self.sampler.take(self.per_round)
        self.sampler.skip((self.world - 1 - self.rank) * self.per_round)
        self.buffer = self.sample([self.prompts["train"][i] for i in mine], self.round)
        self.round += 1

    def next_micro_batch(self) -> dict[str, np.ndarray]:
        if not self.buffer:
            self._next_round()
        rows, self.buffer = self.buffer[: self.micro], self.buffer[self.micro :]
        return collate_rows(rows, self.pad_id)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """The validation prompts, ``micro`` a batch: ``prompt_index`` (which the objective samples
        an answer to and scores) and the prompt as a next-token batch (what a model-to-model
        comparison of final/ scores)."""
        from llmkit.data.sft import collate_padded

        val = self.prompts["val"][: self.eval_limit]
        out = []
        for s in range(0, len(val), self.micro):
            part = val[s : s + self.micro]
            rows = [(np.asarray(p["prompt_ids"], np.int64), np.ones(len(p["prompt_ids"]), np.uint8)) for p in part]
            batch = collate_padded(rows, max(len(r[0]) for r in rows), self.pad_id)
            batch["prompt_index"] = np.arange(s, s + len(part), dtype=np.int64)
            out.append(batch)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "round": self.round, "buffer": self.buffer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.round, self.buffer = int(state["round"]), list(state["buffer"])
