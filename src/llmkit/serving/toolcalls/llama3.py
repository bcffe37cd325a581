"""Llama 3.1+ JSON tool calls: the whole answer is ``{"name": ..., "parameters": {...}}`` (several
joined by ``; ``), optionally after ``<|python_tag|>``."""

from __future__ import annotations

from typing import Any

from llmkit.generate.constrain import lark_grammar, lark_json
from llmkit.serving.toolcalls.base import Garbled, ToolCall, ToolParser, call_of, decode_json
from llmkit.serving.toolcalls.hermes import call_schema

TAG = "<|python_tag|>"


class Llama3Json(ToolParser):
    name = "llama3_json"

    def detect(self, template: str) -> bool:
        return "<|start_header_id|>" in template and "tools" in template and "<tool_call>" not in template

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
        body = text.strip().removeprefix(TAG).strip()
        if not body.startswith("{"):
            return text, []
        parts, depth, start, quoted, escaped = [], 0, 0, False, False
        for i, ch in enumerate(body):  # split top-level objects at ';'
            if quoted:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    quoted = False
                continue
            if ch == '"':
                quoted = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            elif ch == ";" and depth == 0:
                parts.append(body[start:i])
                start = i + 1
        parts.append(body[start:])
        if not all(p.strip() for p in parts):
            raise Garbled("an empty call between ';'")
        return None, [call_of(decode_json(p.strip()), names, "parameters") for p in parts]

    def safe(self, text: str) -> int:
        head = text.lstrip()
        if not head or head.startswith("{") or TAG.startswith(head[: len(TAG)]) or head.startswith(TAG):
            return 0
        return len(text)

    def grammar(self, tools: list[dict[str, Any]], parallel: bool, tokenizer: Any) -> str:
        more = ' ("; " call)*' if parallel else ""
        return lark_grammar(f"start: call{more}\ncall: {lark_json(call_schema(tools, 'parameters'))}")


PARSER = Llama3Json()
