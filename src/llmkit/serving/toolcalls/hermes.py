"""Hermes / Qwen tool calls (and llmkit's own ChatML): each call is a JSON object
``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>`` lines, after any text."""

from __future__ import annotations

import re
from typing import Any

from llmkit.generate.constrain import lark_grammar, lark_json
from llmkit.serving.toolcalls.base import (Garbled, ToolCall, ToolParser, call_of, decode_json, function_schema,
                                           partial_marker)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def call_schema(tools: list[dict[str, Any]], arguments_key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call of one of ``tools``: its name and arguments."""
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 arguments_key: function_schema(t)},
                "required": ["name", arguments_key], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


class Hermes(ToolParser):
    name = "hermes"

    def detect(self, template: str) -> bool:
        return OPEN in template

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
        start = text.find(OPEN)
        if start < 0:
            return text, []
        calls = [call_of(decode_json(body), names) for body in _CALL.findall(text[start:])]
        rest = _CALL.sub("", text[start:]).strip()
        if rest:
            raise Garbled(f"text between or after the calls: {rest[:60]!r}")
        return text[:start].strip() or None, calls

    def safe(self, text: str) -> int:
        start = text.find(OPEN)
        return start if start >= 0 else len(text) - partial_marker(text, OPEN)

    def grammar(self, tools: list[dict[str, Any]], parallel: bool, tokenizer: Any) -> str:
        more = ' ("\\n" tc)*' if parallel else ""
        return lark_grammar(f"start: tc{more}\ntc: \"{OPEN}\\n\" call \"\\n{CLOSE}\"\ncall: {lark_json(call_schema(tools))}")


PARSER = Hermes()
