"""Variable-length examples stored flat: tokens (+ a per-token array) and an offsets index.

``{split}.tokens.bin`` holds all examples' tokens back to back; ``{split}.offsets.npy`` holds
n + 1 int64 boundaries; optional per-token arrays (``{split}.mask.bin``, uint8) line up with
the tokens. `.npy` files are read with ``allow_pickle=False``: data never executes code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import UsageError
from llmkit.privacy import crypto


@dataclass
class Ragged:
    """Examples of one split: ``tokens[offsets[i]:offsets[i + 1]]`` is example i."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens of example ``i`` and its mask (None when the store has no mask)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], (None if self.mask is None else self.mask[a:b])


def write_ragged(out_dir: Path, split: str, examples: Sequence[np.ndarray], dtype: np.dtype,
                 masks: Sequence[np.ndarray] | None = None) -> int:
    """Write one split; returns its token count."""
    lengths = np.fromiter((len(e) for e in examples), dtype=np.int64, count=len(examples))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(examples).astype(dtype) if examples else np.zeros(0, dtype)
    crypto.write_bytes(out_dir / f"{split}.tokens.bin", flat.tobytes())  # sealed with a key
    crypto.save_npy(out_dir / f"{split}.offsets.npy", offsets)
    if masks is not None:
        m = np.concatenate(masks).astype(np.uint8) if masks else np.zeros(0, np.uint8)
        crypto.write_bytes(out_dir / f"{split}.mask.bin", m.tobytes())
    return int(flat.size)


def read_ragged(data_dir: Path, split: str, dtype: str, with_mask: bool) -> Ragged:
    """Memory-map one split written by :func:`write_ragged`, checking that its parts agree."""
    try:
        offsets = crypto.load_npy(data_dir / f"{split}.offsets.npy")
        tokens = crypto.open_array(data_dir / f"{split}.tokens.bin", dtype)
        mask = crypto.open_array(data_dir / f"{split}.mask.bin", np.uint8) if with_mask else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the {split} split in {data_dir}", str(exc)[:300],
                         "rerun `llmkit prepare`") from None
    if offsets.ndim != 1 or int(offsets[-1]) != len(tokens) or (mask is not None and len(mask) != len(tokens)):
        raise UsageError(f"the {split} split in {data_dir} is inconsistent", "offsets, tokens and mask disagree",
                         "rerun `llmkit prepare`")
    return Ragged(tokens, offsets, mask)
