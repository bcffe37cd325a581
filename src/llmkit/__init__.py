"""llmkit: from a bare machine to a trained, evaluated and served language model."""

__version__ = "0.1.0"
