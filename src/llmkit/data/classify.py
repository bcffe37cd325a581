"""Sequence classification data: JSONL or CSV rows with ``text`` and ``label``.

Labels are strings (numbers are read as their text); the label map (label -> class id, sorted
by label) comes from the training split and is saved as ``labels.json``. A validation label
that never occurs in training is an error naming its line, because the model could never
predict it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.jsonl import json_lines
from llmkit.errors import UsageError


def read_classify_file(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(where, text, label) for every row of a .jsonl or .csv file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"classification file {p} not found", "", "set data.classify_path")
    if p.suffix.lower() == ".csv":
        yield from _read_csv(p)
    else:
        yield from _read_jsonl(p)


def _row(obj: Any, where: str) -> tuple[str, str, str]:
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected an object with text and label", "", "fix that line")
    for name in ("text", "label"):
        if name not in obj or obj[name] is None or obj[name] == "":
            raise UsageError(f"{where}: field {name!r} is missing",
                             f"found: {', '.join(map(str, obj)) or 'no fields'}",
                             "every row needs text and label")
    if not isinstance(obj["text"], str) or not isinstance(obj["label"], (str, int, bool)):
        raise UsageError(f"{where}: text must be a string and label a string or integer", "",
                         "fix that line")
    return where, obj["text"], str(obj["label"])


def _read_jsonl(p: Path) -> Iterator[tuple[str, str, str]]:
    with open(p, encoding="utf-8", errors="strict") as fh:
        try:
            for number, obj in json_lines(fh, p):
                yield _row(obj, f"{p}, line {number}")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{p}: invalid UTF-8", str(exc)[:200], "save the file as UTF-8") from None


def _read_csv(p: Path) -> Iterator[tuple[str, str, str]]:
    with open(p, encoding="utf-8", newline="") as fh:
        try:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise UsageError(f"{p}: the header must name 'text' and 'label' columns",
                                 f"found: {', '.join(reader.fieldnames or []) or 'no header'}",
                                 "add a header row: text,label")
            for row in reader:
                yield _row(row, f"{p}, line {reader.line_num}")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{p}: invalid UTF-8", str(exc)[:200], "save the file as UTF-8") from None
        except csv.Error as exc:
            raise UsageError(f"{p}: malformed CSV", str(exc), "check the quoting") from None


def label_map(train_labels: list[str]) -> dict[str, int]:
    """label -> class id, sorted by label so the map is stable."""
    return {label: i for i, label in enumerate(sorted(set(train_labels)))}


def check_val_labels(rows: list[tuple[str, str]], labels: dict[str, int]) -> None:
    """Refuse a validation label the training split never had, naming its line."""
    for where, label in rows:
        if label not in labels:
            raise UsageError(f"{where}: label {label!r} never appears in the training split",
                             f"training labels: {', '.join(labels)}",
                             "add training examples with that label, or fix the label")


def collate_classify(examples: list[np.ndarray], targets: list[int], seq_len: int,
                     pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded input_ids, attention_mask (B, T) and labels (B,)."""
    b = len(examples)
    input_ids = np.full((b, seq_len), pad_id, dtype=np.int64)
    attention = np.zeros((b, seq_len), dtype=np.int64)
    for row, ids in enumerate(examples):
        ids = ids[:seq_len]
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention,
            "labels": np.asarray(targets, dtype=np.int64)}
