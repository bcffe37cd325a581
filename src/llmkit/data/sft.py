"""Supervised fine-tuning data: JSONL in the common shapes -> chat-rendered tokens + loss masks.

Accepted shapes (each example's shape is read from its keys; `prepare` prints how many examples
of each shape it read, and an example whose keys fit two shapes is an error, never a guess):

- ``prompt-completion``: ``{"prompt": ..., "completion": ...}``
- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty or absent)
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...]}``,
  multi-turn, with an optional top-level ``"system"`` prompt; an assistant turn may carry OpenAI's
  ``tool_calls`` (``[{"type": "function", "function": {"name": ..., "arguments": ...}}]``, the
  arguments an object or JSON text) and a ``tool`` turn the result
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}``
  (``user``/``assistant`` also accepted as ``from``), with an optional top-level ``"system"``;
  ``function_call`` turns (a JSON ``{"name": ..., "arguments": ...}``) are the assistant's calls and
  ``observation`` turns their results

Either conversation shape may list its functions in a top-level ``tools`` (OpenAI's tool objects,
or bare function objects, or those as JSON text, as LLaMA-Factory writes them): they are rendered
through the chat template's tools support, and every call must name one of them.

``data.sft_fields`` renames a dataset's own keys to these (``{prompt: question, completion:
answer}``).

Every example is turned into chat messages and rendered with the tokenizer's chat template, so
training sees exactly the format `llmkit chat` and the server will send. Only assistant turns
(their content, their tool calls and the closing end-of-turn token) are trained on: the mask is 1
there, 0 on system/user text, tool results and template scaffolding.

Batches are built by padding (one example per row, truncated to the context) or by packing
(examples laid end to end in each row; attention crosses example boundaries, as in simple
packing; labels of prompt tokens stay masked).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.jsonl import json_lines
from llmkit.errors import UsageError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


def _field(obj: dict[str, Any], name: str, where: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        got = "missing" if name not in obj else f"a {type(value).__name__}"
        raise UsageError(f"{where}: field {name!r} is {got}", "it must be a string",
                         "fix that line of the SFT file")
    return value


FORMATS = ("prompt-completion", "alpaca", "messages", "sharegpt")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool"}


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


def _with_system(obj: dict[str, Any], out: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if "system" not in obj:
        return out
    system = _field(obj, "system", where)
    if out and out[0]["role"] == "system":
        raise UsageError(f"{where}: a top-level 'system' and a system message", "", "keep one of them")
    return [{"role": "system", "content": system}, *out] if system else out


def _turns(obj: dict[str, Any], where: str, key: str, speaker: str, text: str, roles: dict[str, str]
           ) -> list[dict[str, Any]]:
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
        out.append(_turn(t, who, roles[who], text, at))
    if not any(m["role"] == "assistant" for m in out):
        raise UsageError(f"{where}: no assistant message", "SFT trains on the assistant's turns",
                         "add the assistant's answer")
    return _with_system(obj, out, where)


def _turn(t: dict[str, Any], who: str, role: str, text: str, at: str) -> dict[str, Any]:
    """One message; an assistant's tool calls with their arguments as objects (the convention chat
    templates render), from OpenAI's ``tool_calls`` or a ShareGPT ``function_call`` turn."""
    if who == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": [_call(_json(_field(t, text, at), at), at)]}
    if role == "assistant" and t.get("tool_calls"):
        calls = t["tool_calls"]
        if not isinstance(calls, list):
            raise UsageError(f"{at}: 'tool_calls' must be a list", "", "fix that example")
        content = t.get(text)
        if content is not None and not isinstance(content, str):
            raise UsageError(f"{at}: field {text!r} is a {type(content).__name__}", "it must be a string or null",
                             "fix that line of the SFT file")
        return {"role": "assistant", "content": content or "",
                "tool_calls": [_call(c.get("function", c) if isinstance(c, dict) else c, f"{at}, tool_calls[{j}]")
                               for j, c in enumerate(calls)]}
    return {"role": role, "content": _field(t, text, at)}


def _json(value: str, at: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{at}: not valid JSON ({exc.msg})", "", "fix that example") from None


def _call(obj: Any, at: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise UsageError(f"{at}: a tool call needs a string 'name'", "", "fix that example")
    args = obj.get("arguments", {})
    args = _json(args, at) if isinstance(args, str) else args
    if not isinstance(args, dict):
        raise UsageError(f"{at}: a tool call's arguments must be a JSON object", "", "fix that example")
    return {"type": "function", "function": {"name": obj["name"], "arguments": args}}


def example_tools(obj: Any, where: str) -> list[dict[str, Any]] | None:
    """An example's top-level ``tools`` as OpenAI tool objects (None: it has none); each call of
    its conversation is checked against their names by :func:`examples_of`."""
    tools = obj.get("tools") if isinstance(obj, dict) else None
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        tools = _json(tools, f"{where}, tools")
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise UsageError(f"{where}: 'tools' must be a list of tool objects", "", "fix that example")
    out = [t if t.get("type") == "function" and isinstance(t.get("function"), dict) else {"type": "function", "function": t}
           for t in tools]
    for t in out:
        if not isinstance(t["function"].get("name"), str):
            raise UsageError(f"{where}: a tool without a string 'name'", "", "fix that example")
    return out


def _check_calls(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, where: str) -> None:
    names = {t["function"]["name"] for t in tools or []}
    for m in messages:
        for call in m.get("tool_calls", []):
            if call["function"]["name"] not in names:
                raise UsageError(f"{where}: a call of {call['function']['name'][:60]!r}, which is not in the example's tools",
                                 f"its tools: {', '.join(sorted(names)) or 'none'}",
                                 "list the function under the example's top-level 'tools'")


def to_messages(obj: Any, where: str) -> list[dict[str, Any]]:
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


Tools = list[dict[str, Any]] | None


def examples_of(rows: Iterator[tuple[str, Any]], fields: dict[str, str] | None = None
                ) -> Iterator[tuple[str, str, list[dict[str, Any]], Tools]]:
    """(where, shape, messages, tools) for each (where, raw example)."""
    for where, raw in rows:
        obj = rename_fields(raw, fields or {})
        fmt = detect_format(obj, where)
        messages, tools = to_messages(obj, where), example_tools(obj, where)
        _check_calls(messages, tools, where)
        yield where, fmt or "unknown", messages, tools


def read_sft_file(path: str | Path, fields: dict[str, str] | None = None
                  ) -> Iterator[tuple[str, str, list[dict[str, Any]], Tools]]:
    """(where, format, messages, tools) for every non-empty line; errors name the line."""
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


def segments(tokenizer: Any, messages: list[dict[str, Any]], tools: Tools = None) -> list[tuple[str, bool]]:
    """Split the rendered chat into (text, trained) pieces: assistant turns are trained.

    The template is rendered (with ``tools``) on growing prefixes of the conversation; each
    assistant turn is the text the full render adds after the generation prompt.
    """
    if tools and "tools" not in (tokenizer.chat_template or ""):
        raise UsageError("the SFT data lists tools, but the chat template has no tool support",
                         "the tools would never reach the prompt", "use a chat template that renders `tools` "
                         "(llmkit's own, or the base model's), or drop the tools")

    def render(msgs: list[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)

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


def encode_example(tokenizer: Any, messages: list[dict[str, Any]], tools: Tools = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and the loss mask (1 = trained) of one conversation (with its tools)."""
    ids: list[int] = []
    mask: list[int] = []
    for text, trained in segments(tokenizer, messages, tools):
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


def check_example(messages: list[dict[str, Any]], ids: np.ndarray, mask: np.ndarray, seq_len: int,
                  ends: set[int], decode: Any = None) -> list[str]:
    """Which of ``CHECKS`` one encoded example fails (the usual silent failures of SFT data).
    ``decode`` (token id -> text) lets whitespace the template writes after the end-of-turn token
    (ChatML's newline) trail it."""
    found = []
    if any(m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls") for m in messages):
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
