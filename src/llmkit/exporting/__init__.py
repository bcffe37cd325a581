"""Export: Hugging Face directories (merged LoRA, dtypes, shards) and GGUF files."""
