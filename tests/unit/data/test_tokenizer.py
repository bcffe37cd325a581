"""Trained tokenizers load with plain transformers, round-trip losslessly, carry the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmkit.config.schema import DataConfig, TokenizerConfig
from llmkit.data.corpus import iter_documents
from llmkit.data.tokenizer import IM_END, IM_START, load_tokenizer, train_bpe
from llmkit.errors import ConfigError, UsageError


def test_autotokenizer_loads_and_round_trips_corpus(tokenizer_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert len(tok) == 512
    for doc in iter_documents(DataConfig()):
        assert tok.decode(tok.encode(doc, add_special_tokens=False)) == doc
    odd = "  tabs\tand  spaces\n\n unicode é 漢字 🙂 \ufffd"
    assert tok.decode(tok.encode(odd, add_special_tokens=False)) == odd


def test_chat_template_and_special_tokens(tokenizer) -> None:
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    ids = tokenizer(IM_START + "user", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids(IM_START)  # matched as one special token


def test_corpus_too_small_for_vocab() -> None:
    with pytest.raises(UsageError, match="too small for a 5000-token vocabulary") as info:
        train_bpe(["tiny corpus " * 3], TokenizerConfig(vocab_size=5000))
    assert "lower tokenizer.vocab_size" in str(info.value)


def test_not_a_tokenizer_dir(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a tokenizer directory") as info:
        load_tokenizer(tmp_path)
    assert "weights.bin" in str(info.value)
    with pytest.raises(UsageError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_remote_code_tokenizer_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "remote"
    shutil.copytree(tokenizer_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["evil.Tok", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="auto_map"):
        load_tokenizer(d)
