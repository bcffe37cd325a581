"""Models: build from config or load a local HF directory; LoRA adapters (peft)."""
