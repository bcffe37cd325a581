"""Supervised fine-tuning data: JSONL in the common shapes -> chat-rendered tokens + loss masks.

Accepted shapes (each example's shape is read from its keys; `prepare` prints how many examples
of each shape it read, and an example whose keys fit two shapes is an error, never a guess):

- ``prompt-completion``: ``{"prompt": ..., "completion": ...}``
- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty or absent)
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``,
  multi-turn, with an optional top-level ``"system"`` prompt
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}``
  (``user``/``assistant`` also accepted as ``from``), with an optional top-level ``"system"``

``data.sft_fields`` renames a dataset's own keys to these (``{prompt: question, completion:
answer}``).

Every example is turned into chat messages and rendered with the tokenizer's chat template, so
training sees exactly the format `llmkit chat` and the server will send. Only assistant turns
(their content and the closing end-of-turn token) are trained on: the mask is 1 there, 0 on
system/user text and template scaffolding.

Batches are built by padding (one example per row, truncated to the context) or by packing
(examples laid end to end in each row; attention crosses example boundaries, as in simple
packing; labels of prompt tokens stay masked).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.jsonl import json_lines
from llmkit.errors import UsageError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


def _field(obj: dict[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        got = "missing" if name not in obj else f"a {type(value).__name__}"
        raise UsageError(f"{where}: field {name!r} is {got}", "it must be a string",
                         "fix that line of the SFT file")
    return value


FORMATS = ("prompt-completion", "alpaca", "messages", "sharegpt")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


SHAPE_KEYS = {"messages": ("messages",), "sharegpt": ("conversations",), "prompt-completion": ("prompt", "completion"),
              "alpaca": ("instruction", "output")}


def detect_format(obj: Any, where: str = "an example") -> str | None:
    """The shape of one example (one of ``FORMATS``), or None when it has none of them; keys of
    two shapes at once are an error."""
    if not isinstance(obj, dict):
        return None
    found = [name for name, keys in SHAPE_KEYS.items() if any(k in obj for k in keys)]
    if len(found) > 1:
        raise UsageError(f"{where}: keys of two example shapes ({' and '.join(found)})",
                         f"keys: {', '.join(map(str, obj))}", "keep the keys of one shape (or rename with data.sft_fields)")
    return found[0] if found else None


def _with_system(obj: dict[str, Any], out: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    if "system" not in obj:
        return out
    system = _field(obj, "system", where)
    if out and out[0]["role"] == "system":
        raise UsageError(f"{where}: a top-level 'system' and a system message", "", "keep one of them")
    return [{"role": "system", "content": system}, *out] if system else out


def _turns(obj: dict[str, Any], where: str, key: str, speaker: str, text: str, roles: dict[str, str]
           ) -> list[dict[str, str]]:
    """A conversation (``messages`` or ShareGPT's ``conversations``) as chat messages."""
    turns = obj[key]
    if not isinstance(turns, list) or not turns:
        raise UsageError(f"{where}: '{key}' must be a non-empty list", "", "fix that example")
    out = []
    for i, t in enumerate(turns):
        at = f"{where}, {key}[{i}]"
        if not isinstance(t, dict):
            raise UsageError(f"{at} is not an object", "", "fix that example")
        who = _field(t, speaker, at)
        if who not in roles:
            raise UsageError(f"{at}: unknown {'role' if key == 'messages' else 'speaker'} {who!r}",
                             f"they are {', '.join(roles)}", "fix that example")
        out.append({"role": roles[who], "content": _field(t, text, at)})
    if not any(m["role"] == "assistant" for m in out):
        raise UsageError(f"{where}: no assistant message", "SFT trains on the assistant's turns",
                         "add the assistant's answer")
    return _with_system(obj, out, where)


def to_messages(obj: Any, where: str) -> list[dict[str, str]]:
    """One example in any accepted shape -> chat messages."""
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object, found {type(obj).__name__}", "",
                         "each line must be one JSON object")
    if "messages" in obj:
        return _turns(obj, where, "messages", "role", "content", {r: r for r in ROLES})
    if "conversations" in obj:
        return _turns(obj, where, "conversations", "from", "value", SHAREGPT_ROLES)
    if "prompt" in obj or "completion" in obj:
        return [{"role": "user", "content": _field(obj, "prompt", where)},
                {"role": "assistant", "content": _field(obj, "completion", where)}]
    if "instruction" in obj or "output" in obj:
        instruction = _field(obj, "instruction", where)
        extra = obj.get("input") or ""
        if not isinstance(extra, str):
            raise UsageError(f"{where}: field 'input' must be a string", "", "fix that line")
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        return [{"role": "user", "content": prompt},
                {"role": "assistant", "content": _field(obj, "output", where)}]
    raise UsageError(f"{where}: unrecognized example shape (keys: {', '.join(map(str, obj)) or 'none'})",
                     "expected prompt/completion, instruction/input/output, or messages",
                     "reshape the line into one of those")


def rename_fields(obj: Any, fields: dict[str, str]) -> Any:
    """``data.sft_fields`` ({llmkit's name: the dataset's}) applied to one example."""
    if not fields or not isinstance(obj, dict):
        return obj
    out = {k: v for k, v in obj.items() if k not in fields.values()}
    for ours, theirs in fields.items():
        if theirs in obj:
            out[ours] = obj[theirs]
    return out


def examples_of(rows: Iterator[tuple[str, Any]], fields: dict[str, str] | None = None
                ) -> Iterator[tuple[str, str, list[dict[str, str]]]]:
    """(where, shape, messages) for each (where, raw example)."""
    for where, raw in rows:
        obj = rename_fields(raw, fields or {})
        fmt = detect_format(obj, where)
        yield where, fmt or "unknown", to_messages(obj, where)


def read_sft_file(path: str | Path, fields: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, str, list[dict[str, str]]]]:
    """(where, format, messages) for every non-empty line; errors name the line."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"SFT file {p} not found", "", "set data.sft_path to a JSONL file")
    return examples_of(_json_rows(p), fields)


def _json_rows(p: Path) -> Iterator[tuple[str, Any]]:
    def decoded(fh: Any) -> Iterator[str]:
        for number, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{p}, line {number}: invalid UTF-8 at byte {exc.start} of the line", "",
                                 "save the file as UTF-8") from None

    with open(p, "rb") as fh:
        for number, obj in json_lines(decoded(fh), p):
            yield f"{p}, line {number}", obj


def segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split the rendered chat into (text, trained) pieces: assistant turns are trained.

    The template is rendered on growing prefixes of the conversation; each assistant turn is the
    text the full render adds after the generation prompt.
    """
    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise UsageError("the chat template is not prefix-stable",
                             "rendering a longer conversation changed the text of earlier turns",
                             "use a chat template whose output grows turn by turn")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    rest = render(messages, False)[len(done):]
    if rest:
        pieces.append((rest, False))
    return [p for p in pieces if p[0]]


def encode_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the loss mask (1 = trained) of one conversation."""
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments(tokenizer, messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [int(trained)] * len(piece)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8)


CHECKS = {
    "empty_assistant": "an assistant turn with no text",
    "completion_cut": "trained tokens beyond train.sequence_length_tokens (the answer is cut)",
    "no_end_of_turn": "an assistant turn whose trained tokens do not end with an end-of-turn token (the "
                      "model would not learn to stop)",
}


def check_example(messages: list[dict[str, str]], ids: np.ndarray, mask: np.ndarray, seq_len: int,
                  ends: set[int], decode: Any = None) -> list[str]:
    """Which of ``CHECKS`` one encoded example fails (the usual silent failures of SFT data).
    ``decode`` (token id -> text) lets whitespace the template writes after the end-of-turn token
    (ChatML's newline) trail it."""
    found = []
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        found.append("empty_assistant")
    if len(ids) > seq_len + 1 and mask[seq_len + 1:].any():
        found.append("completion_cut")
    trained = np.flatnonzero(mask)
    if len(trained):
        # the last token of each run of trained tokens (one run per assistant turn)
        last = trained[np.append(np.diff(trained) > 1, True)]

        def ends_turn(i: int) -> bool:
            while decode is not None and i > 0 and mask[i] and int(ids[i]) not in ends and not decode(int(ids[i])).strip():
                i -= 1  # trailing whitespace after the end-of-turn token
            return int(ids[i]) in ends

        if not all(ends_turn(int(i)) for i in last):
            found.append("no_end_of_turn")
    else:
        found.append("no_end_of_turn")
    return found


def shift_labels(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-token labels of one example; untrained positions get IGNORE_INDEX."""
    x = ids[:-1].astype(np.int64)
    y = np.where(mask[1:] > 0, ids[1:].astype(np.int64), IGNORE_INDEX)
    return x, y


def collate_padded(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """One example per row, truncated to ``seq_len``: input_ids, labels, attention_mask (B, T).

    T is the longest row of this batch (at most ``seq_len``): short examples cost no padding compute.
    """
    b = len(examples)
    seq_len = min(seq_len, max((len(ids) - 1 for ids, _ in examples), default=1)) or 1
    input_ids = np.full((b, seq_len), pad_id, dtype=np.int64)
    labels = np.full((b, seq_len), IGNORE_INDEX, dtype=np.int64)
    attention = np.zeros((b, seq_len), dtype=np.int64)
    for row, (ids, mask) in enumerate(examples):
        x, y = shift_labels(ids[: seq_len + 1], mask[: seq_len + 1])
        input_ids[row, : len(x)], labels[row, : len(y)], attention[row, : len(x)] = x, y, 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def collate_packed(rows: list[list[tuple[np.ndarray, np.ndarray]]], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Several examples per row, kept apart: each example's inputs and labels shifted on their own
    (no label crosses into the next example), ``position_ids`` restarting at 0 for each, and
    ``segments`` numbering the examples of a row from 1 (0: padding), from which the model's
    attention is made block-diagonal (``llmkit.objectives.packed``). T is the longest row (at most
    ``seq_len``); an example that does not fit the rest of its row is cut."""
    b = len(rows)
    width = min(seq_len, max((sum(len(ids) - 1 for ids, _ in row) for row in rows), default=1)) or 1
    input_ids = np.full((b, width), pad_id, dtype=np.int64)
    labels = np.full((b, width), IGNORE_INDEX, dtype=np.int64)
    segments = np.zeros((b, width), dtype=np.int64)
    positions = np.zeros((b, width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for k, (ids, mask) in enumerate(row, start=1):
            x, y = shift_labels(ids, mask)
            n = min(len(x), width - at)
            if n <= 0:
                break
            input_ids[r, at:at + n], labels[r, at:at + n] = x[:n], y[:n]
            segments[r, at:at + n], positions[r, at:at + n] = k, np.arange(n)
            at += n
    return {"input_ids": input_ids, "labels": labels, "segments": segments, "position_ids": positions}
