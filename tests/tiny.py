"""A tokenizer trained on the embedded corpus and a random tiny llama on it, for decoding tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_llama(out: Path, positions: int = 512, hidden: int = 32, heads: int = 2, kv_heads: int | None = None,
               seed: int = 5, vocab: int = 300) -> tuple[Any, Any]:
    """(the model in eval mode, its tokenizer), the tokenizer saved in ``out``."""
    from llmkit.config.schema import DataConfig, ModelConfig, TokenizerConfig
    from llmkit.data.corpus import iter_documents
    from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap
    from llmkit.model.build import build_model

    cfg = TokenizerConfig(vocab_size=vocab)
    wrap(train_bpe(iter_documents(DataConfig()), cfg), cfg, positions).save_pretrained(str(out))
    tok = load_tokenizer(out)
    model = build_model(ModelConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                                    num_key_value_heads=kv_heads, max_position_embeddings=positions),
                        vocab, tok.eos_token_id, tok.pad_token_id, seed=seed)
    return model.eval(), tok
