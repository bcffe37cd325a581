"""Random-weight llama bases for the benchmarks: a byte-level BPE trained on the embedded
documentation (with llmkit's chat template), saved beside the weights as a Hugging Face directory."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


def random_llama(root: Path, shape: dict[str, Any], vocab: int = 4096, seed: int = 0) -> Path:
    """``root/base``: a llama of ``shape`` (random weights, ``seed``) with a ``vocab``-token tokenizer."""
    import torch
    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmkit.config.load import load_config
    from llmkit.data.prepare import prepare

    path = root / "tok.yaml"
    path.write_text(yaml.safe_dump({"name": "tok", "runs_root": str(root / "runs"), "tokenizer": {"vocab_size": vocab},
                                    "data": {"source": "embedded", "val_fraction": 0.05}}))
    prepare(load_config(path, environ={}))
    base = root / "base"
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **shape)).save_pretrained(str(base))
    for f in (root / "runs" / "tok" / "tokenizer").iterdir():
        shutil.copy2(f, base / f.name)
    return base
