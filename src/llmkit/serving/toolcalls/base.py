"""What a tool-call format is to the server: how calls are written, found in an answer, streamed
and forced.

A model writes its tool calls in the format its chat template taught it (Hermes/Qwen's
``<tool_call>`` tags, Llama 3's bare JSON, Mistral's ``[TOOL_CALLS]``). A :class:`ToolParser`
knows one format: whether a template uses it (``detect``), the calls in a finished answer
(``parse``), how much of a growing answer is plain text that can be streamed now (``safe``), and
the grammar of a valid call of the given functions (``grammar``: ``tool_choice`` ``required`` or a
named function decodes under it, so the answer is a call and never prose).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One call as OpenAI returns it: ``arguments`` is JSON text."""

    name: str
    arguments: str
    id: str = ""

    def openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function", "function": {"name": self.name,
                                                                            "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


class Garbled(ValueError):
    """An answer that starts a tool call but does not hold a valid one (bad JSON, unknown name)."""


def new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def call_of(obj: Any, names: set[str], arguments_key: str = "arguments") -> ToolCall:
    """A ToolCall from a decoded ``{"name": ..., "arguments": {...}}`` object (Garbled if it is not one
    of ``names``' calls); arguments given as JSON text are read too."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise Garbled("a call is not an object with a string 'name'")
    if obj["name"] not in names:
        raise Garbled(f"a call names {obj['name'][:60]!r}, which is not one of the request's tools")
    args = obj.get(arguments_key, obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise Garbled("a call's arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise Garbled("a call's arguments are not a JSON object")
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False), new_id())


def decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise Garbled(f"a call is not valid JSON ({exc.msg} at character {exc.pos})") from None


def partial_marker(text: str, marker: str) -> int:
    """Characters at the end of ``text`` that may be the start of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def function_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's ``parameters`` (an empty object schema when it has none)."""
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


class ToolParser:
    """One tool-call format; see the module docstring."""

    name = ""

    def detect(self, template: str) -> bool:
        """Whether a chat template writes this format."""
        raise NotImplementedError

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
        """The answer's text before its calls (None: none) and its calls ([] when it makes none);
        Garbled when it starts a call that is not a valid one."""
        raise NotImplementedError

    def safe(self, text: str) -> int:
        """How many characters of a growing answer are plain text for sure (streamed as content)."""
        raise NotImplementedError

    def grammar(self, tools: list[dict[str, Any]], parallel: bool, tokenizer: Any) -> str:
        """The llguidance grammar of one call (several when ``parallel``) of one of ``tools``."""
        raise NotImplementedError


def parser_for(template: str | None, name: str = "auto") -> ToolParser | None:
    """The parser ``name`` names, or under ``auto`` the one whose format ``template`` writes (None:
    the template has no tool support, or none of the registered formats)."""
    from llmkit.registry import TOOL_PARSERS, load

    if name != "auto":
        return load(TOOL_PARSERS, name, "tool-call parser", "PARSER")
    if not template or "tools" not in template:
        return None
    for each in TOOL_PARSERS:
        parser = load(TOOL_PARSERS, each, "tool-call parser", "PARSER")
        if parser.detect(template):
            return parser
    return None
