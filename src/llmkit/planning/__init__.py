"""Sizing: parameter counts, memory, compute and cost (pure; no torch at import)."""
