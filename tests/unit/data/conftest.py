"""A small tokenizer trained once per session on the embedded corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config.schema import DataConfig, TokenizerConfig
from llmkit.data.corpus import iter_documents
from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    cfg = TokenizerConfig(vocab_size=512)
    out = tmp_path_factory.mktemp("tok")
    wrap(train_bpe(iter_documents(DataConfig()), cfg), cfg, 256).save_pretrained(str(out))
    return load_tokenizer(out)


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokdir")
    tokenizer.save_pretrained(str(out))
    return out
