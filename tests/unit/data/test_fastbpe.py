"""The tiktoken bulk encoder: the exact ids of the Hugging Face tokenizer, or not used at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config.load import validate_config
from llmkit.data.corpus import embedded_topics
from llmkit.data.fastbpe import bulk_encoder, choose_encoder, hf_encoder
from llmkit.data.prepare import prepare
from llmkit.data.shards import read_meta
from llmkit.data.tokenizer import load_tokenizer

pytest.importorskip("tiktoken")


def config(tmp_path: Path, vocab: int = 2048, **data):  # type: ignore[no-untyped-def]
    return validate_config({"name": "t", "runs_root": str(tmp_path / "runs"), "tokenizer": {"vocab_size": vocab},
                            "train": {"sequence_length_tokens": 64}, "model": {"max_position_embeddings": 64},
                            "data": data})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    run = prepare(config(tmp_path_factory.mktemp("fast"))).run_dir
    return load_tokenizer(run / "tokenizer").backend_tokenizer, run


def test_same_ids_as_tokenizers_on_the_whole_embedded_corpus(trained) -> None:  # type: ignore[no-untyped-def]
    tok, _ = trained
    fast = bulk_encoder(tok)
    assert fast is not None
    docs = [text for _, text in embedded_topics()]
    tricky = ["", " ", "\n\n\n", "  leading and trailing  ", "tabs\tand\r\nCRLF", "ümlaut café naïve 日本語 🙂",
              "numbers 1234567890 3.14159", "x" * 5000, "'s 're 've 'll 'd it's", "\u200b zero width"]
    specials = ["text <|endoftext|> more", "<|im_start|>user\nhi<|im_end|>", "a <|pad|> b <|endoftext", "<|"]
    batch = docs + tricky + specials
    assert fast(batch) == hf_encoder(tok)(batch)
    # the special tokens' text becomes their ids, as in tokenizers
    eos = tok.token_to_id("<|endoftext|>")
    assert eos in fast(["text <|endoftext|> more"])[0]


def test_not_used_for_other_tokenizer_shapes(trained) -> None:  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    tok, _ = trained
    lower = Tokenizer.from_str(tok.to_str())
    lower.normalizer = normalizers.Lowercase()
    assert bulk_encoder(lower) is None
    prefix = Tokenizer.from_str(tok.to_str())
    prefix.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert bulk_encoder(prefix) is None
    spec = json.loads(tok.to_str())
    spec["model"]["byte_fallback"] = True
    assert bulk_encoder(Tokenizer.from_str(json.dumps(spec))) is None
    # a merge whose result is numbered before an earlier merge's: tiktoken's rank order would differ
    spec = json.loads(tok.to_str())
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]
    assert bulk_encoder(Tokenizer.from_str(json.dumps(spec))) is None


def test_a_differing_engine_is_refused_and_the_corpus_kept(trained) -> None:  # type: ignore[no-untyped-def]
    import llmkit.data.fastbpe as fastbpe

    tok, _ = trained
    docs = [f"document {i} " * 50 for i in range(100)]
    lines: list[str] = []
    encode, rest, engine = choose_encoder(tok, iter(docs), True, lines.append, sample_bytes=2000)
    assert engine == "tiktoken" and list(rest) == docs and not lines
    real = fastbpe.bulk_encoder

    def off_by_one(t):  # type: ignore[no-untyped-def]
        inner = real(t)
        return lambda batch: [ids[:-1] + [(ids[-1] + 1) % 2048] if ids else ids for ids in inner(batch)]

    fastbpe.bulk_encoder = off_by_one
    try:
        encode, rest, engine = choose_encoder(tok, iter(docs), True, lines.append, sample_bytes=2000)
    finally:
        fastbpe.bulk_encoder = real
    assert engine == "tokenizers" and list(rest) == docs and "differ" in lines[0]
    assert encode(docs[:3]) == hf_encoder(tok)(docs[:3])
    assert choose_encoder(tok, iter(docs), False, lines.append)[2] == "tokenizers"


def test_prepare_writes_the_same_shards_with_either_engine(tmp_path: Path) -> None:
    fast = prepare(config(tmp_path / "a")).run_dir
    slow_cfg = config(tmp_path / "b", fast_bpe=False)
    (tmp_path / "b" / "runs" / "t").mkdir(parents=True)
    import shutil

    shutil.copytree(fast / "tokenizer", tmp_path / "b" / "runs" / "t" / "tokenizer")
    slow = prepare(slow_cfg).run_dir
    assert read_meta(fast / "data").encoder == "tiktoken" and read_meta(slow / "data").encoder == "tokenizers"
    for name in ("train.bin", "val.bin"):
        assert (fast / "data" / name).read_bytes() == (slow / "data" / name).read_bytes()


def test_llama3_style_split_pretokenizer(tmp_path: Path) -> None:
    """Llama 3's shape: its own split pattern, then byte-level mapping without a regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    docs = [text for _, text in embedded_topics()]
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=3000, special_tokens=["<|end_of_text|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    fast = bulk_encoder(tok)
    assert fast is not None
    batch = docs + ["Numbers 1234567 split in threes", "MiXeD 'S 'Ll case", "a <|end_of_text|> b", "\r\n\r\n x"]
    assert fast(batch) == hf_encoder(tok)(batch)
    # the same split with another behaviour is not this shape
    other = Tokenizer.from_str(tok.to_str())
    other.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="removed"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert bulk_encoder(other) is None
