"""prepare(): tokenizer + shards / SFT / classification sets in the run directory, all-or-nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.config.load import validate_config
from llmkit.data.corpus import iter_documents
from llmkit.data.prepare import prepare
from llmkit.data.ragged import read_ragged
from llmkit.data.shards import is_validation, open_tokens, read_meta
from llmkit.data.tokenizer import load_tokenizer
from llmkit.errors import UsageError


def config(tmp_path: Path, **sections):  # type: ignore[no-untyped-def]
    data = {"name": "t", "runs_root": str(tmp_path / "runs"), "tokenizer": {"vocab_size": 512},
            "train": {"sequence_length_tokens": 64}, "model": {"max_position_embeddings": 64}}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate_config(data)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pretrain_shards_hold_the_corpus_exactly(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    result = prepare(cfg)
    run = result.run_dir
    meta = read_meta(run / "data")
    tok = load_tokenizer(run / "tokenizer")
    docs = list(iter_documents(cfg.data))
    assert meta.train_documents + meta.val_documents == len(docs)
    assert meta.dtype == "uint16" and meta.eos_id == tok.eos_token_id
    for split in ("train", "val"):
        tokens = np.asarray(open_tokens(run / "data", split))
        pieces = np.split(tokens, np.flatnonzero(tokens == meta.eos_id) + 1)[:-1]
        expected = [d for i, d in enumerate(docs) if is_validation(i, 0.05) == (split == "val")]
        assert [tok.decode(p[:-1].tolist()) for p in pieces] == expected


def test_deterministic_and_reuses_tokenizer(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first = prepare(cfg)
    a = digest(first.run_dir / "data" / "train.bin")
    second = prepare(cfg)
    assert not second.tokenizer_trained and first.tokenizer_trained
    assert digest(second.run_dir / "data" / "train.bin") == a


def test_vocab_change_against_existing_tokenizer_is_refused(tmp_path: Path) -> None:
    prepare(config(tmp_path))
    with pytest.raises(UsageError, match="holds a 512-token tokenizer"):
        prepare(config(tmp_path, tokenizer={"vocab_size": 600}))
    assert prepare(config(tmp_path, tokenizer={"vocab_size": 600}), retrain_tokenizer=True).vocab_size == 600


def test_failure_leaves_previous_data_untouched(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    run = prepare(cfg).run_dir
    before = {p.name: digest(p) for p in (run / "data").iterdir() if p.is_file()}
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n\nthen \xff broken\n")
    with pytest.raises(UsageError, match="invalid UTF-8 at byte offset"):
        prepare(config(tmp_path, data={"source": "text", "path": str(bad), "invalid_utf8": "error"}))
    after = {p.name: digest(p) for p in (run / "data").iterdir() if p.is_file()}
    assert after == before and not list((run / "data").glob(".shards-*"))


def test_corpus_too_small_for_context(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("\n\n".join(f"paragraph {i}" for i in range(20)))  # 1 validation paragraph
    cfg = config(tmp_path, data={"source": "text", "path": str(small)},
                 tokenizer={"kind": "bpe", "vocab_size": 260})
    with pytest.raises(UsageError, match="validation split has .* too few for one 64-token sequence") as info:
        prepare(cfg)
    assert "lower train.sequence_length_tokens" in str(info.value)
    assert not (tmp_path / "runs" / "t" / "data" / "meta.json").exists()


def test_sft_prepare_writes_masks(tmp_path: Path) -> None:
    prepare(config(tmp_path))  # the tokenizer, from pretraining
    f = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"What is {i}?", "completion": f"It is {i}."} for i in range(30)]
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = prepare(config(tmp_path, train={"task": "sft"}, data={"sft_path": str(f), "val_fraction": 0.1}))
    meta = result.outputs["sft"]
    assert meta["train_examples"] + meta["val_examples"] == 31 and meta["val_examples"] == 3
    out = result.run_dir / "data" / "sft"
    train = read_ragged(out, "train", meta["dtype"], with_mask=True)
    tok = load_tokenizer(result.run_dir / "tokenizer")
    ids, mask = train.example(0)
    assert tok.decode([int(t) for t, m in zip(ids, mask) if m]) == "It is 0.<|im_end|>\n"
    assert meta["train_trained_tokens"] < meta["train_tokens"]


def test_classify_prepare_and_unseen_label(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    rows = [{"text": f"item {i}", "label": "even" if i % 2 == 0 else "odd"} for i in range(40)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = config(tmp_path, train={"task": "classify"}, data={"classify_path": str(f), "val_fraction": 0.1})
    result = prepare(cfg)
    out = result.run_dir / "data" / "classify"
    assert json.loads((out / "labels.json").read_text()) == {"even": 0, "odd": 1}
    labels = np.load(out / "train.labels.npy", allow_pickle=False)
    assert len(labels) == result.outputs["classify"]["train_examples"] == 36
    rows[15]["label"] = "prime"  # index 15 is in the validation split (every 10th from 5)
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UsageError, match=r"line 16: label 'prime' never appears"):
        prepare(cfg)
