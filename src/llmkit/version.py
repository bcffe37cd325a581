"""llmkit's version (one place; ``llmkit.__version__`` and the package metadata read it)."""

__version__ = "0.1.0"
