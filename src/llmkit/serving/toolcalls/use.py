"""A request's tool calling: which format, which functions, whether the answer must be a call; the
finished answer split into text and calls, and the same while it streams."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from llmkit.serving.toolcalls.base import Garbled, ToolCall, ToolParser

log = logging.getLogger("llmkit.serving")


@dataclass(frozen=True)
class ToolUse:
    """``mode``: ``auto`` (the model chooses; calls are read from its answer), ``required`` (the
    answer is decoded as one or more calls: never prose). ``tool_choice: none`` makes no ToolUse."""

    parser: ToolParser
    names: frozenset[str]
    mode: Literal["auto", "required"]
    parallel: bool = True

    def finish(self, text: str, reason: str) -> tuple[str | None, list[ToolCall], str]:
        """The answer's content, its calls and the finish reason (``tool_calls`` when it made some).
        Under ``auto``, a call the model garbled comes back as the plain text, with a warning in
        the server log."""
        if reason not in ("stop", "length"):
            return text, [], reason
        try:
            content, calls = self.parser.parse(text, set(self.names))
        except Garbled as exc:
            log.warning("the model's tool call could not be read (%s); answered as text", exc)
            return text, [], reason
        if not calls:
            return text, [], reason
        if not self.parallel and len(calls) > 1:
            log.warning("the model made %d tool calls with parallel_tool_calls false; the first is returned", len(calls))
            calls = calls[:1]
        return content, calls, "tool_calls"


@dataclass
class ToolStream:
    """One streamed choice under ``auto``: its text is streamed as content until a call may begin;
    what follows is held, and read as calls (or sent as text) when the choice ends."""

    use: ToolUse
    text: str = ""
    sent: int = field(default=0)

    def add(self, piece: str) -> str:
        """Content that can be streamed now."""
        self.text += piece
        # trailing blanks wait too: the text before a call is sent without them, as unstreamed
        safe = max(len(self.text[:self.use.parser.safe(self.text)].rstrip()), self.sent)
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def end(self, reason: str) -> tuple[str, list[ToolCall], str]:
        """(the content not streamed yet, the calls, the finish reason)."""
        content, calls, reason = self.use.finish(self.text, reason)
        if not calls:
            rest, self.sent = self.text[self.sent:], len(self.text)
            return rest, [], reason
        start = max(self.use.parser.safe(self.text), self.sent)  # where the calls begin
        return self.text[self.sent:start].rstrip(), calls, reason
