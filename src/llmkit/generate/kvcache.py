"""The KV cache of a running batch: pre-allocated slots written in place.

Keys and values of every layer live in buffers of shape (slots, kv_heads, capacity, head_dim).
All rows share one time axis: the batch holds positions [start, end), and a row of length n
occupies [end - n, end) with the positions before it masked out. So:

- a decode step writes position ``end`` of every row in place (transformers' DynamicCache
  concatenates the whole cache, every layer, at every step: O(batch x length) copied per token);
- a joining row's prefill cache is copied into the next free slot, right-aligned at ``end``; a row
  longer than the batch moves ``start`` back, and the rows already there only mask more positions
  (nothing of theirs moves; the join used to left-pad and concatenate the whole batch);
- a leaving row is replaced by the last row (one row copied, not the batch re-gathered);
- slots and time grow by doubling, and the time axis is moved back to 0 when ``end`` reaches the
  capacity, so each generated token costs amortised O(1) copies. Time grows no further than the
  longest row can be (``longest``, the model's context, + 2): past it the axis is always moved
  back instead, so a server that runs for days holds at most slots x (context + 2) positions,
  reached early, and its memory does not step up whenever rows of unusual lengths line up.

Positions a row does not own are zeros or stale keys of a row that left: always finite, and
masked, so they never count.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from transformers.cache_utils import Cache, DynamicLayer


def _inference(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run under ``torch.inference_mode``: the buffers are inference tensors (made and written there)."""
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return method(*args, **kwargs)
    return run


class _SlotLayer(DynamicLayer):
    """One model layer's view of the pool: what the attention code calls ``update`` on."""

    def __init__(self, pool: "SlotCache", index: int):
        super().__init__()
        self.pool, self.index = pool, index
        self.is_initialized = True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return self.pool.write(self.index, key_states, value_states)

    def get_seq_length(self) -> int:
        return self.pool.end - self.pool.start

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0


class SlotCache:
    """The cache of ``rows`` live sequences; see the module docstring. ``cache()`` is what the model's
    forward takes for one decode step; ``mask()`` the attention mask that goes with it."""

    def __init__(self, layers: int, device: Any, longest: int | None = None):
        self.layers, self.device = layers, device
        # the time axis never needs more than the longest row (+ the step's two positions)
        self.most = longest + 2 if longest else None
        self.keys: list[Any] = []
        self.values: list[Any] = []
        self.valid: Any = None  # (slots, capacity) long: 1 where a row owns the position
        self.rows = 0
        self.start = self.end = 0

    @property
    def capacity(self) -> int:
        return self.valid.size(1) if self.valid is not None else 0

    @property
    def slots(self) -> int:
        return self.valid.size(0) if self.valid is not None else 0

    @property
    def bytes(self) -> int:
        """Memory of the buffers (keys, values, ownership)."""
        tensors = [*self.keys, *self.values] + ([self.valid] if self.valid is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def _grown(self, need: int) -> int:
        """The time capacity for ``need`` positions: doubled, but not past :attr:`most`."""
        doubled = 2 * self.capacity if self.most is None else min(2 * self.capacity, self.most)
        return max(need, doubled)

    # --- what one forward pass sees -------------------------------------------------------------

    @_inference
    def cache(self) -> Any:
        """A transformers ``Cache`` whose layers write one new position (``end``) into the slots."""
        self._reserve(self.rows, self.end + 1)
        return Cache(layers=[_SlotLayer(self, i) for i in range(self.layers)])

    @_inference
    def reserve_step(self) -> None:
        """Room for one more position, owned by every live row (the fast decode step's set-up:
        what ``cache()`` and ``mask()`` do, without the transformers objects). One position more is
        kept free, so the span a step reads is never the whole buffer: a compiled step then sees
        the same strides every time, and is not compiled again for a contiguous one."""
        self._reserve(self.rows, self.end + 2)
        self.valid[: self.rows, self.end] = 1

    @_inference
    def mask(self) -> Any:
        """(rows, end + 1 - start): the positions each row attends over, the new one included."""
        self.valid[: self.rows, self.end] = 1
        return self.valid[: self.rows, self.start : self.end + 1]

    @_inference
    def write(self, layer: int, keys: Any, values: Any) -> tuple[Any, Any]:
        n = keys.size(-2)
        self.keys[layer][: self.rows, :, self.end : self.end + n] = keys
        self.values[layer][: self.rows, :, self.end : self.end + n] = values
        span = slice(self.start, self.end + n)
        return self.keys[layer][: self.rows, :, span], self.values[layer][: self.rows, :, span]

    @_inference
    def advance(self) -> None:
        """The forward pass wrote position ``end`` for every row."""
        self.end += 1

    # --- rows joining and leaving ---------------------------------------------------------------

    @_inference
    def join(self, prefill: Any, mask: Any) -> None:
        """Append the rows of a prefill ``DynamicCache`` (keys (n, H, L, D)) with their (n, L) mask."""
        n, length = mask.shape
        if self.valid is None:
            first = prefill.layers[0]
            self.keys = [torch.zeros(0, *first.keys.shape[1:2], 0, first.keys.size(-1), dtype=first.keys.dtype,
                                     device=self.device) for _ in range(self.layers)]
            self.values = [k.clone() for k in self.keys]
            self.valid = torch.zeros(0, 0, dtype=torch.long, device=self.device)
            self.start = self.end = length
        if length > self.end:  # longer than any slot's history: make room on the left
            self._shift(length - self.end)
        self._reserve(self.rows + n, self.end)
        rows = slice(self.rows, self.rows + n)
        span = slice(self.end - length, self.end)
        for i, layer in enumerate(prefill.layers):
            self.keys[i][rows, :, span] = layer.keys
            self.values[i][rows, :, span] = layer.values
        self.valid[rows] = 0
        self.valid[rows, span] = mask
        self.start = min(self.start, self.end - length)
        self.rows += n

    @_inference
    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows`` (indices of live rows); returns the new order of those rows, as the
        caller's per-row state must follow it: ``[old index at new position 0, 1, ...]``."""
        order = list(range(self.rows))
        gone = sorted(set(order) - set(rows), reverse=True)
        for hole in gone:  # fill each hole with the last row
            last = len(order) - 1
            if hole != last:
                self._copy_row(last, hole)
                order[hole] = order[last]
            order.pop()
        self.rows = len(order)
        if self.rows == 0:
            self.start = self.end
        else:
            owned = self.valid[: self.rows, self.start : self.end].any(0).nonzero()
            if len(owned):
                self.start += int(owned[0])
        return order

    # --- storage --------------------------------------------------------------------------------

    def _copy_row(self, src: int, dst: int) -> None:
        span = slice(self.start, self.end)
        for k, v in zip(self.keys, self.values):
            k[dst, :, span] = k[src, :, span]
            v[dst, :, span] = v[src, :, span]
        self.valid[dst] = self.valid[src]

    def _reserve(self, rows: int, end: int) -> None:
        """Room for ``rows`` slots and positions up to ``end`` (exclusive): compact or grow."""
        full = self.most is not None and self.capacity >= self.most
        if self.rows and end > self.capacity and (end - self.start <= self.capacity // 2 or full):
            ahead = end - self.end
            self._shift(-self.start)  # move the live span to the left edge
            end = self.end + ahead
        need_rows, need_time = max(rows, self.slots), max(end, self.capacity)
        if need_rows == self.slots and need_time == self.capacity:
            return
        grow_rows = max(need_rows, 2 * self.slots) if need_rows > self.slots else self.slots
        grow_time = self._grown(need_time) if need_time > self.capacity else self.capacity
        self._resize(grow_rows, grow_time, 0)

    def _shift(self, by: int) -> None:
        """Move every row's positions ``by`` to the right (negative: to the left)."""
        need = self.end + by
        if by > 0 and need > self.capacity:
            self._resize(max(self.slots, self.rows), self._grown(need), by)
        else:
            self._resize(self.slots, self.capacity, by)
        self.start += by
        self.end += by

    def _resize(self, slots: int, capacity: int, shift: int) -> None:
        """New buffers of ``slots`` x ``capacity``, the live span copied ``shift`` positions later."""
        span = slice(self.start, self.end)
        moved = slice(self.start + shift, self.end + shift)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                new = torch.zeros(slots, old.size(1), capacity, old.size(3), dtype=old.dtype, device=self.device)
                new[: self.rows, :, moved] = old[: self.rows, :, span]
                store[i] = new
        valid = torch.zeros(slots, capacity, dtype=torch.long, device=self.device)
        valid[: self.rows, moved] = self.valid[: self.rows, span]
        self.valid = valid
