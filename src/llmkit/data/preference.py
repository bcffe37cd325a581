"""Preference data: pairs of a better and a worse answer (or KTO's single answers with a label) ->
chat-rendered tokens whose loss mask covers the answers only.

Accepted shapes (read from each example's keys; `prepare` prints how many of each it read):

- ``pair``: ``{"prompt", "chosen", "rejected"}``. The prompt is a string (one user turn) or chat
  messages; each answer a string (one assistant turn) or messages. Answers given as whole
  conversations that start with the prompt (UltraFeedback-binarized) have the prompt taken off.
- ``conversations``: ``{"chosen", "rejected"}`` without a prompt: two whole conversations, as
  messages or as Anthropic HH-RLHF text (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``); their shared
  start is the prompt, the rest of each is its answer.
- ``unpaired``: ``{"prompt", "completion", "label"}`` (KTO): one answer, ``label`` true when it
  is desirable.

An optional top-level ``system`` becomes the system message. ``data.preference_fields`` renames a
dataset's keys to these.

Each answer is rendered after its prompt with the tokenizer's chat template; a pair whose prompt
and answer do not fit ``train.sequence_length_tokens + 1`` tokens loses prompt tokens from its
left (both answers of a pair keep the same prompt), never answer tokens: a pair whose answer alone
does not fit is dropped. Pairs with identical answers or an empty answer are dropped too; `prepare`
says how many and where, and ``--strict`` turns any drop into an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmkit.data.sft import ROLES, rename_fields
from llmkit.errors import UsageError

Messages = list[dict[str, str]]
SHAPES = ("pair", "conversations", "unpaired")
DROPS = {
    "identical": "identical chosen and rejected answers (nothing to prefer)",
    "empty_answer": "an empty answer",
    "answer_cut": "an answer longer than train.sequence_length_tokens (answers are never cut)",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


@dataclass(frozen=True)
class Record:
    """One preference example as chat messages: ``answers`` is (chosen, rejected) for a pair, or
    (completion,) with ``label`` for an unpaired one."""

    where: str
    shape: str
    prompt: Messages
    answers: tuple[Messages, ...]
    label: bool | None = None


def _bad(where: str, what: str, fix: str = "fix that example") -> UsageError:
    return UsageError(f"{where}: {what}", "", fix)


def _messages(value: Any, where: str, key: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise _bad(where, f"{key!r} must be a string or a non-empty list of chat messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _bad(where, f"{key}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _bad(where, f"{key}[{i}]: unknown role {m['role']!r} (they are {', '.join(ROLES)})")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _hh_text(text: str) -> Messages | None:
    """Anthropic HH-RLHF's "\\n\\nHuman: ... \\n\\nAssistant: ..." text as messages (None: not that)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(parts[1::2], parts[2::2])]


def _answer(value: Any, prompt: Messages, where: str, key: str) -> Messages:
    """An answer as assistant messages; a whole conversation starting with the prompt loses it."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    msgs = _messages(value, where, key)
    if msgs[: len(prompt)] == prompt:
        msgs = msgs[len(prompt):]
    if not msgs or msgs[0]["role"] != "assistant":
        raise _bad(where, f"{key!r} must be the assistant's answer (or a conversation that starts with the prompt "
                          "and goes on with the assistant)")
    return msgs


def _prompt(value: Any, where: str) -> Messages:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    msgs = _messages(value, where, "prompt")
    if msgs[-1]["role"] == "assistant":
        raise _bad(where, "the prompt ends with an assistant turn; the answer must come after it")
    return msgs


def _split_conversations(chosen: Any, rejected: Any, where: str) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen answer, rejected answer) of two whole conversations: the shared start of the
    two is the prompt, up to the last user turn before they differ."""
    convs = []
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        msgs = _hh_text(value) if isinstance(value, str) else _messages(value, where, key)
        if msgs is None:
            raise _bad(where, f"{key!r} is text without a prompt",
                       "give a 'prompt' field, or whole conversations (chat messages or HH-RLHF "
                       "'\\n\\nHuman: ... \\n\\nAssistant: ...' text)")
        convs.append(msgs)
    shared = 0
    while shared < min(map(len, convs)) and convs[0][shared] == convs[1][shared]:
        shared += 1
    while shared > 0 and convs[0][shared - 1]["role"] == "assistant":  # the answers start after a user turn
        shared -= 1
    if shared == 0:
        raise _bad(where, "the chosen and rejected conversations share no prompt",
                   "give a 'prompt' field, or conversations that start with the same user turn(s)")
    return convs[0][:shared], convs[0][shared:], convs[1][shared:]


def _system(obj: dict[str, Any], prompt: Messages, where: str) -> Messages:
    if "system" not in obj or not obj["system"]:
        return prompt
    if not isinstance(obj["system"], str):
        raise _bad(where, "'system' must be a string")
    if prompt[0]["role"] == "system":
        raise _bad(where, "a top-level 'system' and a system message", "keep one of them")
    return [{"role": "system", "content": obj["system"]}, *prompt]


def _label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _bad(where, f"'label' must be true or false (found {value!r})")


def to_record(raw: Any, where: str, fields: dict[str, str] | None = None) -> Record:
    """One example in any accepted shape -> a :class:`Record`."""
    obj = rename_fields(raw, fields or {})
    if not isinstance(obj, dict):
        raise _bad(where, f"expected a JSON object, found {type(obj).__name__}", "each line must be one JSON object")
    paired, unpaired = "chosen" in obj or "rejected" in obj, "completion" in obj or "label" in obj
    if paired and unpaired:
        raise _bad(where, "keys of a pair (chosen/rejected) and of an unpaired example (completion/label)",
                   "keep the keys of one shape (or rename with data.preference_fields)")
    for key in (("chosen", "rejected") if paired else ("prompt", "completion", "label") if unpaired else ()):
        if key not in obj:
            raise _bad(where, f"no {key!r} field", "see data.preference_path for the accepted shapes")
    if unpaired:
        prompt = _system(obj, _prompt(obj["prompt"], where), where)
        return Record(where, "unpaired", prompt, (_answer(obj["completion"], prompt, where, "completion"),),
                      _label(obj["label"], where))
    if not paired:
        raise _bad(where, f"unrecognized example shape (keys: {', '.join(map(str, obj)) or 'none'})",
                   "expected prompt/chosen/rejected, chosen/rejected conversations, or prompt/completion/label")
    if "prompt" in obj:
        prompt = _prompt(obj["prompt"], where)
        answers = (_answer(obj["chosen"], prompt, where, "chosen"), _answer(obj["rejected"], prompt, where, "rejected"))
        return Record(where, "pair", _system(obj, prompt, where), answers)
    prompt, chosen, rejected = _split_conversations(obj["chosen"], obj["rejected"], where)
    return Record(where, "conversations", _system(obj, prompt, where), (chosen, rejected))


def records_of(rows: Iterator[tuple[str, Any]], fields: dict[str, str] | None = None) -> Iterator[Record]:
    """The records of (where, raw example) rows."""
    for where, raw in rows:
        yield to_record(raw, where, fields)


def render(tokenizer: Any, prompt: Messages, answer: Messages) -> tuple[list[int], list[int]]:
    """(prompt tokens, answer tokens): the prompt with the generation prompt, the answer as the rest
    of the rendered conversation (its end-of-turn token included)."""
    def text(msgs: Messages, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    head, full = text(prompt, True), text(prompt + answer, False)
    if not full.startswith(head):
        raise UsageError("the chat template is not prefix-stable",
                         "the rendered prompt is not the start of the rendered prompt + answer",
                         "use a chat template whose output grows turn by turn")
    ids = tokenizer([head, full[len(head):]], add_special_tokens=False)["input_ids"]
    return list(ids[0]), list(ids[1])


def encode(tokenizer: Any, record: Record, seq_len: int) -> tuple[list[tuple[np.ndarray, np.ndarray]] | None, str | None]:
    """Each answer of ``record`` as (ids, mask) after its prompt, in at most ``seq_len + 1`` tokens
    (the prompt cut from its left, the same for every answer), or (None, the drop's reason)."""
    if any(not "".join(m["content"] for m in a).strip() for a in record.answers):
        return None, "empty_answer"
    if len(record.answers) == 2 and record.answers[0] == record.answers[1]:
        return None, "identical"
    rendered = [render(tokenizer, record.prompt, a) for a in record.answers]
    prompt = rendered[0][0]
    longest = max(len(a) for _, a in rendered)
    room = seq_len + 1 - longest
    if room < 1:
        return None, "answer_cut"
    prompt = prompt[-room:] if len(prompt) > room else prompt
    out = []
    for _, answer in rendered:
        ids = np.asarray(prompt + answer, dtype=np.int64)
        mask = np.concatenate([np.zeros(len(prompt), np.uint8), np.ones(len(answer), np.uint8)])
        out.append((ids, mask))
    return out, None


REJECTED_PER_QUESTION = 4


def embedded_records(val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(training, validation) pairs from the embedded documentation: each question about a
    statement (three phrasings), the documentation's answer chosen, another statement's answer
    rejected (``REJECTED_PER_QUESTION`` pairs a question, each with another answer, drawn with ``seed``:
    more pairs a statement teach the held-out preference better than more passes over fewer). Validation pairs are on statements not in any training pair,
    and their rejected answers come from other validation statements."""
    from llmkit.data.corpus import embedded_statements

    questions = ("What is {t}?", "Explain {t}.", "Tell me about {t}.")
    statements = embedded_statements()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(statements))
    n_val = max(2, round(len(statements) * val_fraction))
    splits = ([statements[i] for i in order[n_val:]], [statements[i] for i in order[:n_val]])
    out: tuple[list[Record], list[Record]] = ([], [])
    for part, records in zip(splits, out):
        for k, (subject, answer) in enumerate(part):
            others = [a for a in dict.fromkeys(a for _, a in part) if a != answer]  # distinct, in order
            for q in questions:
                for j in rng.choice(len(others), size=min(REJECTED_PER_QUESTION, len(others)), replace=False):
                    records.append(Record(f"embedded: {subject}", "pair",
                                          [{"role": "user", "content": q.format(t=subject)}],
                                          ([{"role": "assistant", "content": answer}],
                                           [{"role": "assistant", "content": others[int(j)]}])))
    return out
