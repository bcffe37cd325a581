"""Mistral tool calls: ``[TOOL_CALLS]`` then a JSON list of ``{"name": ..., "arguments": {...}}``
(v3 templates), or ``[TOOL_CALLS]name[ARGS]{...}`` per call (v11+ templates).

``[TOOL_CALLS]`` is a special token that detokenizing drops, so an answer that is a bare JSON list
of calls is read as calls too."""

from __future__ import annotations

import json
import re
from typing import Any

from llmkit.generate.constrain import lark_grammar, lark_json
from llmkit.serving.toolcalls.base import Garbled, ToolCall, ToolParser, call_of, decode_json, partial_marker
from llmkit.serving.toolcalls.hermes import call_schema

MARK, ARGS = "[TOOL_CALLS]", "[ARGS]"


def _token(tokenizer: Any, text: str) -> str:
    """``text`` in a Lark grammar: the special token by id when the tokenizer has it as one token."""
    tid = tokenizer.convert_tokens_to_ids(text) if tokenizer is not None else None
    if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
        return f"<[{tid}]>"
    return json.dumps(text)


class Mistral(ToolParser):
    name = "mistral"

    def detect(self, template: str) -> bool:
        return MARK in template

    def parse(self, text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
        start = text.find(MARK)
        if start < 0:
            stripped = text.strip()
            if not (stripped.startswith("[{") and stripped.endswith("}]")):
                return text, []
            start, body = 0, stripped
        else:
            body = text[start + len(MARK):].strip()
        content = text[:start].strip() or None
        if ARGS in body:  # name[ARGS]{...}[TOOL_CALLS]name[ARGS]{...}
            calls = []
            for part in body.split(MARK):
                name, sep, args = part.partition(ARGS)
                if not sep:
                    raise Garbled("a call without [ARGS]")
                calls.append(call_of({"name": name.strip(), "arguments": decode_json(args.strip())}, names))
            return content, calls
        found = decode_json(body)
        if not isinstance(found, list) or not found:
            raise Garbled("[TOOL_CALLS] is not followed by a list of calls")
        return content, [call_of(obj, names) for obj in found]

    def safe(self, text: str) -> int:
        start = text.find(MARK)
        if start >= 0:
            return start
        if re.match(r"\s*\[", text) or not text.strip():
            return 0
        return len(text) - partial_marker(text, MARK)

    def grammar(self, tools: list[dict[str, Any]], parallel: bool, tokenizer: Any) -> str:
        item = lark_json({"type": "array", "items": call_schema(tools), "minItems": 1,
                          **({} if parallel else {"maxItems": 1})})
        return lark_grammar(f"start: {_token(tokenizer, MARK)} calls\ncalls: {item}")


PARSER = Mistral()
