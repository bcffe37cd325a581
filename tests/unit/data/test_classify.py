"""Classification files: JSONL and CSV, label maps, unseen labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmkit.data.classify import check_val_labels, collate_classify, label_map, read_classify_file
from llmkit.errors import UsageError


def test_jsonl_and_csv(tmp_path: Path) -> None:
    j = tmp_path / "a.jsonl"
    j.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": 0}\n')
    assert [r[1:] for r in read_classify_file(j)] == [("good", "pos"), ("bad", "0")]
    c = tmp_path / "a.csv"
    c.write_text('text,label\n"hello, world",greet\nbye,part\n')
    assert [r[1:] for r in read_classify_file(c)] == [("hello, world", "greet"), ("bye", "part")]


def test_missing_field_and_header(tmp_path: Path) -> None:
    j = tmp_path / "a.jsonl"
    j.write_text('{"text": "good", "label": "pos"}\n{"text": "no label"}\n')
    with pytest.raises(UsageError, match=r"line 2: field 'label' is missing"):
        list(read_classify_file(j))
    c = tmp_path / "a.csv"
    c.write_text("sentence,category\nx,y\n")
    with pytest.raises(UsageError, match="header must name 'text' and 'label'"):
        list(read_classify_file(c))


def test_label_never_seen_in_train() -> None:
    labels = label_map(["b", "a", "b"])
    assert labels == {"a": 0, "b": 1}
    with pytest.raises(UsageError, match=r"f, line 9: label 'c' never appears"):
        check_val_labels([("f, line 9", "c")], labels)


def test_collate() -> None:
    b = collate_classify([np.array([5, 6, 7]), np.array([8])], [1, 0], seq_len=2, pad_id=3)
    assert b["input_ids"].tolist() == [[5, 6], [8, 3]]
    assert b["attention_mask"].tolist() == [[1, 1], [1, 0]] and b["labels"].tolist() == [1, 0]
