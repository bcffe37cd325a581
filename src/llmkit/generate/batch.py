"""A running batch of sequences that new ones can join between steps (continuous batching).

``add`` prefills new prompts together (left-padded), samples their first token and copies their
KV cache into free slots of the running batch's cache (``llmkit.generate.kvcache.SlotCache``:
pre-allocated, written in place; a row keeps its own positions and attention). ``step`` decodes
one token for every live row. Finished, cancelled and stopped rows leave the batch (and the
cache) at once.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmkit.errors import UsageError
from llmkit.generate.constrain import Constraint, mask_logits
from llmkit.generate.fastpath import DecodeStep, supports
from llmkit.generate.kvcache import SlotCache
from llmkit.generate.prefix import PrefixCache
from llmkit.generate.sampling import SamplingParams, log_probs, next_tokens


@dataclass
class Event:
    """One sequence's progress: new text (possibly empty) and, at the end, why it finished."""

    key: Hashable
    token_id: int | None
    text: str
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None  # why this sequence failed (finish_reason "error"); the others go on
    logprob: float | None = None  # of ``scored``, when the sequence asked for logprobs
    scored: int | None = None  # the token ``logprob`` is of: token_id, or the end token that stopped it
    top: list[tuple[int, float]] | None = None  # the most likely alternatives at that position
    prompt: list[tuple[int, float | None, list[tuple[int, float]] | None]] | None = None
    """With prompt_logprobs (echo), on the sequence's first event: each prompt token, its
    log-probability given the tokens before it (None for the first) and the alternatives."""


@dataclass
class _Seq:
    key: Hashable
    params: SamplingParams
    limit: int
    generator: Any
    seen: Any  # (V,) bool tensor, or None when no repetition penalty applies
    counts: Any = None  # (V,) generated-token counts, when a presence or frequency penalty applies
    prompt: Any = None  # prompt log-probabilities to deliver with the first event (echo)
    constraint: Any = None  # the row's grammar (llmkit.generate.constrain.Constraint), if it has one
    ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded so far (complete characters only)
    emitted: int = 0  # characters of ``text`` already streamed
    prefix_offset: int = 0
    read_offset: int = 0
    cancelled: bool = False

    def detokenize(self, tokenizer: Any, flush: bool = False) -> None:
        """Extend ``text`` by what the newest tokens spell, decoding only a short window
        (a token that ends inside a multi-byte character waits for the rest, unless ``flush``)."""
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        new = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(new) > len(prefix) and (flush or not new.endswith("\ufffd")):
            self.text += new[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)


def holdback(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may be the start of a stop string: not streamed yet."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


def first_stop(text: str, stops: Sequence[str], emitted: int) -> int:
    """Where the earliest stop string starts in ``text`` (-1: none); only new text is searched."""
    found = [i for s in stops if (i := text.find(s, max(0, emitted - len(s) + 1))) >= 0]
    return min(found, default=-1)


def top_log_probs(row: Any, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of one (V,) log-probability row, best first."""
    if k <= 0:
        return []
    values, ids = row.topk(min(k, row.numel()))
    return list(zip(ids.tolist(), values.tolist()))


def prompt_log_probs(logits: Any, prompt: list[int], k: int) -> list[tuple[int, float | None, list[tuple[int, float]] | None]]:
    """Each prompt token with its log-probability given the tokens before it, and the k best
    alternatives at its position; the first token has neither. ``logits``: (len(prompt), V)."""
    import torch

    lp = log_probs(logits[:-1])
    targets = torch.tensor(prompt[1:], device=lp.device)
    chosen = lp.gather(1, targets[:, None])[:, 0].tolist() if len(prompt) > 1 else []
    out: list[tuple[int, float | None, list[tuple[int, float]] | None]] = [(prompt[0], None, None)]
    for j, token in enumerate(prompt[1:]):
        out.append((token, chosen[j], top_log_probs(lp[j], k)))
    return out


def prefix_cacheable(model: Any) -> bool:
    """Whether a prompt's prefill may start from cached keys and values: models whose every layer
    attends over the whole past (the architectures llmkit's decode step covers)."""
    return supports(model)


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-text and end-of-turn tokens: generation ends when one is produced."""
    from llmkit.data.tokenizer import turn_end_ids

    return turn_end_ids(tokenizer)


def _cache_from(past: Any, device: Any) -> Any:
    """A transformers DynamicCache holding a cached prefix's KV ((layers, 2, kv_heads, n, head_dim);
    None: an empty cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if past is not None:
        past = past.to(device)
        for layer in range(past.size(0)):
            cache.update(past[layer, 0].unsqueeze(0), past[layer, 1].unsqueeze(0), layer)
    return cache


def _row_kv(cache: Any, row: int, start: int) -> Any:
    """One row's KV from a prefill cache, from position ``start`` on: (layers, 2, kv_heads, n, head_dim)."""
    import torch

    return torch.stack([torch.stack([layer.keys[row, :, start:], layer.values[row, :, start:]]) for layer in cache.layers])


def context_length(model: Any) -> int:
    """Positions the model can attend over."""
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))


def cache_argument(model: Any) -> str:
    """The forward() keyword for the KV cache: `cache` in newer transformers, else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class BatchDecoder:
    """Live sequences decoded together; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, fast: DecodeStep | None | bool = True, stream: bool = True,
                 prefix_cache: PrefixCache | None = None, namespace: str = "model", adapters: Any = None):
        """``fast``: True builds a :class:`~llmkit.generate.fastpath.DecodeStep` when the model's
        architecture has one, a step passes one already built (a server's compiled step), False
        decodes through ``model.forward``. ``stream``: each event carries the text its token adds;
        False (RL's rollouts): a sequence without stop strings is detokenized once, its whole text
        on its last event. ``prefix_cache``: prompts' KV reused across requests (``namespace``: what
        the cached KV was computed by; only supported architectures use it, see :func:`prefix_cacheable`)."""
        self.model, self.tokenizer, self.stream = model, tokenizer, stream
        self.prefix_cache = prefix_cache if prefix_cache is not None and prefix_cacheable(model) else None
        self.namespace = namespace
        self.adapters = adapters  # llmkit.model.multilora.AdapterSet: each row's adapter (params.adapter)
        self.fast = (DecodeStep(model) if supports(model) else None) if fast is True else (fast or None)
        self.window = context_length(model)
        self.stops = stop_token_ids(tokenizer)
        self.cache_kw = cache_argument(model)
        self.device = next(model.parameters()).device
        head = model.get_output_embeddings()
        # the logits' width (an int8/int4 head keeps no fp32 weight: its out_features)
        self.vocab = getattr(head, "out_features", None) or (head.weight.shape[0] if head is not None else len(tokenizer))
        self.seqs: list[_Seq] = []
        self.kv = SlotCache(model.config.get_text_config().num_hidden_layers, self.device, longest=self.window)
        self.positions: Any = None  # (B, 1): position of the pending token
        self.pending: Any = None  # (B,): the token each row feeds next

    def __len__(self) -> int:
        return len(self.seqs)

    def check_prompt(self, prompt: Sequence[int]) -> None:
        """Refuse a prompt that is empty or leaves no room in the context window."""
        if not prompt:
            raise UsageError("the prompt is empty", "generation needs at least one prompt token", "give a prompt")
        if len(prompt) >= self.window:
            raise UsageError(f"the prompt is {len(prompt)} tokens; the model's context is {self.window}",
                             "no room is left for a single new token", "shorten the prompt")

    def cancel(self, key: Hashable) -> None:
        """Mark a sequence cancelled; it leaves at the next step."""
        for s in self.seqs:
            if s.key == key:
                s.cancelled = True

    def add(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams], keys: Sequence[Hashable]) -> list[Event]:
        """Prefill new prompts, sample their first tokens, and join them to the batch. Prompts whose
        start is in the prefix cache are prefilled one by one from there; the others together."""
        for p in prompts:
            self.check_prompt(p)
        new = [self._new_seq(p, sp, key) for p, sp, key in zip(prompts, params, keys)]
        if self.prefix_cache is None:
            return self._prefill(list(prompts), new)
        found = {i: self.prefix_cache.lookup(self._space(params[i]), list(p)) for i, p in enumerate(prompts)
                 if params[i].prompt_logprobs is None}  # echo scores every prompt token: prefilled whole
        cold = [i for i in range(len(prompts)) if found.get(i, (0, None))[0] == 0]
        events = self._prefill([prompts[i] for i in cold], [new[i] for i in cold]) if cold else []
        for i in sorted(set(range(len(prompts))) - set(cold)):
            events += self._prefill([prompts[i]], [new[i]], found[i])
        return events

    def _space(self, sp: SamplingParams) -> str:
        """The prefix-cache namespace of a row: the model, and the adapter it decodes with."""
        return self.namespace + (f"#{self.adapters.tag(sp.adapter)}" if self.adapters is not None and sp.adapter else "")

    def _route(self, seqs: list[_Seq]) -> None:
        """Tell the adapters which one each row of the next forward pass uses."""
        if self.adapters is not None:
            self.adapters.set_rows([s.params.adapter for s in seqs])

    def _new_seq(self, prompt: Sequence[int], sp: SamplingParams, key: Hashable) -> _Seq:
        import torch

        g = torch.Generator(device=self.device)
        g.manual_seed(sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        seen = None
        if sp.repetition_penalty != 1:
            seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            seen[torch.tensor(list(prompt), device=self.device).clamp(max=self.vocab - 1)] = True
        counts = torch.zeros(self.vocab, device=self.device) if sp.counts_tokens else None
        constraint = Constraint(sp.grammar, self.tokenizer) if sp.grammar is not None else None
        return _Seq(key, sp, min(sp.max_new_tokens, self.window - len(prompt)), g, seen, counts, constraint=constraint)

    def _prefill(self, prompts: list[Sequence[int]], new: list[_Seq], cached: tuple[int, Any] = (0, None)) -> list[Event]:
        """One forward pass over ``prompts`` (left-padded to the longest), or over one prompt's part
        after its ``cached`` (tokens, KV) prefix; the KV is offered to the prefix cache, the rows join."""
        import torch

        done, past = cached
        n, longest = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, longest - done), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((n, longest), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, longest - len(p):] = torch.tensor(list(p)[done:])
            mask[i, longest - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, done:]
        echo = any(seq.params.prompt_logprobs is not None for seq in new)
        cache = _cache_from(past, self.device)
        self._route(new)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=0 if echo else 1, **{self.cache_kw: cache})
            if echo:
                for i, (p, seq) in enumerate(zip(prompts, new)):
                    if seq.params.prompt_logprobs is not None:
                        seq.prompt = prompt_log_probs(out.logits[i, longest - len(p):].float(), list(p),
                                                      seq.params.prompt_logprobs)
            if self.prefix_cache is not None:
                for i, p in enumerate(prompts):
                    self.prefix_cache.store(self._space(new[i].params), list(p), _row_kv(cache, i, longest - len(p)))
        events, keep, chosen = self._sample(out.logits[:, -1, :].float(), new)
        if keep:
            idx = torch.tensor(keep, device=self.device)
            if len(keep) != n:
                cache.batch_select_indices(idx)
            self.kv.join(cache, mask[idx])
            self.seqs = self.seqs + [new[i] for i in keep]
            rows = positions[idx, -1:] + 1
            self.positions = rows if self.positions is None else torch.cat([self.positions, rows])
            self.pending = chosen[idx] if self.pending is None else torch.cat([self.pending, chosen[idx]])
        return events

    def step(self) -> list[Event]:
        """Decode one token for every live sequence."""
        import torch

        if not self.seqs:
            return []
        events = [Event(s.key, None, "", "cancelled") for s in self.seqs if s.cancelled]
        if events:
            self._keep([i for i, s in enumerate(self.seqs) if not s.cancelled])
            if not self.seqs:
                return events
        self._route(self.seqs)
        with torch.inference_mode():
            if self.fast is not None:
                self.kv.reserve_step()
                logits = self.fast(self.pending, self.positions, self.kv)
            else:
                cache, mask = self.kv.cache(), self.kv.mask()
                logits = self.model(input_ids=self.pending.unsqueeze(1), attention_mask=mask,
                                    position_ids=self.positions, use_cache=True, logits_to_keep=1,
                                    **{self.cache_kw: cache}).logits[:, -1, :]
        self.kv.advance()
        self.positions = self.positions + 1
        more, keep, self.pending = self._sample(logits.float(), self.seqs)
        if len(keep) != len(self.seqs):
            self._keep(keep)
        return events + more

    def _sample(self, logits: Any, seqs: list[_Seq]) -> tuple[list[Event], list[int], Any]:
        """Choose each row's token and emit events: (the events, the rows that go on, the tokens)."""
        import torch

        seen = None
        if any(s.seen is not None for s in seqs):
            blank = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            seen = torch.stack([s.seen if s.seen is not None else blank for s in seqs])
        lp = log_probs(logits) if any(s.params.logprobs is not None for s in seqs) else None  # the model's own
        masked, refused = mask_logits(logits, [s.constraint for s in seqs])
        chosen, failed = self._choose(masked, seqs, seen)
        failed.update(refused)
        events, keep = [], []
        for i, (seq, token) in enumerate(zip(seqs, chosen.tolist())):
            if i in failed:
                events.append(Event(seq.key, None, "", "error", failed[i]))
                continue
            if seq.limit == 0:  # echo with max_tokens 0: the prompt's log-probabilities only
                events.append(Event(seq.key, None, "", "length", prompt=seq.prompt))
                continue
            try:
                event, finish = self._advance(seq, token)
                if lp is not None and seq.params.logprobs is not None:  # the end token too (OpenAI, vLLM)
                    event.scored, event.logprob = token, float(lp[i, token])
                    event.top = top_log_probs(lp[i], seq.params.logprobs)
            except Exception as exc:  # this sequence alone: its request ends with an error
                events.append(Event(seq.key, None, "", "error", f"{type(exc).__name__}: {exc}"[:300]))
                continue
            event.prompt, seq.prompt = seq.prompt, None
            events.append(event)
            if finish is None:
                keep.append(i)
        return events, keep, chosen

    def _choose(self, logits: Any, seqs: list[_Seq], seen: Any) -> tuple[Any, dict[int, str]]:
        """Each row's next token, and the rows whose choice raised (with why). The batch is tried
        at once; when that raises, row by row, so one sequence's bad parameters end only it."""
        import torch

        from llmkit.faults import sample_fault

        counts = None
        if any(s.counts is not None for s in seqs):
            blank = torch.zeros(self.vocab, device=self.device)
            counts = torch.stack([s.counts if s.counts is not None else blank for s in seqs])
        try:
            for s in seqs:
                sample_fault(s.params.seed, len(s.ids))
            return next_tokens(logits, [s.params for s in seqs], seen, [s.generator for s in seqs], counts), {}
        except Exception:
            pass
        chosen, failed = torch.zeros(len(seqs), dtype=torch.long, device=logits.device), {}
        for i, s in enumerate(seqs):
            try:
                sample_fault(s.params.seed, len(s.ids))
                row_seen = seen[i:i + 1] if seen is not None else None
                row_counts = counts[i:i + 1] if counts is not None else None
                chosen[i] = next_tokens(logits[i:i + 1], [s.params], row_seen, [s.generator], row_counts)[0]
            except Exception as exc:
                failed[i] = f"{type(exc).__name__}: {exc}"[:300]
        return chosen, failed

    def _advance(self, seq: _Seq, token: int) -> tuple[Event, str | None]:
        """Append ``token`` to one sequence: its event and finish reason (None: it goes on)."""
        finish = None
        is_stop = token in self.stops and not seq.params.ignore_eos
        if is_stop:
            finish = "stop"
        else:
            if seq.constraint is not None:
                seq.constraint.consume(token)
            seq.ids.append(token)
            if seq.seen is not None:
                seq.seen[min(token, self.vocab - 1)] = True
            if seq.counts is not None:
                seq.counts[token] += 1
            if len(seq.ids) >= seq.limit:
                finish = "length"
        if self.stream or finish is not None or seq.params.stop:
            seq.detokenize(self.tokenizer, flush=finish is not None)
        hit = first_stop(seq.text, seq.params.stop, seq.emitted)
        if hit >= 0:
            seq.text, finish = seq.text[:hit], "stop"
        safe = len(seq.text) if finish else len(seq.text) - holdback(seq.text, seq.params.stop)
        event = Event(seq.key, None if is_stop else token, seq.text[seq.emitted:safe], finish)
        seq.emitted = max(seq.emitted, safe)
        return event, finish

    def _keep(self, rows: list[int]) -> None:
        """Only ``rows`` go on; their cache slots are compacted (the caller's order may change)."""
        import torch

        order = self.kv.keep(rows)
        self.seqs = [self.seqs[i] for i in order]
        if not self.seqs:
            self.positions = self.pending = None
            return
        idx = torch.tensor(order, device=self.device, dtype=torch.long)
        self.positions, self.pending = self.positions[idx], self.pending[idx]
