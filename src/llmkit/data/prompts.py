"""Prompts of an RL run (``train.task: rl``): each a conversation to answer, with the example's
other fields (``answer``, ``asserts``, ...) kept for the rewards.

An example is ``{prompt: str | messages, ...}`` or ``{messages: [...], ...}`` (chat messages
ending with a user turn), optionally with ``system``. ``prepare`` renders each with the chat
template and its generation prompt into ``data/rl/{train,val}.jsonl``: the prompt's token ids,
its text (what the rewards see) and the example.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.errors import UsageError

Messages = list[dict[str, str]]
QUESTIONS = ("What is {t}?", "Explain {t}.", "Tell me about {t}.")
_NAME = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Prompt:
    """One prompt: where it came from, its messages, the whole example (for the rewards)."""

    where: str
    messages: Messages
    example: dict[str, Any]


def _bad(where: str, what: str) -> UsageError:
    return UsageError(f"{where}: {what}", "an RL example is {prompt: text or chat messages, ...fields the rewards "
                      "read} or {messages: [...], ...}", "fix that example")


def to_prompt(raw: Any, where: str) -> Prompt:
    """The prompt of one raw example (a dict), checked."""
    if not isinstance(raw, dict):
        raise _bad(where, f"the example is a {type(raw).__name__}, not an object")
    value = raw.get("prompt", raw.get("messages"))
    if value is None:
        raise _bad(where, "it has neither `prompt` nor `messages`")
    if isinstance(value, str):
        messages = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in value]
    else:
        raise _bad(where, "`prompt` must be a non-empty string or a list of chat messages")
    if not "".join(m["content"] for m in messages).strip():
        raise _bad(where, "the prompt is empty")
    if messages[-1]["role"] != "user":
        raise _bad(where, f"the conversation ends with a {messages[-1]['role']} turn; the model answers a user turn")
    system = raw.get("system")
    if isinstance(system, str) and system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return Prompt(where, messages, dict(raw))


def prompts_of(rows: Iterator[tuple[str, Any]]) -> Iterator[Prompt]:
    """The prompts of (where, raw example) rows."""
    for where, raw in rows:
        yield to_prompt(raw, where)


def render(tokenizer: Any, prompt: Prompt) -> tuple[list[int], str]:
    """(the prompt's token ids, its text): rendered with the chat template and its generation prompt."""
    text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]), text


def statement_name(subject: str) -> str:
    """What an answer about ``subject`` must name: its keyword as the documentation quotes it ("the
    `for` statement" -> "`for`": a bare "for" is in most English sentences), else the title itself
    ("Coroutines")."""
    m = _NAME.search(subject)
    return m.group(0) if m else subject


def embedded_prompts(val_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """(training, validation) prompts from the embedded documentation: three phrasings of a
    question about each statement, with the statement's name as ``answer``; validation prompts on
    statements not in training (drawn with ``seed``)."""
    from llmkit.data.corpus import embedded_statements

    statements = embedded_statements()
    order = np.random.default_rng(seed).permutation(len(statements))
    n_val = max(2, round(len(statements) * val_fraction))
    splits = ([statements[i] for i in order[n_val:]], [statements[i] for i in order[:n_val]])
    out: tuple[list[Prompt], list[Prompt]] = ([], [])
    for part, prompts in zip(splits, out):
        for subject, _ in part:
            for q in QUESTIONS:
                text = q.format(t=subject)
                prompts.append(Prompt(f"embedded: {subject}", [{"role": "user", "content": text}],
                                      {"prompt": text, "answer": statement_name(subject)}))
    return out
