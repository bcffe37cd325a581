"""What the loop trains on, per task: micro-batches, fixed eval batches, and a resumable position.

Every task gives the loop the same thing: ``next_micro_batch()`` returning numpy arrays
(``input_ids`` and ``labels``, already aligned: ``labels[:, t]`` is the target of position t,
``-100`` where no loss is taken; classification labels are (B,)), plus ``eval_batches()``,
``state_dict()`` / ``load_state_dict()`` and a ``fingerprint`` of the data for resume checks.

Many ranks: a global batch is cut into chunks of one micro-batch; micro-batch k of rank r is chunk
``k * world + r``. Every rank walks the same stream of examples (skipping the others' chunks), so
the examples of a step, and the saved position, are the same for any world size; with one rank
the order is the stream's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.data.classify import collate_classify
from llmkit.data.ragged import Ragged, read_ragged
from llmkit.data.samplers import ExampleSampler, WindowSampler, eval_windows
from llmkit.data.sft import collate_packed, collate_padded
from llmkit.data.shards import open_tokens, read_meta
from llmkit.errors import UsageError
from llmkit.rundir import RunDir


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise UsageError(f"no prepared {what} in {path.parent} ({path.name} is missing)",
                         f"the {what} is written by `llmkit prepare`", "run: llmkit prepare --config <run.yaml>")
    from llmkit.privacy import crypto

    return json.loads(crypto.read_text(path))


class PretrainBatches:
    """Random windows of the token shards; eval on fixed, evenly spaced validation windows."""

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        data = RunDir(run_dir).data
        meta = read_meta(data)
        self.vocab_size, self.eos_id, self.pad_id = meta.vocab_size, meta.eos_id, None
        self.num_labels, self.id2label = None, None
        self.fingerprint = {"source_sha256": meta.source_sha256, "tokenizer_sha256": meta.tokenizer_sha256,
                            "train_tokens": meta.train_tokens}
        seq = cfg.train.sequence_length_tokens
        train = open_tokens(data, "train")
        if len(train) < micro * (seq + 1):
            raise UsageError(f"the training data ({len(train):,} tokens) is smaller than one micro-batch "
                             f"({micro} x {seq + 1} tokens)", "", "add data, or lower the batch or sequence length")
        self.sampler = WindowSampler(train, seq, cfg.train.global_batch_size, cfg.train.seed)
        self._val = open_tokens(data, "val")
        self._eval_count = cfg.train.eval_batches * micro
        self.micro, self.seq, self.rank, self.world = micro, seq, rank, world

    def next_micro_batch(self) -> dict[str, np.ndarray]:
        m = self.micro
        x, y = self.sampler.next_batch(m, skip_before=self.rank * m, skip_after=(self.world - 1 - self.rank) * m)
        return {"input_ids": x, "labels": y}

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        windows = eval_windows(self._val, self.seq, self._eval_count)
        return [{"input_ids": np.stack([w[0] for w in windows[i : i + self.micro]]),
                 "labels": np.stack([w[1] for w in windows[i : i + self.micro]])}
                for i in range(0, len(windows), self.micro)]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") == "windows" and "rank" in state:  # llmkit <= 0.x: counted micro-batches
            state = {"kind": "windows", "seed": state["seed"], "position": int(state["position"]) * self.micro}
        self.sampler.load_state_dict(state)


class _ExampleBatches:
    """Shared by SFT and classification: ragged examples, seeded epochs, padded collation."""

    sub = ""

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        out = RunDir(run_dir).task_data(self.sub)
        self.meta = _read_json(out / "meta.json", f"{self.sub} data")
        self.vocab_size, self.pad_id = int(self.meta["vocab_size"]), int(self.meta["pad_id"])
        self.train = read_ragged(out, "train", self.meta["dtype"], with_mask=self.sub == "sft")
        self.val = read_ragged(out, "val", self.meta["dtype"], with_mask=self.sub == "sft")
        if len(self.train) < micro:
            raise UsageError(f"the training split has {len(self.train)} examples, fewer than one micro-batch "
                             f"({micro})", "", "add examples or lower train.micro_batch_size")
        self.sampler = ExampleSampler(len(self.train), cfg.train.seed)
        self.micro, self.seq, self.rank, self.world = micro, cfg.train.sequence_length_tokens, rank, world
        self.eval_limit = cfg.train.eval_batches * micro
        self.fingerprint = {"meta": self.meta}
        self.num_labels: int | None = None
        self.id2label: dict[int, str] | None = None

    def _my_indices(self) -> list[int]:
        """This rank's next micro-batch of example indices (the other ranks' chunks skipped)."""
        self.sampler.skip(self.rank * self.micro)
        mine = self.sampler.take(self.micro)
        self.sampler.skip((self.world - 1 - self.rank) * self.micro)
        return mine

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class SftBatches(_ExampleBatches):
    """Chat examples with loss masks; padded (one per row) or packed."""

    sub = "sft"

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        super().__init__(cfg, run_dir, micro, rank, world)
        self.packing = cfg.data.sft_packing
        self.eos_id = self.pad_id
        self._carry: int | None = None

    def _collate(self, split: Ragged, indices: list[int]) -> dict[str, np.ndarray]:
        batch = collate_padded([split.example(i) for i in indices], self.seq, self.pad_id)  # type: ignore[misc]
        return {"input_ids": batch["input_ids"], "labels": batch["labels"],
                "attention_mask": batch["attention_mask"]}

    def _next_row(self) -> list[int]:
        """Example indices for one packed row: whole examples while their inputs (an example of L
        tokens feeds L - 1) fit in a window; the one that does not fit starts the next row."""
        row: list[int] = []
        used = 0
        while True:
            index = self._carry if self._carry is not None else self.sampler.next_index()
            self._carry = None
            length = min(len(self.train.example(index)[0]), self.seq + 1) - 1
            if row and used + length > self.seq:
                self._carry = index
                return row
            row.append(index)
            used += length

    def _packed(self) -> dict[str, np.ndarray]:
        rows: list[list[int]] = []
        for chunk in range(self.world):  # every rank packs every chunk (lengths only), keeps its own
            chunk_rows = [self._next_row() for _ in range(self.micro)]
            if chunk == self.rank:
                rows = chunk_rows
        parts = [[self.train.example(i) for i in row] for row in rows]
        return collate_packed(parts, self.seq, self.pad_id)  # type: ignore[arg-type]

    def collate_train(self, indices: list[int]) -> dict[str, np.ndarray]:
        """A batch of these training examples, one per row (privacy.dp draws its own examples)."""
        return self._collate(self.train, indices)

    def next_micro_batch(self) -> dict[str, np.ndarray]:
        if self.packing:
            return self._packed()
        return self._collate(self.train, self._my_indices())

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        n = min(len(self.val), self.eval_limit)
        return [self._collate(self.val, list(range(i, min(i + self.micro, n)))) for i in range(0, n, self.micro)]

    def state_dict(self) -> dict[str, Any]:
        return {**self.sampler.state_dict(), "carry": self._carry}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._carry = state.pop("carry", None)
        self.sampler.load_state_dict(state)


class ClassifyBatches(_ExampleBatches):
    """Labelled texts; labels are class ids (B,)."""

    sub = "classify"

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        super().__init__(cfg, run_dir, micro, rank, world)
        out = RunDir(run_dir).task_data("classify")
        from llmkit.privacy import crypto

        self.labels = {s: crypto.load_npy(out / f"{s}.labels.npy") for s in ("train", "val")}
        label_map = _read_json(out / "labels.json", "label map")
        self.num_labels = len(label_map)
        self.id2label = {int(v): str(k) for k, v in label_map.items()}
        self.eos_id = self.pad_id

    def _collate(self, split: str, indices: list[int]) -> dict[str, np.ndarray]:
        data = self.train if split == "train" else self.val
        return collate_classify([data.example(i)[0] for i in indices],
                                [int(self.labels[split][i]) for i in indices], self.seq, self.pad_id)

    def collate_train(self, indices: list[int]) -> dict[str, np.ndarray]:
        """A batch of these training examples (privacy.dp draws its own examples)."""
        return self._collate("train", indices)

    def next_micro_batch(self) -> dict[str, np.ndarray]:
        return self._collate("train", self._my_indices())

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        n = min(len(self.val), self.eval_limit)
        return [self._collate("val", list(range(i, min(i + self.micro, n)))) for i in range(0, n, self.micro)]


class PreferenceBatches:
    """Preference examples (``llmkit.data.preference``): pairs as 2P rows (the chosen answers, then
    the rejected ones in the same order), or for KTO single answers with their labels and the
    mismatched ``kl_*`` rows (each prompt with the previous row's answer, as TRL's KTO makes them).
    ``global_batch_size`` and ``micro_batch_size`` count examples (a pair is one). Pairs given to
    KTO count as a desirable and an undesirable answer. ``reference`` (set by the objective): the
    precomputed reference log-probabilities per split, added to each batch as ``ref_logps``."""

    def __init__(self, cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0, world: int = 1):
        out = RunDir(run_dir).task_data("preference")
        self.meta = _read_json(out / "meta.json", "preference data")
        self.vocab_size, self.pad_id = int(self.meta["vocab_size"]), int(self.meta["pad_id"])
        self.eos_id, self.num_labels, self.id2label = self.pad_id, None, None
        self.kto = cfg.train.preference.loss == "kto"
        self.splits = {s: self._read_split(out, s) for s in ("train", "val")}
        n = self.size("train")
        if not self.kto and self.meta["train_unpaired"]:
            raise UsageError(f"the preference data has {self.meta['train_unpaired']} unpaired (prompt, completion, "
                             f"label) examples; the {cfg.train.preference.loss} loss needs pairs",
                             "only KTO learns from single labelled answers",
                             "set train.preference.loss: kto, or give {prompt, chosen, rejected} pairs")
        if n < micro:
            raise UsageError(f"the training split has {n} preference examples, fewer than one micro-batch ({micro})",
                             "", "add examples or lower train.micro_batch_size")
        if self.kto and micro < 2:
            raise UsageError("KTO needs at least 2 examples per micro-batch", "its KL term pairs each prompt with "
                             "another example's answer", "set train.micro_batch_size to 2 or more")
        self.sampler = ExampleSampler(n, cfg.train.seed)
        self.micro, self.seq, self.rank, self.world = micro, cfg.train.sequence_length_tokens, rank, world
        self.eval_limit = cfg.train.eval_batches * micro
        self.fingerprint = {"meta": self.meta, "kto": self.kto}
        self.reference: dict[str, np.ndarray] | None = None

    def _read_split(self, out: Path, split: str) -> dict[str, Any]:
        from llmkit.privacy import crypto

        dtype = self.meta["dtype"]
        parts = {p: read_ragged(out, f"{split}.{p}", dtype, with_mask=True) for p in ("chosen", "rejected", "completion")}
        labels = crypto.load_npy(out / f"{split}.labels.npy").astype(bool)
        if not self.kto:
            return {"pairs": (parts["chosen"], parts["rejected"])}
        # KTO examples: the unpaired completions, then each pair's chosen (desirable) and rejected
        items = [(parts["completion"], i, bool(labels[i])) for i in range(len(parts["completion"]))]
        for i in range(len(parts["chosen"])):
            items += [(parts["chosen"], i, True), (parts["rejected"], i, False)]
        return {"items": items}

    def size(self, split: str) -> int:
        part = self.splits[split]
        return len(part["pairs"][0]) if "pairs" in part else len(part["items"])

    def collate(self, split: str, indices: list[int], reference: bool = True) -> dict[str, np.ndarray]:
        """The batch of these examples of ``split`` (``reference``: with the precomputed reference)."""
        part = self.splits[split]
        if "pairs" in part:
            chosen, rejected = part["pairs"]
            rows = [chosen.example(i) for i in indices] + [rejected.example(i) for i in indices]
            batch = collate_padded(rows, self.seq, self.pad_id)  # type: ignore[arg-type]
            if reference and self.reference is not None:
                ref = self.reference[split][indices]
                batch["ref_logps"] = np.concatenate([ref[:, 0], ref[:, 1]]).astype(np.float32)
            return batch
        items = [part["items"][i] for i in indices]
        rows = [store.example(i) for store, i, _ in items]
        batch = collate_padded(rows, self.seq, self.pad_id)  # type: ignore[arg-type]
        kl = collate_padded([_swap_answer(rows[k], rows[k - 1], self.seq) for k in range(len(rows))], self.seq,
                            self.pad_id)
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch["kto_label"] = np.asarray([label for _, _, label in items], dtype=np.int64)
        return batch

    def next_micro_batch(self) -> dict[str, np.ndarray]:
        self.sampler.skip(self.rank * self.micro)
        mine = self.sampler.take(self.micro)
        self.sampler.skip((self.world - 1 - self.rank) * self.micro)
        return self.collate("train", mine)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        n = min(self.size("val"), self.eval_limit)
        starts = range(0, n, self.micro)
        batches = [list(range(i, min(i + self.micro, n))) for i in starts]
        if self.kto and len(batches) > 1 and len(batches[-1]) < 2:  # KTO's KL pairs need two rows
            batches[-2] += batches.pop()
        return [self.collate("val", b) for b in batches]

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def _swap_answer(own: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray],
                 seq: int) -> tuple[np.ndarray, np.ndarray]:
    """``own``'s prompt followed by ``other``'s answer (the prompt cut from its left to fit)."""
    ids, mask = own
    o_ids, o_mask = other
    prompt = ids[: int(np.argmax(mask > 0))] if mask.any() else ids
    answer = o_ids[o_mask > 0]
    room = max(1, seq + 1 - len(answer))
    prompt = prompt[-room:]
    return (np.concatenate([prompt, answer])[: seq + 1],
            np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(answer), np.uint8)])[: seq + 1])


def task_batches(cfg: RunConfig, run_dir: Path, micro: int, rank: int = 0,
                 world: int = 1) -> PretrainBatches | SftBatches | ClassifyBatches | PreferenceBatches:
    """The batch provider for the config's task (rank ``rank`` of ``world``'s share of each global batch)."""
    kinds = {"pretrain": PretrainBatches, "sft": SftBatches, "classify": ClassifyBatches,
             "preference": PreferenceBatches}
    return kinds[cfg.train.task](cfg, run_dir, micro, rank, world)
