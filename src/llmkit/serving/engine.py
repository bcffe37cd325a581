"""The serving engine: one thread that runs a BatchDecoder; requests join it between steps.

The HTTP layer submits a request (one or more choices) and reads its events from an asyncio
queue. The engine admits waiting requests while the batch has room (``max_batch_size``), prefills
the ones admitted together in one forward pass (``prefill_groups``), decodes one step for
everyone, and delivers each event to its request's queue. A request cancelled by
its client (disconnect, timeout) leaves the batch at the next step. A failure that belongs to one
request (its prefill, its sampling or stopping) ends that request alone with an error event; only
a failure of the shared forward pass ends every request in the batch. The engine then goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from llmkit.generate.batch import BatchDecoder, Event
from llmkit.generate.fastpath import DecodeStep, supports
from llmkit.generate.prefix import PrefixCache
from llmkit.generate.sampling import SamplingParams
from llmkit.faults import fault_point

log = logging.getLogger("llmkit.serving")


class Overloaded(Exception):
    """More requests than max_concurrency + max_queue: the client should retry later."""


@dataclass
class EngineError:
    """Delivered instead of an Event when this request could not be completed.

    ``kind``: ``timeout`` (it ran past serve.request_timeout_s: a 504) or ``internal`` (the engine
    failed while decoding it: a 500)."""

    message: str
    kind: Literal["timeout", "internal"] = "internal"


@dataclass
class Handle:
    """One submitted request: its choices (a prompt and sampling parameters each), and where its
    events go."""

    id: int
    prompts: list[list[int]]
    params: list[SamplingParams]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    admitted_at: float | None = None
    submitted_at: float = field(default_factory=time.monotonic)
    open_choices: int = 0

    def keys(self) -> list[tuple[int, int]]:
        return [(self.id, i) for i in range(len(self.params))]


def decode_step(model: Any, tokenizer: Any, compiled: bool, pack: bool | str = False,
                frozen: bool = False) -> DecodeStep | None:
    """The engine's decode step: llmkit's own for the architectures that have one (None: through
    ``model.forward``), with packed weights as ``pack`` says (serve.pack_weights), compiled and
    warmed up when ``compiled`` (serve.compile: true), so that no request waits for a compile: a
    greedy run of one row and one of two, the two shapes torch compiles for (a batch of one and a
    dynamic batch). ``frozen``: no adapter will change the weights while serving, so the compile
    takes them as constants (``DecodeStep.compile``)."""
    import sys
    import time

    if not supports(model):
        asked = [what for what, on in (("serve.compile", compiled), ("serve.pack_weights", pack is True)) if on]
        print(f"decode: llmkit's decode step does not cover {model.config.model_type} models; decoding through "
              "transformers' forward" + (f" ({' and '.join(asked)} do not apply)" if asked else ""), file=sys.stderr)
        return None
    step = DecodeStep(model, pack=pack, pack_forward=True)  # the server's model is only served
    if pack:
        print(f"serve.pack_weights: {step.pack_note}", file=sys.stderr)
    if not compiled or not step.compile(frozen=frozen):
        return step
    print("compiling the decode step (serve.compile: true; about a minute on a CPU) ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    params = SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True)
    try:
        for rows in (1, 2):
            decoder = BatchDecoder(model, tokenizer, fast=step)
            decoder.add([[token, token]] * rows, [params] * rows, list(range(rows)))
            while decoder:
                decoder.step()
    except Exception as exc:  # noqa: BLE001 - a compile that fails falls back to eager
        print(f"warning: the compiled decode step failed ({type(exc).__name__}: {str(exc)[:200]}); decoding eagerly",
              file=sys.stderr)
        step.fn = step.forward
        return step
    print(f"decode step compiled in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return step


PREFILL_TOKENS = 4096  # the most (padded) prompt tokens prefilled in one forward pass


def prefill_groups(handles: list[Handle], budget: int = PREFILL_TOKENS) -> list[list[Handle]]:
    """Requests admitted together, in order, split into groups prefilled by one forward pass each:
    the prompts of a group are left-padded to its longest, so a group holds at most ``budget``
    padded tokens (a single request over it is a group of its own). Prefilling the requests that
    arrive together at once, not one forward each, is what keeps a full batch's joins cheap
    (16 streams of short completions: a request arrives for every slot that frees up)."""
    groups: list[list[Handle]] = []
    rows = longest = 0
    for h in handles:
        n, size = len(h.prompts), max(len(p) for p in h.prompts)
        if groups and (rows + n) * max(longest, size) <= budget:
            groups[-1].append(h)
            rows, longest = rows + n, max(longest, size)
        else:
            groups.append([h])
            rows, longest = n, size
    return groups


def _put_all(items: list[tuple[Handle, Event]]) -> None:
    for handle, ev in items:
        handle.queue.put_nowait(ev)


class Engine:
    """Continuous batching over one model on one device."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int, max_concurrency: int, max_queue: int,
                 step: DecodeStep | None | Callable[[], DecodeStep | None] = None, prefix_cache_bytes: int = 0,
                 namespace: str = "model", adapters: Callable[[], Any] | None = None):
        """``step``: the decode step the batch runs (see :func:`decode_step`; None: ``model.forward``),
        or a function that makes it, called on the engine's thread before the constructor returns:
        the thread that decodes is then the one that packed and warmed the step (oneDNN products
        first run on another thread ran ~25% slower on the engine's, measured on a 2-core CPU).
        ``prefix_cache_bytes``: the prefix cache's budget (serve.prefix_cache_mb; 0: none), its
        blocks keyed by ``namespace`` (the served model) as well as by their tokens. ``adapters``:
        makes the :class:`~llmkit.model.multilora.AdapterSet` of the LoRA adapters served on the
        model (called on the engine's thread before ``step``, which must see the wrapped projections)."""
        self.tokenizer = tokenizer
        self.max_batch, self.max_concurrency, self.max_queue = max_batch_size, max_concurrency, max_queue
        self._waiting: deque[Handle] = deque()
        self._active: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self._wake = threading.Condition()
        self._stop = False
        self.batch_size = 0
        self.steps = 0
        self.namespace = namespace
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.adapters: Any = None
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._retiring: set[int] = set()
        made: list[Any] = []
        ready = threading.Event()

        def start() -> None:
            try:
                self.adapters = adapters() if adapters is not None else None
                made.append(step() if callable(step) and not isinstance(step, DecodeStep) else step)
            except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which raises it
                made.append(exc)
                ready.set()
                return
            self.step = made[0]
            self.decoder = self._decoder(model)
            self.window = self.decoder.window
            ready.set()
            self._run()

        self._thread = threading.Thread(target=start, name="llmkit-engine", daemon=True)
        self._thread.start()
        ready.wait()
        if isinstance(made[0], BaseException):
            raise made[0]

    def _decoder(self, model: Any) -> BatchDecoder:
        return BatchDecoder(model, self.tokenizer, fast=self.step or False, prefix_cache=self.prefix_cache,
                            namespace=self.namespace, adapters=self.adapters)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine's thread between two decode steps (loading an adapter changes
        what the next forward pass computes): a future of its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def retire(self, slot: int) -> None:
        """Unload adapter ``slot`` once no request uses it any more (requests already running on it finish)."""
        self.call(lambda: self._retiring.add(slot))

    def _between_steps(self) -> None:
        """Queued calls, then the adapters no request uses any more."""
        while self._calls:
            with self._wake:
                fn, future = self._calls.popleft()
            try:
                future.set_result(fn())
            except Exception as exc:  # noqa: BLE001 - the caller gets it
                future.set_exception(exc)
        if self._retiring:
            with self._wake:
                used = {sp.adapter for h in [*self._waiting, *self._active.values()] for sp in h.params}
            used |= {seq.params.adapter for seq in self.decoder.seqs}
            for slot in sorted(self._retiring - used):
                self.adapters.unload(slot)
                self._retiring.discard(slot)

    # --- called from the event loop -----------------------------------------------------------

    def submit(self, prompts: list[list[int]], params: list[SamplingParams]) -> Handle:
        """Queue a request, one prompt per choice (raises Overloaded when the server is full)."""
        with self._wake:
            if len(self._active) + len(self._waiting) >= self.max_concurrency + self.max_queue:
                raise Overloaded
            handle = Handle(next(self._ids), prompts, params, asyncio.get_running_loop())
            handle.open_choices = len(params)
            self._waiting.append(handle)
            self._wake.notify()
        return handle

    def cancel(self, handle: Handle) -> None:
        """Stop generating for a request (its client is gone)."""
        with self._wake:
            handle.cancelled = True
            if handle in self._waiting:
                self._waiting.remove(handle)
            self._wake.notify()

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def kv_cache_bytes(self) -> int:
        """Memory of the running batch's KV cache (its buffers only grow, up to slots x context)."""
        decoder = getattr(self, "decoder", None)
        return decoder.kv.bytes if decoder is not None else 0

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=5)

    # --- the engine thread ----------------------------------------------------------------------

    def _deliver(self, handle: Handle, item: Event | EngineError) -> None:
        try:
            handle.loop.call_soon_threadsafe(handle.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    def _admit(self) -> list[Handle]:
        """Waiting requests that fit: concurrency limit and batch room."""
        admitted = []
        room = self.max_batch - len(self.decoder)
        with self._wake:
            while self._waiting and len(self._active) < self.max_concurrency:
                need = len(self._waiting[0].params)
                if need > room and room < self.max_batch:  # wait for room (a too-wide request runs alone)
                    break
                handle = self._waiting.popleft()
                handle.admitted_at = time.monotonic()
                self._active[handle.id] = handle
                admitted.append(handle)
                room -= need
        return admitted

    def _fail_one(self, handle: Handle, message: str) -> None:
        """End one request with an error: its other choices leave the batch at the next step."""
        with self._wake:
            self._active.pop(handle.id, None)
        handle.cancelled = True
        for key in handle.keys():
            self.decoder.cancel(key)
        log.error("request %d failed inside the engine: %s", handle.id, message)
        self._deliver(handle, EngineError("generation failed for this request (the server log has the cause)"))

    def _dispatch(self, events: list[Event]) -> None:
        """Deliver a step's events: one wake-up of each event loop per step, not one per event
        (16 streams meant 16 cross-thread calls, each waking the loop, per token)."""
        batches: dict[Any, list[tuple[Handle, Event]]] = {}
        for ev in events:
            rid, _choice = ev.key  # type: ignore[misc]
            handle = self._active.get(rid)
            if handle is None:
                continue
            if ev.error is not None:
                self._fail_one(handle, ev.error)
                continue
            batches.setdefault(handle.loop, []).append((handle, ev))
            if ev.finish_reason:
                handle.open_choices -= 1
                if handle.open_choices == 0:
                    with self._wake:
                        self._active.pop(rid, None)
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

    def _prefill(self, group: list[Handle]) -> None:
        """Prefill the requests of ``group`` in one forward pass and join them to the batch. If that
        raises, each request is prefilled alone, so that a failure ends only the request it belongs to."""
        if len(group) > 1:
            try:
                events = self.decoder.add([p for h in group for p in h.prompts], [sp for h in group for sp in h.params],
                                          [k for h in group for k in h.keys()])
            except Exception:  # noqa: BLE001 - find the request it belongs to, one at a time
                pass
            else:
                self._dispatch(events)
                return
        for handle in group:
            try:
                events = self.decoder.add(handle.prompts, handle.params, handle.keys())
            except Exception as exc:  # this request's prefill: the running batch is untouched
                self._fail_one(handle, f"{type(exc).__name__}: {exc}"[:300])
                continue
            self._dispatch(events)

    def _fail_all(self, message: str) -> None:
        with self._wake:
            failed = list(self._active.values())
            self._active.clear()
        for handle in failed:
            self._deliver(handle, EngineError(message))
        self.decoder = self._decoder(self.decoder.model)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not len(self.decoder) and not self._calls \
                        and not self._retiring:
                    self._wake.wait(timeout=0.5)
                if self._stop:
                    return
            try:
                self._between_steps()
                admitted = []
                for handle in self._admit():
                    if handle.cancelled:
                        self._dispatch([Event(k, None, "", "cancelled") for k in handle.keys()])
                    else:
                        admitted.append(handle)
                for group in prefill_groups(admitted):
                    self._prefill(group)
                for seq in self.decoder.seqs:
                    owner = self._active.get(seq.key[0])  # type: ignore[index]
                    if owner is None or owner.cancelled:
                        self.decoder.cancel(seq.key)
                self.batch_size = len(self.decoder)
                if len(self.decoder):
                    fault_point("engine")
                    self._dispatch(self.decoder.step())
                    self.steps += 1
            except Exception as exc:  # never let one bad step kill the server
                log.exception("engine step failed")
                self._fail_all(f"generation failed: {type(exc).__name__}")
