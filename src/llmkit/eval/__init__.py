"""Evaluation: perplexity and bits per byte, classification metrics, fixed samples."""
