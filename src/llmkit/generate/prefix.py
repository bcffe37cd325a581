"""Prefix caching: the keys and values of prompt prefixes kept for the next request that shares them.

Requests to a server repeat their start: the system prompt, the tool list, few-shot examples. The
cache holds the KV of prompts in blocks of ``block`` tokens. A block's key is a hash of every token
from the prompt's start to the block's end, and of the namespace (the model, and the adapter when
there is one): a block is reused only after exactly the same tokens, by the same weights. A new
prompt takes the longest run of its leading blocks found in the cache and is prefilled from there
(at least its last token is always computed: its logits give the first sampled token). Blocks are
kept in LRU order within ``budget_bytes``; taking or storing a prompt's blocks makes them the
newest, its first block last, so eviction takes a prompt's last blocks before its first (a block
is useless without the ones before it).

Stored blocks are copies of what a prefill computed, so a request that hits computes the same
attention over the same keys and values as one that does not: greedy tokens are the same and
log-probabilities agree to float rounding (tests/unit/generate/test_prefix.py).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class PrefixStats:
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one block
    queried_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens not prefilled again
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of the looked-up prompt tokens that came from the cache."""
        return self.cached_tokens / self.queried_tokens if self.queried_tokens else 0.0


class PrefixCache:
    """See the module docstring. Thread-safe: the engine's thread uses it, /metrics reads it."""

    def __init__(self, budget_bytes: int, block: int = 16):
        self.budget, self.block = budget_bytes, block
        self._blocks: OrderedDict[bytes, Any] = OrderedDict()  # key -> (layers, 2, kv_heads, block, head_dim)
        self.bytes = 0
        self.stats = PrefixStats()
        self._lock = threading.Lock()

    def _keys(self, namespace: str, tokens: list[int], blocks: int) -> list[bytes]:
        keys, h = [], hashlib.blake2b(namespace.encode(), digest_size=16).digest()
        for b in range(blocks):
            chunk = tokens[b * self.block:(b + 1) * self.block]
            h = hashlib.blake2b(h + b"".join(t.to_bytes(4, "little") for t in chunk), digest_size=16).digest()
            keys.append(h)
        return keys

    def lookup(self, namespace: str, tokens: list[int]) -> tuple[int, Any]:
        """(how many leading tokens are cached, their KV as one (layers, 2, kv_heads, n, head_dim)
        tensor, or None). Always leaves at least one token to prefill."""
        import torch

        usable = (len(tokens) - 1) // self.block
        with self._lock:
            found, keys = [], []
            for key in self._keys(namespace, tokens, usable):
                value = self._blocks.get(key)
                if value is None:
                    break
                keys.append(key)
                found.append(value)
            self._touch(keys)
            n = len(found) * self.block
            self.stats.lookups += 1
            self.stats.hits += bool(found)
            self.stats.queried_tokens += len(tokens)
            self.stats.cached_tokens += n
        return (n, torch.cat(found, dim=3)) if found else (0, None)

    def store(self, namespace: str, tokens: list[int], kv: Any) -> None:
        """Keep the whole blocks of ``tokens`` whose KV is ``kv`` (layers, 2, kv_heads, len(tokens), head_dim).

        Room is made by evicting the least recently used blocks of other prompts; a prompt longer
        than the budget keeps its leading blocks (the ones a later prompt can reuse)."""
        blocks = len(tokens) // self.block
        if not blocks or self.budget <= 0:
            return
        size = kv[:, :, :, :self.block].numel() * kv.element_size()
        with self._lock:
            keys = self._keys(namespace, tokens, blocks)
            missing = [b for b, key in enumerate(keys) if key not in self._blocks]
            chain = set(keys)
            victims = []
            free = self.budget - self.bytes
            for key in self._blocks:  # oldest first
                if free >= len(missing) * size:
                    break
                if key not in chain:
                    victims.append(key)
                    free += size
            for key in victims:
                self._blocks.pop(key)
                self.bytes -= size
            self.stats.evicted_blocks += len(victims)
            for b in missing[:max(0, (self.budget - self.bytes) // size)]:
                self._blocks[keys[b]] = kv[:, :, :, b * self.block:(b + 1) * self.block].clone()
                self.bytes += size
            self._touch(keys)

    def _touch(self, keys: list[bytes]) -> None:
        """Make a chain the newest, its first block last: eviction takes a chain's tail before its head."""
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def __len__(self) -> int:
        return len(self._blocks)
