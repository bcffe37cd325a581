"""Data: corpora, tokenizers, token shards, SFT and classification sets, batch samplers.

Nothing here imports torch: the trainer turns the numpy batches into tensors.
"""
