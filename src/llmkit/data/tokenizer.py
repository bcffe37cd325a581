"""Tokenizers: train a byte-level BPE on the corpus, or load one from a local directory.

The saved directory (`tokenizer.json`, `tokenizer_config.json` with the chat template) is a
standard Hugging Face tokenizer: ``AutoTokenizer.from_pretrained(dir)`` loads it without llmkit.
Byte-level BPE with no normalizer is lossless: ``decode(encode(text)) == text`` for any text.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmkit.config.schema import TokenizerConfig
from llmkit.errors import ConfigError, EnvironmentProblem, UsageError

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|pad|>"

# ChatML-style: every turn is <|im_start|>role\ncontent<|im_end|>\n. The assistant's content and
# its <|im_end|> are what SFT trains on; the generation prompt opens an assistant turn.
#
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The template of tokenizers trained before tool calls (recognised by the GGUF export's Modelfile)."""

# Tools (Hermes style, the convention Qwen's templates also follow; docs/tool-calling.md): with
# ``tools`` the conversation opens with a system turn (the system message's text first, if there is
# one) that lists each tool as one line of JSON between <tools> and </tools>. An assistant's calls
# are <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> blocks after its text, one a
# call, joined by newlines; a tool's result is a "tool" turn holding <tool_response>\n...\n</tool_response>.
# Without tools and tool calls the text is exactly the plain ChatML above.
TOOLS_HEADER = ("# Tools\n\nYou may call these functions (JSON schemas):\n<tools>")
TOOLS_FOOTER = ("\n</tools>\nTo call a function, answer with <tool_call>\n"
                '{"name": <function name>, "arguments": <arguments object>}\n</tool_call>; one block a call.')
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- " + repr(TOOLS_HEADER) + " }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- " + repr(TOOLS_FOOTER) + " + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message['content'] %}{{- message['content'] + '\\n' }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set f = call['function'] if call['function'] is defined else call %}"
    "{{- '<tool_call>\\n{\"name\": ' + (f['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if f['arguments'] is string %}{{- f['arguments'] }}{%- else %}{{- f['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- if not loop.last %}{{- '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")
"""End-of-turn tokens of the chat formats llmkit fine-tunes: ChatML (llmkit's own, Qwen), Llama 3,
Phi-3, Gemma. Mistral's turns end with the end-of-text token itself."""


def turn_end_ids(tokenizer: Any) -> set[int]:
    """Tokens that end an assistant turn: end-of-text, and each end-of-turn token the tokenizer
    has (as one token) and its chat template writes."""
    ends = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    template = getattr(tokenizer, "chat_template", None) or ""
    for token in END_OF_TURN:
        if token in template:
            tid = tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
                ends.add(tid)
    return ends


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
        show_progress=sys.stderr.isatty(),  # its merge phase's own bar on a terminal
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


LOAD_TIME_KEYS = ("is_local", "local_files_only", "backend", "name_or_path", "_commit_hash")
"""Arguments of one load that transformers 5 writes back into tokenizer_config.json."""


def portable_tokenizer_config(directory: str | Path) -> None:
    """Make ``directory``'s tokenizer_config.json load in transformers 4.x as in 5.x (idempotent).

    transformers 5 writes ``tokenizer_class: TokenizersBackend`` (a class 4.x lacks), the extra
    special tokens as a list under ``extra_special_tokens`` (4.x wants a dict there) and the
    arguments of the load that produced it. The portable form: ``PreTrainedTokenizerFast``,
    ``additional_special_tokens``, no load-time keys, and the chat template inline as well (4.x
    releases before chat_template.jinja read it from here). Both versions load it to the same ids.
    """
    from llmkit.fsutil import atomic_write_text

    d = Path(directory)
    path = d / "tokenizer_config.json"
    if not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if "auto_map" in data:  # a tokenizer with its own code keeps its own class
        return
    if data.get("tokenizer_class") in ("TokenizersBackend", None):
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in LOAD_TIME_KEYS:
        data.pop(key, None)
    extra = data.get("extra_special_tokens")
    if isinstance(extra, list):
        data.pop("extra_special_tokens")
        data["additional_special_tokens"] = list(dict.fromkeys([*data.get("additional_special_tokens", []), *extra]))
    template = d / "chat_template.jinja"
    if template.exists() and "chat_template" not in data:
        data["chat_template"] = template.read_text(encoding="utf-8")
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def chat_template_text(directory: str | Path) -> str:
    """A tokenizer directory's chat template: chat_template.jinja, else tokenizer_config.json's ("": none)."""
    d = Path(directory)
    if (d / "chat_template.jinja").exists():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    if (d / "tokenizer_config.json").exists():
        return str(json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template") or "")
    return ""


def end_token_ids(directory: str | Path, eos: int | None) -> list[int]:
    """The end-of-text token and, when the chat template uses it, the end-of-turn token."""
    d = Path(directory)
    ends = [eos] if eos is not None else []
    data = json.loads((d / "tokenizer.json").read_text(encoding="utf-8")) if (d / "tokenizer.json").exists() else {}
    added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    template = chat_template_text(d)
    for token in END_OF_TURN:
        if token in added and token in template and added[token] not in ends:
            ends.append(added[token])
    return ends


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """Load a fast tokenizer from a local directory (never from a hub); an encrypted one is
    decrypted into memory first (``llmkit.privacy.crypto.readable_dir``)."""
    from llmkit.privacy import crypto

    if Path(path).is_dir() and crypto.has_sealed(path):
        with crypto.readable_dir(path) as plain:
            return _load_tokenizer(plain, trust_remote_code, shown=Path(path))
    return _load_tokenizer(Path(path), trust_remote_code, shown=Path(path))


def _load_tokenizer(p: Path, trust_remote_code: bool, shown: Path) -> Any:
    if not p.is_dir():
        raise UsageError(f"tokenizer directory {shown} does not exist", "",
                         "give a local directory that holds tokenizer.json "
                         "(`llmkit prepare` writes one under runs/<name>/tokenizer)")
    found = sorted(x.name for x in p.iterdir())
    if not {"tokenizer.json", "tokenizer_config.json"} & set(found):
        raise UsageError(f"{shown} is not a tokenizer directory",
                         f"it has no tokenizer.json or tokenizer_config.json; found: "
                         f"{', '.join(found[:12]) or 'nothing'}",
                         "point tokenizer.path at a Hugging Face model or tokenizer directory")
    cfg_file = p / "tokenizer_config.json"
    if cfg_file.exists() and not trust_remote_code:
        try:
            has_code = "auto_map" in json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UsageError(f"{shown / cfg_file.name} is not valid JSON", "", "restore the file") from None
        if has_code:
            raise ConfigError(f"the tokenizer in {shown} needs its own Python code (auto_map)",
                              "running code from a model directory is off by default",
                              "set model.trust_remote_code: true if you trust its author")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {shown}", str(exc).splitlines()[0][:300],
                         "check that the directory holds a complete Hugging Face tokenizer") from None
    if not getattr(tok, "is_fast", False):
        raise EnvironmentProblem(f"the tokenizer in {shown} has no fast (Rust) version",
                                 "llmkit tokenizes with the `tokenizers` library",
                                 "save it with tokenizer.json (a fast tokenizer)")
    tok.name_or_path = str(shown)  # not the scratch copy of an encrypted directory
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
        if f.exists():  # the plaintext: the same tokenizer hashes the same sealed, plain or re-keyed
            from llmkit.privacy import crypto

            digest.update(name.encode() + b"\0" + crypto.read_bytes(f))
    return digest.hexdigest()
