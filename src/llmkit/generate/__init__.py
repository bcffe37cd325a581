"""Generation: pure sampling transforms and the KV-cache decode loop (batched, streaming)."""
