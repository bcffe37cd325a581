"""JSON Lines: one object per line, errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from llmkit.errors import UsageError


def json_lines(lines: Iterable[str], path: object) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; invalid JSON names its line."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno})", "",
                             "each line must be one JSON object") from None
