"""Seeded batch samplers whose position is saved in checkpoints, so resumes continue exactly.

- :class:`WindowSampler` (pretraining): random contiguous windows of a token memmap. Example j is
  a pure function of (seed, global batch, j): the whole state is the count of examples drawn.
- :class:`ExampleSampler` (SFT, classification): examples in a fresh seeded permutation every
  epoch; the state is (epoch, cursor).
- :func:`eval_windows`: fixed, evenly spaced validation windows (the same every evaluation).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.errors import UsageError


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(list(key)))


class WindowSampler:
    """Random windows of ``tokens``; ``y`` is ``x`` shifted by one token.

    Example j of the run (counted over every rank) starts where the ``j % global_batch``-th draw of
    ``rng(seed, j // global_batch)`` says: a pure function of (seed, global batch, j), so the
    examples of each optimizer step are the same whatever the micro-batch or the number of ranks.
    The state is the count of examples drawn or skipped so far.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, global_batch: int, seed: int):
        if len(tokens) < seq_len + 1:
            raise UsageError(
                f"the data has {len(tokens):,} tokens, fewer than one sequence of {seq_len + 1}",
                "a training window needs sequence_length_tokens + 1 tokens",
                "add data or lower train.sequence_length_tokens",
            )
        self.tokens, self.seq_len, self.global_batch, self.seed = tokens, seq_len, global_batch, seed
        self.position = 0
        self._cached: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.int64))

    def _starts(self, step: int) -> np.ndarray:
        if self._cached[0] != step:
            high = len(self.tokens) - self.seq_len - 1
            self._cached = (step, _rng(self.seed, step).integers(0, high + 1, size=self.global_batch))
        return self._cached[1]

    def windows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Examples ``first`` .. ``first + count - 1``: (x, y) int64 arrays of shape (count, T)."""
        starts = [int(self._starts(j // self.global_batch)[j % self.global_batch]) for j in range(first, first + count)]
        rows = np.stack([np.asarray(self.tokens[s : s + self.seq_len + 1]) for s in starts]).astype(np.int64)
        return rows[:, :-1], rows[:, 1:]

    def next_batch(self, count: int, skip_before: int = 0, skip_after: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Skip ``skip_before`` examples (other ranks'), take ``count``, skip ``skip_after``."""
        self.position += skip_before
        batch = self.windows(self.position, count)
        self.position += count + skip_after
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "windows", "seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "windows" or state.get("seed") != self.seed:
            raise UsageError("the checkpoint's data position belongs to another sampler or seed",
                             f"saved: {state}", "resume with the config the checkpoint was made with")
        self.position = int(state["position"])


def eval_windows(tokens: np.ndarray, seq_len: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` evenly spaced (x, y) windows of shape (T,), the same on every call."""
    high = len(tokens) - seq_len - 1
    if high < 0:
        raise UsageError(
            f"the validation split has {len(tokens):,} tokens, fewer than one sequence of {seq_len + 1}",
            "evaluation needs at least one full window",
            "raise data.val_fraction, add data, or lower train.sequence_length_tokens",
        )
    starts = np.unique(np.linspace(0, high, num=max(1, count), dtype=np.int64))
    rows = [np.asarray(tokens[s : s + seq_len + 1]).astype(np.int64) for s in starts]
    return [(r[:-1], r[1:]) for r in rows]


class ExampleSampler:
    """Indices of ``n`` examples, reshuffled (seeded) every epoch."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise UsageError("the training split has no examples", "", "add examples to the data file")
        self.n, self.seed = n, seed
        self.epoch, self.cursor = 0, 0
        self._order = _rng(seed, 0).permutation(n)

    def next_index(self) -> int:
        """The next example index; a new permutation starts each epoch."""
        if self.cursor == self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = _rng(self.seed, self.epoch).permutation(self.n)
        index = int(self._order[self.cursor])
        self.cursor += 1
        return index

    def take(self, count: int) -> list[int]:
        """The next ``count`` indices."""
        return [self.next_index() for _ in range(count)]

    def skip(self, count: int) -> None:
        """Pass over ``count`` indices (another rank's share)."""
        for _ in range(count):
            self.next_index()

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "examples", "seed": self.seed, "n": self.n, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "examples" or state.get("seed") != self.seed or state.get("n") != self.n:
            raise UsageError("the checkpoint's data position belongs to another dataset or seed",
                             f"saved: {state}", "resume with the data the checkpoint was made with")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = _rng(self.seed, self.epoch).permutation(self.n)
