"""Tokenizers: train a byte-level BPE on the corpus, or load one from a local directory.

The saved directory (`tokenizer.json`, `tokenizer_config.json` with the chat template) is a
standard Hugging Face tokenizer: ``AutoTokenizer.from_pretrained(dir)`` loads it without llmkit.
Byte-level BPE with no normalizer is lossless: ``decode(encode(text)) == text`` for any text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmkit.config.schema import TokenizerConfig
from llmkit.errors import ConfigError, EnvironmentProblem, UsageError

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML-style: every turn is <|im_start|>role\ncontent<|im_end|>\n. The assistant's content and
# its <|im_end|> are what SFT trains on; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def special_tokens(cfg: TokenizerConfig) -> list[str]:
    """Special tokens of a trained tokenizer; the EOS token gets id 0."""
    return [cfg.eos_token, IM_START, IM_END, PAD]


def train_bpe(documents: Iterable[str], cfg: TokenizerConfig) -> Any:
    """Train a byte-level BPE (``tokenizers.Tokenizer``) of ``cfg.vocab_size`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=special_tokens(cfg),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    learned = tok.get_vocab_size()
    if learned < cfg.vocab_size:
        raise UsageError(
            f"the corpus is too small for a {cfg.vocab_size}-token vocabulary",
            f"BPE found only {learned} tokens that occur at least {cfg.min_frequency} times",
            f"lower tokenizer.vocab_size to {learned} or less, lower tokenizer.min_frequency, "
            "or add text",
        )
    return tok


def wrap(tok: Any, cfg: TokenizerConfig, max_length: int) -> Any:
    """A ``PreTrainedTokenizerFast`` around a trained ``tokenizers.Tokenizer``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=cfg.eos_token,
        pad_token=PAD,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=cfg.chat_template or CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """Load a fast tokenizer from a local directory (never from a hub)."""
    p = Path(path)
    if not p.is_dir():
        raise UsageError(f"tokenizer directory {p} does not exist", "",
                         "give a local directory that holds tokenizer.json "
                         "(`llmkit prepare` writes one under runs/<name>/tokenizer)")
    found = sorted(x.name for x in p.iterdir())
    if not {"tokenizer.json", "tokenizer_config.json"} & set(found):
        raise UsageError(f"{p} is not a tokenizer directory",
                         f"it has no tokenizer.json or tokenizer_config.json; found: "
                         f"{', '.join(found[:12]) or 'nothing'}",
                         "point tokenizer.path at a Hugging Face model or tokenizer directory")
    cfg_file = p / "tokenizer_config.json"
    if cfg_file.exists() and not trust_remote_code:
        try:
            has_code = "auto_map" in json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{cfg_file} is not valid JSON", "", "restore the file") from None
        if has_code:
            raise ConfigError(f"the tokenizer in {p} needs its own Python code (auto_map)",
                              "running code from a model directory is off by default",
                              "set model.trust_remote_code: true if you trust its author")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {p}", str(exc).splitlines()[0][:300],
                         "check that the directory holds a complete Hugging Face tokenizer") from None
    if not getattr(tok, "is_fast", False):
        raise EnvironmentProblem(f"the tokenizer in {p} has no fast (Rust) version",
                                 "llmkit tokenizes with the `tokenizers` library",
                                 "save it with tokenizer.json (a fast tokenizer)")
    return tok


def eos_id(hf_tokenizer: Any) -> int:
    """Id of the end-of-text token (the document separator)."""
    token_id = hf_tokenizer.eos_token_id
    if token_id is None:
        raise UsageError("the tokenizer has no EOS token", "documents need a separator",
                         "use a tokenizer that defines eos_token")
    return int(token_id)


def tokenizer_hash(directory: str | Path) -> str:
    """sha256 of the tokenizer's files (what token ids mean)."""
    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = Path(directory) / name
        if f.exists():
            digest.update(name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()
