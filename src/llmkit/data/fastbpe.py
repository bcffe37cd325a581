"""Bulk encoding for pretraining shards: `tiktoken`'s byte-level BPE engine where it is exact.

A byte-level BPE tokenizer of the kind `llmkit prepare` trains (GPT-2 split pattern, no
normalizer, merged tokens numbered in merge order) can be run by tiktoken's encoder, which does
the same work 3-4x faster than `tokenizers` because it builds no per-token strings or offsets.
The tokenizer saved in the run directory stays the Hugging Face `tokenizer.json`; only the bulk
encoding of the corpus changes engine, and only when:

- the tokenizer's shape is exactly that, or Llama 3's (a ``Split`` with its own pattern before a
  regex-free ``ByteLevel``): ``bulk_encoder`` checks every field and returns None otherwise, and
- both engines give the same ids on a sample of the corpus (``verified``; checked by `prepare`
  before it commits to tiktoken, which otherwise falls back to `tokenizers`).

Documents that contain the text of a special token (``<|endoftext|>``...) are encoded by
`tokenizers`, which turns that text into the special token's id, so the shards are the same
whichever engine wrote them. ``data.fast_bpe: false`` always uses `tokenizers`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Encode = Callable[[list[str]], list[list[int]]]


def _byte_decoder() -> dict[str, int]:
    """The inverse of byte-level BPE's byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    table = list(printable)
    for b in range(256):
        if b not in printable:
            table.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(table, chars)}


def hf_encoder(tokenizer: Any) -> Encode:
    """`tokenizers` bulk encoding (the reference engine)."""
    def encode(batch: list[str]) -> list[list[int]]:
        return [e.ids for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False)]
    return encode


def bulk_encoder(tokenizer: Any) -> Encode | None:
    """A tiktoken encoder equivalent to ``tokenizer`` (a ``tokenizers.Tokenizer``), or None when the
    tokenizer has neither supported shape (module docstring) or tiktoken is not installed."""
    try:
        import tiktoken
    except ImportError:
        return None
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    pattern = _split_pattern(spec.get("pre_tokenizer") or {})
    if (model.get("type") != "BPE" or spec.get("normalizer") is not None or model.get("dropout")
            or model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or pattern is None):
        return None
    special = {t["content"] for t in spec.get("added_tokens", [])}
    decode = _byte_decoder()
    ranks: dict[bytes, int] = {}
    for text, index in model["vocab"].items():
        if text in special:
            continue
        if any(ch not in decode for ch in text):
            return None
        ranks[bytes(decode[ch] for ch in text)] = index
    if len(ranks) < 256 or any(bytes([b]) not in ranks for b in range(256)):
        return None
    # tiktoken merges by the rank of the merged bytes: ranks must follow the merge order
    previous = -1
    for merge in model.get("merges") or []:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merged = model["vocab"].get(left + right, -1)
        if merged <= previous:  # missing, or numbered before an earlier merge's result
            return None
        previous = merged
    try:
        enc = tiktoken.Encoding("llmkit-bulk", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})
    except (ValueError, RuntimeError):  # a pattern tiktoken's regex engine does not accept
        return None
    reference = hf_encoder(tokenizer)
    prefixes = {s[:2] for s in special}  # a few scans per document, even with hundreds of specials
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)

    def encode(batch: list[str]) -> list[list[int]]:
        out = enc.encode_ordinary_batch(batch, num_threads=threads)
        marked = [i for i, doc in enumerate(batch)
                  if any(p in doc for p in prefixes) and any(s in doc for s in special)]
        if marked:
            for i, ids in zip(marked, reference([batch[i] for i in marked])):
                out[i] = ids
        return out

    return encode


def _split_pattern(pre: dict[str, Any]) -> str | None:
    """The split regex of a byte-level pre-tokenizer tiktoken can reproduce, else None.

    Two shapes: GPT-2's ``ByteLevel(use_regex=True)``, and Llama 3's
    ``Sequence[Split(Regex, Isolated), ByteLevel(use_regex=False)]`` with its own pattern.
    """
    def plain_byte_level(p: dict[str, Any]) -> bool:
        return p.get("type") == "ByteLevel" and not p.get("add_prefix_space")

    if plain_byte_level(pre) and pre.get("use_regex", True):
        return GPT2_SPLIT
    steps = pre.get("pretokenizers") or []
    if pre.get("type") == "Sequence" and len(steps) == 2:
        split, byte_level = steps
        regex = (split.get("pattern") or {}).get("Regex")
        if (split.get("type") == "Split" and regex and split.get("behavior") == "Isolated"
                and not split.get("invert") and plain_byte_level(byte_level) and not byte_level.get("use_regex", True)):
            return str(regex)
    return None


def verified(fast: Encode, tokenizer: Any, sample: list[str]) -> bool:
    """Whether ``fast`` gives exactly the ids `tokenizers` gives on ``sample``."""
    return fast(sample) == hf_encoder(tokenizer)(sample)


def choose_encoder(tokenizer: Any, documents: Iterator[str], allow_fast: bool, log: Callable[[str], None],
                   sample_bytes: int = 1 << 20) -> tuple[Encode, Iterator[str], str]:
    """The bulk encoder for a corpus, the corpus (unchanged), and the engine's name.

    tiktoken when allowed, applicable and equal to `tokenizers` on the corpus's first
    ``sample_bytes``; otherwise `tokenizers`.
    """
    reference = hf_encoder(tokenizer)
    fast = bulk_encoder(tokenizer) if allow_fast else None
    if fast is None:
        return reference, documents, "tokenizers"
    from llmkit.data.shards import chunks

    documents = iter(documents)
    sample = next(chunks(documents, sample_bytes), [])
    rest = itertools.chain(sample, documents)
    if not verified(fast, tokenizer, sample):
        log("data: tiktoken's ids differ from the tokenizer's on this corpus; encoding with tokenizers (slower)")
        return reference, rest, "tokenizers"
    return fast, rest, "tiktoken"
