"""The GGUF vocabulary read from tokenizer.json (exporting.gguf_vocab): which of llama.cpp's two kinds,
the SentencePiece kind's scores, token types and space rule. llama.cpp itself runs these files in
tests/integration/test_gguf_families.py (`-m llamacpp`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.errors import UsageError
from llmkit.exporting.gguf_vocab import (BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, for_llama_cpp,
                                         read_vocab, sentencepiece_prefix, space_at_start_only)
from tests.families import sentencepiece_tokenizer, tokenizer

METASPACE_FIRST = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
LEGACY = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                              {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
GEMMA = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}


def _spm(**parts: object) -> dict[str, object]:
    return {"model": {"type": "BPE", "byte_fallback": True}, "normalizer": None, "pre_tokenizer": None, **parts}


@pytest.mark.parametrize(("data", "want"), [
    (_spm(pre_tokenizer=METASPACE_FIRST), (True, True)),  # transformers 5's Llama, Mistral, Phi-3
    (_spm(pre_tokenizer={**METASPACE_FIRST, "prepend_scheme": "always"}), (True, False)),
    (_spm(pre_tokenizer={**METASPACE_FIRST, "prepend_scheme": "never"}), (False, False)),
    (_spm(normalizer=LEGACY), (True, False)),  # a Hub tokenizer.json of Llama 2's time
    (_spm(normalizer=GEMMA), (False, False)),
    (_spm(normalizer=GEMMA, pre_tokenizer={"type": "Split", "pattern": {"String": " "}}), (False, False)),
    (_spm(pre_tokenizer={**METASPACE_FIRST, "split": True}), None),  # splits words: not SentencePiece's merging
    (_spm(normalizer={"type": "Sequence", "normalizers": [GEMMA, {"type": "NFKC"}]}), None),
    ({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}, None),  # byte-level BPE
])
def test_sentencepiece_style_is_recognised_with_its_space_rule(data: dict[str, object], want: object) -> None:
    assert sentencepiece_prefix(data) == want


def test_a_sentencepiece_vocabulary_has_scores_in_merge_order_and_llama_cpp_types(tmp_path: Path) -> None:
    tok = sentencepiece_tokenizer("phi3")
    tok.save_pretrained(str(tmp_path))
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = read_vocab(tmp_path, vocab_size=len(tok) + 3)  # an embedding padded past the tokenizer
    assert vocab.kind == "llama" and vocab.scores is not None and not vocab.space_prefix  # start-only: left out
    assert len(vocab.tokens) == len(vocab.types) == len(vocab.scores) == len(tok) + 3
    ids = tok.get_vocab()
    assert vocab.types[ids["<unk>"]] == UNKNOWN and vocab.unk == ids["<unk>"]
    assert vocab.types[ids["<0x41>"]] == BYTE and vocab.types[ids["<|end|>"]] == CONTROL
    assert vocab.types[ids["<s>"]] == CONTROL and vocab.types[ids["▁the"]] == NORMAL
    assert vocab.types[-3:] == [UNUSED] * 3 and vocab.tokens[-1] == f"[PAD{len(tok) + 2}]"
    # each merge's result outscores every later merge's, and every token no merge makes
    merged = ["".join(m if isinstance(m, list) else m.split(" ")) for m in data["model"]["merges"]]
    first = list(dict.fromkeys(merged))
    scores = [vocab.scores[ids[t]] for t in first]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert max(vocab.scores[ids[t]] for t in ("<0x41>", "<s>", "a")) < min(scores)


def test_a_byte_level_vocabulary_keeps_its_merges_and_split(tmp_path: Path) -> None:
    tokenizer("qwen3").save_pretrained(str(tmp_path))
    vocab = read_vocab(tmp_path, vocab_size=0)
    assert vocab.kind == "gpt2" and vocab.pre == "gpt-2" and vocab.merges and vocab.scores is None
    assert vocab.types[vocab.special["<|im_end|>"]] == USER_DEFINED


def test_a_unigram_tokenizer_is_refused_naming_the_kind(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    with pytest.raises(UsageError, match="this one is Unigram") as e:
        read_vocab(tmp_path, vocab_size=1)
    assert "--format hf" in str(e.value)


def test_a_raw_text_is_given_the_space_transformers_puts_at_its_start() -> None:
    tok = sentencepiece_tokenizer("mistral")
    assert space_at_start_only(tok) and not space_at_start_only(sentencepiece_tokenizer("gemma2"))
    assert for_llama_cpp("Hello", tok, True, False) == " Hello"
    assert for_llama_cpp(" Hello", tok, True, False) == " Hello"  # transformers adds none before a space
    assert for_llama_cpp("[INST] hi", tok, True, False) == "[INST] hi"  # nor before an added token
    assert for_llama_cpp("Hello", tok, False, False) == "Hello"
    assert for_llama_cpp("e\u0301", tok, False, True) == "\u00e9"
