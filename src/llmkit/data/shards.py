"""Pretraining token shards: flat memory-mapped token files plus `meta.json`.

``data/train.bin`` and ``data/val.bin`` hold every document's tokens followed by the EOS token,
as uint16 when the vocabulary has fewer than 65,536 tokens, else uint32. Documents go to the
validation file by a deterministic stride over their position in the corpus (every k-th
document, k = round(1 / val_fraction)), so the split is the same on every run and every machine.

Tokenization runs in Rust over batches of documents on all cores (tiktoken's engine where it gives
the tokenizer's exact ids, else `tokenizers`: see ``llmkit.data.fastbpe``); the
corpus is read in chunks of about ``chunk_bytes``, so memory stays bounded on any corpus size.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from llmkit.errors import UsageError
from llmkit.fsutil import atomic_write_text, fsync_dir
from llmkit.privacy import crypto

CHUNK_BYTES = 4 << 20


class ShardMeta(BaseModel):
    """`data/meta.json`: what the token files hold and where they came from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["llmkit-tokens-v1"] = "llmkit-tokens-v1"
    dtype: Literal["uint16", "uint32"]
    vocab_size: int
    eos_id: int
    train_tokens: int
    val_tokens: int
    train_documents: int
    val_documents: int
    val_fraction: float
    source_bytes: int
    source_sha256: str
    replaced_chars: int
    pii: dict[str, Any] | None = None  # privacy.pii's counts (None: off)
    mix: dict[str, Any] | None = None
    """data.mix: per source its weight (normalized), documents and bytes drawn and their share, and
    the source that ran out first (None: one source)."""
    tokenizer_sha256: str
    encoder: Literal["tokenizers", "tiktoken"] = "tokenizers"
    """Which engine wrote the ids (the same ids either way; see llmkit.data.fastbpe)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocabulary of at most 65,536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def is_validation(index: int, val_fraction: float) -> bool:
    """Deterministic split by document position: every k-th document, from k // 2 on."""
    k = max(2, round(1 / val_fraction))
    return index % k == k // 2


def chunks(documents: Iterable[str], chunk_bytes: int) -> Iterator[list[str]]:
    """Consecutive lists of documents of about ``chunk_bytes`` characters each (the last may be shorter)."""
    batch: list[str] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= chunk_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encoded_chunks(encode: Callable[[list[str]], list[list[int]]], documents: Iterable[str],
                    chunk_bytes: int) -> Iterator[tuple[list[str], list[list[int]]]]:
    """Yield (documents, encodings) chunk by chunk, one chunk always being encoded ahead.

    Both engines release the GIL while encoding, so while a helper thread encodes chunk n+1 the caller
    converts and writes chunk n and the next chunk is read: only the tokenizer's own work is on
    the critical path.
    """
    pieces = chunks(documents, chunk_bytes)
    errors: list[BaseException] = []

    def start(batch: list[str] | None) -> tuple[list[str], list[Any], threading.Thread] | None:
        if batch is None:
            return None
        out: list[Any] = []

        def run() -> None:
            try:
                out.append(encode(batch))
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        return batch, out, worker

    current = start(next(pieces, None))
    while current is not None:
        batch, out, worker = current
        worker.join()
        if errors or not out:
            raise UsageError("tokenization failed", f"the tokenizer raised on a batch of documents: {errors[:1]}",
                             "rerun with --debug") from (errors[0] if errors else None)
        current = start(next(pieces, None))  # encode the next chunk while this one is written
        yield batch, out[0]


def write_token_shards(
    documents: Iterable[str],
    encode: Callable[[list[str]], list[list[int]]],
    eos: int,
    out_dir: Path,
    val_fraction: float,
    vocab_size: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, int]:
    """Tokenize ``documents`` into ``out_dir/train.bin`` and ``val.bin``; returns the counts.

    ``encode`` turns a batch of documents into their ids (``llmkit.data.fastbpe``); EOS is appended
    after every document.
    """
    dtype = token_dtype(vocab_size)
    counts = {"train_tokens": 0, "val_tokens": 0, "train_documents": 0, "val_documents": 0}
    index = 0
    with crypto.open_writer(out_dir / "train.bin") as train_fh, crypto.open_writer(out_dir / "val.bin") as val_fh:
        for batch, encodings in _encoded_chunks(encode, documents, chunk_bytes):
            parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
            for _doc, ids in zip(batch, encodings):
                split = "val" if is_validation(index, val_fraction) else "train"
                ids.append(eos)
                parts[split].append(np.asarray(ids, dtype=dtype))
                counts[f"{split}_documents"] += 1
                index += 1
            for split, fh in (("train", train_fh), ("val", val_fh)):
                if parts[split]:
                    arr = np.concatenate(parts[split])
                    fh.write(arr.tobytes())  # sealed in chunks when privacy.encryption_key_env is set
                    counts[f"{split}_tokens"] += int(arr.size)
    return counts


def read_meta(data_dir: Path) -> ShardMeta:
    """`meta.json` of a prepared data directory, checked against the token files' sizes."""
    meta_path = data_dir / "meta.json"
    if not meta_path.exists():
        raise UsageError(f"no prepared data in {data_dir} (meta.json is missing)",
                         "the token shards are written by `llmkit prepare`",
                         "run: llmkit prepare --config <your run.yaml>")
    try:
        meta = ShardMeta.model_validate_json(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"{meta_path} is not valid", str(exc).splitlines()[0],
                         "rerun `llmkit prepare`") from None
    itemsize = np.dtype(meta.dtype).itemsize
    for split, tokens in (("train", meta.train_tokens), ("val", meta.val_tokens)):
        f = data_dir / f"{split}.bin"
        size = crypto.plain_size(f) if f.exists() else -1
        if size != tokens * itemsize:
            raise UsageError(f"{f} does not match meta.json",
                             f"expected {tokens * itemsize} bytes, found {max(size, 0)}",
                             "rerun `llmkit prepare` (the data was changed or half-written)")
    return meta


def open_tokens(data_dir: Path, split: Literal["train", "val"]) -> Any:
    """The split's tokens as a read-only memory map (checked against meta.json); an encrypted run's
    as a ``crypto.SealedArray``, every chunk authenticated before it is returned."""
    meta = read_meta(data_dir)
    return crypto.open_array(data_dir / f"{split}.bin", meta.dtype)


def publish_shards(staging: Path, data_dir: Path, meta: ShardMeta) -> None:
    """Move staged token files into ``data_dir``: meta.json goes last, so it marks completeness."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "meta.json").unlink(missing_ok=True)
    for name in ("train.bin", "val.bin"):
        with open(staging / name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staging / name, data_dir / name)
    atomic_write_text(data_dir / "meta.json", json.dumps(meta.model_dump(), indent=2) + "\n")
    fsync_dir(data_dir)
