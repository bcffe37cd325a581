"""The names of llmkit's pluggable pieces and the module that implements each.

Only names and module paths live here (nothing is imported): the config validates
``launch.target`` against them, the CLI builds its choice lists from them, and ``--help`` stays
light. The implementations are imported on first use (:func:`load`).

To add a launch target, an export format or a tool-call format: write its module (see ``llmkit.launching.base`` and
``llmkit.exporting.base``, ``llmkit.serving.toolcalls.base`` for what it exposes) and add one line below.
"""

from __future__ import annotations

import importlib
from typing import Any

from llmkit.errors import UsageError

LAUNCH_TARGETS: dict[str, str] = {  # name -> module with TARGET (render, check, submit)
    "slurm": "llmkit.launching.slurm",
    "kubernetes": "llmkit.launching.kubernetes",
    "skypilot": "llmkit.launching.skypilot",
    "docker": "llmkit.launching.docker",
}
EXPORT_FORMATS: dict[str, str] = {  # name -> module with FORMAT (export, verify)
    "hf": "llmkit.exporting.hf",
    "gguf": "llmkit.exporting.gguf",
}
TOOL_PARSERS: dict[str, str] = {  # name -> module with PARSER (detect, parse, safe, grammar)
    "hermes": "llmkit.serving.toolcalls.hermes",
    "llama3_json": "llmkit.serving.toolcalls.llama3",
    "mistral": "llmkit.serving.toolcalls.mistral",
}


def load(table: dict[str, str], name: str, what: str, attribute: str) -> Any:
    """The ``attribute`` of the module registered as ``name`` in ``table`` (``what``: for errors)."""
    if name not in table:
        raise UsageError(f"unknown {what} {name!r}", f"registered: {', '.join(table)}", "use one of those")
    return getattr(importlib.import_module(table[name]), attribute)
