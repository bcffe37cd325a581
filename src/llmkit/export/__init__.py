"""Export: Hugging Face directories (merged LoRA, dtypes, shards) and GGUF files."""

from llmkit import api_package

api_package(__name__)  # calling `llmkit.export(...)` calls llmkit.api.export
