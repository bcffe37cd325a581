"""Sizing: parameter counts, memory, compute and cost (pure; no torch at import)."""

from llmkit import api_package

api_package(__name__)  # calling `llmkit.plan(...)` calls llmkit.api.plan
