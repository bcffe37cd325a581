"""The tokenizer inside a GGUF, read from ``tokenizer.json``: llama.cpp has two vocabulary kinds that
the open families use.

- ``gpt2``, byte-level BPE: llmkit's own tokenizers, Llama 3's, Qwen's. The vocabulary, the merges,
  and llama.cpp's name for the pre-tokenizer's split (``pre_tokenizer``), which must be one llama.cpp
  knows, or it would split text differently from the tokenizer the model was trained with.
- ``llama``, SentencePiece-style BPE with byte fallback: Mistral v0.1-v0.3, Gemma, Phi-3, Llama 2.
  llama.cpp merges the adjacent pair whose joined text is the highest-scoring token, where
  transformers applies the lowest-ranked merge. A token's score is therefore minus the rank of the
  first merge that makes it, so both end in the same tokens. Byte tokens (``<0x41>``), the unknown
  token and the special ones get their llama.cpp types, and whether a ``▁`` is put before the text
  travels as ``add_space_prefix``. transformers 5 puts it only at the very start of a text (not
  after a special token, not before a leading space), where llama.cpp puts it before every piece
  of text, after each special token too. For such a tokenizer the GGUF says no space: chat prompts,
  which begin with a special token, then tokenize exactly as in training, and a raw text tokenizes
  the same once it begins with a space (``for_llama_cpp`` does what verify gives llama.cpp).

Anything else is refused, pointing to ``--format hf``. The rows past the tokenizer's last id (a
model's embedding is often padded to a multiple of 64) become unused ``[PAD<id>]`` tokens, as the
embedding's row count is llama.cpp's vocabulary size.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.data.tokenizer import end_token_ids
from llmkit.errors import UsageError

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Llama 3's pre-tokenizer split (tokenizer.json of Llama-3-style tokenizers), llama.cpp's "llama-bpe".
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Qwen 2's: Llama 3's with single digits, llama.cpp's "qwen2".
QWEN2_SPLIT = LLAMA3_SPLIT.replace("\\p{N}{1,3}", "\\p{N}")
SPLITS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


@dataclass
class Vocab:
    """What the GGUF's ``tokenizer.ggml.*`` keys say."""

    kind: str  # llama.cpp's tokenizer model: "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    special: dict[str, int]  # added tokens' text -> id
    merges: list[str] = field(default_factory=list)  # gpt2 only
    pre: str = "default"  # gpt2: llama.cpp's name for the split
    scores: list[float] | None = None  # llama only
    space_prefix: bool = False  # llama only: llama.cpp puts a "▁" before each piece of text
    unk: int | None = None


def pre_tokenizer(data: dict[str, Any]) -> str:
    """llama.cpp's name for the byte-level pre-tokenizer ``tokenizer.json`` really uses: ``gpt-2`` for
    GPT-2's split (llmkit's own tokenizers), ``llama-bpe`` for Llama 3's, ``qwen2`` for Qwen 2's."""
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (len(parts) == 2 and parts[0].get("type") == "Split" and parts[0].get("pattern", {}).get("Regex") in SPLITS
            and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)):
        return SPLITS[parts[0]["pattern"]["Regex"]]
    raise UsageError("GGUF export: llama.cpp has no pre-tokenizer known to match this tokenizer's",
                     f"its pre_tokenizer is {json.dumps(pre)[:300]}",
                     "export --format hf (transformers and vLLM use tokenizer.json as it is)")


def sentencepiece_prefix(data: dict[str, Any]) -> tuple[bool, bool] | None:
    """For a SentencePiece-style ``tokenizer.json`` (BPE with byte fallback, spaces as ``▁``): (whether
    a ``▁`` goes before the text, whether only before the text's start); None for any other kind."""
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    norm = data.get("normalizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    replaces = any(n.get("type") == "Replace" and n.get("pattern", {}).get("String") == " " and n.get("content") == "▁"
                   for n in norms)
    prepends = any(n.get("type") == "Prepend" and n.get("prepend") == "▁" for n in norms)
    others = [n for n in norms if n.get("type") not in ("Replace", "Prepend")]
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace" and pre.get("replacement") == "▁" and not pre.get("split", True) and not norms:
        scheme = pre.get("prepend_scheme", "always")
        return scheme != "never", scheme == "first"
    # Split on " " after the normalizer has turned every space into "▁" splits nothing (transformers 5's Gemma)
    harmless = not pre or (pre.get("type") == "Split" and pre.get("pattern", {}).get("String") == " ")
    if replaces and not others and harmless:
        return prepends, False
    return None


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """``model_dir``'s tokenizer as a GGUF vocabulary of ``vocab_size`` rows (the embedding's)."""
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise UsageError("GGUF export supports BPE tokenizers (byte-level, or SentencePiece-style with byte "
                         "fallback)", f"this one is {model.get('type')}",
                         "export --format hf (transformers and vLLM use tokenizer.json as it is)")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in data.get("added_tokens", [])}
    special = {text: int(t["id"]) for text, t in added.items()}
    vocab.update(special)
    size = max(max(vocab.values()) + 1, vocab_size)
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    prefix = sentencepiece_prefix(data)
    if prefix is None:
        types = [USER_DEFINED if tokens[i] in special else NORMAL for i in range(size)]
        return Vocab("gpt2", tokens, types, special, merges=merges, pre=pre_tokenizer(data))
    unk = vocab.get(model.get("unk_token") or "<unk>")
    types = [_spm_type(i, tokens[i], added, vocab, unk) for i in range(size)]
    return Vocab("llama", tokens, types, special, scores=_scores(tokens, merges),
                 space_prefix=prefix[0] and not prefix[1], unk=unk)


def space_at_start_only(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` (transformers') puts SentencePiece's ``▁`` only at the very start of a text,
    which its GGUF leaves to the text (module docstring)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    prefix = sentencepiece_prefix(json.loads(backend.to_str()))
    return prefix is not None and prefix[0] and prefix[1]


def for_llama_cpp(text: str, tokenizer: Any, start_only: bool, nfc: bool) -> str:
    """``text`` as llama.cpp must be given it to tokenize as ``tokenizer`` does: NFC-normalized if the
    tokenizer normalizes so (llama.cpp does not), and for a ``start_only`` tokenizer with the space
    transformers puts at its start (none before a leading space or a leading added token)."""
    import unicodedata

    if nfc:
        text = unicodedata.normalize("NFC", text)
    added = tokenizer.get_added_vocab() if start_only else {}  # transformers splits these off before the rest
    if start_only and text and not text.startswith(" ") and not any(a and text.startswith(a) for a in added):
        text = " " + text
    return text


def _spm_type(i: int, text: str, added: dict[str, Any], vocab: dict[str, int], unk: int | None) -> int:
    if i == unk:
        return UNKNOWN
    if text in added and added[text]["id"] == i:
        return CONTROL if added[text].get("special", True) else USER_DEFINED
    if vocab.get(text) != i:  # a padding row
        return UNUSED
    return BYTE if BYTE_TOKEN.fullmatch(text) else NORMAL


def _scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Minus the rank of the first merge making each token; tokens no merge makes (single characters,
    bytes, specials) score below every merged one, as llama.cpp only compares merged tokens' scores."""
    first: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        first.setdefault(left + right, rank)
    floor = -float(len(merges) + 1)
    return [-float(first[t]) if t in first else floor for t in tokens]


def write_vocab(writer: Any, model_dir: Path, cfg: dict[str, Any], tok: Vocab, template: str | None) -> list[int]:
    """The ``tokenizer.*`` keys; returns the end-token ids declared."""
    writer.add_vocab_size(len(tok.tokens))
    writer.add_tokenizer_model(tok.kind)
    writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.types)
    if tok.kind == "gpt2":
        writer.add_token_merges(tok.merges)
    else:
        writer.add_token_scores(tok.scores)
        writer.add_add_space_prefix(tok.space_prefix)
        if tok.unk is not None:
            writer.add_unk_token_id(tok.unk)
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text()) if (model_dir / "tokenizer_config.json").exists() else {}
    eos = tok.special.get(tcfg.get("eos_token") or "<|endoftext|>", cfg.get("eos_token_id", 0))
    if isinstance(eos, list):
        eos = eos[0]
    bos = cfg.get("bos_token_id")
    writer.add_bos_token_id(int(eos if bos is None else bos))
    writer.add_eos_token_id(int(eos))
    pad = tok.special.get(tcfg.get("pad_token") or "")
    if pad is not None:
        writer.add_pad_token_id(int(pad))
    # the template adds a BOS where the model wants one; llama.cpp must not add another to raw text
    writer.add_add_bos_token(False)
    if template:
        writer.add_chat_template(template)
    ends = end_token_ids(model_dir, int(eos))
    if len(ends) > 1:  # the end-of-turn token: llama.cpp stops a chat reply there
        writer.add_eot_token_id(ends[1])
    return ends
