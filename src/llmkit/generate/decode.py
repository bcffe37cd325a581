"""The KV-cache decode loop: several sequences at once, token-by-token streaming, stop rules,
cancellation. `llmkit generate`, `chat`, `eval` samples and the server all decode through it.

Prompts of different lengths are left-padded into one batch; positions come from the attention
mask, so padding changes nothing. Each step feeds one new token per live row and reuses the
cache; rows that finish (stop token, stop string, length, cancellation) are dropped from the
batch and the cache, so they cost nothing afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError
from llmkit.generate.sampling import SamplingParams, next_tokens


@dataclass
class Event:
    """One row's progress: new text (possibly empty) and, at the end, why it finished."""

    row: int
    token_id: int | None
    text: str
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"


@dataclass
class _Row:
    index: int
    params: SamplingParams
    ids: list[int]
    text: str = ""  # decoded so far (complete characters only)
    emitted: int = 0  # characters of ``text`` already streamed
    prefix_offset: int = 0  # incremental detokenization window (see _detokenize)
    read_offset: int = 0

    def detokenize(self, tokenizer: Any, flush: bool = False) -> None:
        """Extend ``text`` by what the newest tokens spell, decoding only a short window.

        A token that ends inside a multi-byte character adds nothing until the character is
        complete (or, with ``flush``, the replacement character is kept).
        """
        prefix = tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        new = tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(new) > len(prefix) and (flush or not new.endswith("\ufffd")):
            self.text += new[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` to hold back: a partial UTF-8 character, or a prefix of
    a stop string that the next token may complete."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    return hold


def _first_stop(text: str, stops: Sequence[str], emitted: int) -> int:
    """Where the earliest stop string starts in ``text`` (-1: none); only new text is searched."""
    found = [i for s in stops if (i := text.find(s, max(0, emitted - len(s) + 1))) >= 0]
    return min(found, default=-1)


def stop_token_ids(tokenizer: Any) -> set[int]:
    """End-of-text and end-of-turn tokens: generation ends when one is produced."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id and end_turn >= 0:
        ids.add(end_turn)
    return ids


def cache_argument(model: Any) -> str:
    """The forward() keyword for the KV cache: `cache` in newer transformers, else `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def context_length(model: Any) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1024))


def stream(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
           cancelled: Callable[[int], bool] | None = None) -> Iterator[Event]:
    """Decode ``prompts`` (token ids) together; yields Events as text becomes final.

    A prompt that leaves no room in the context window is an error; ``max_new_tokens`` beyond the
    window is cut to fit and the row ends with finish_reason "length".
    """
    import torch
    from transformers import DynamicCache

    if len(prompts) != len(params) or not prompts:
        raise UsageError("one sampling-parameter set per prompt is needed", "", "pass as many as prompts")
    window = context_length(model)
    for i, p in enumerate(prompts):
        if not p:
            raise UsageError("the prompt is empty", "generation needs at least one prompt token", "give a prompt")
        if len(p) >= window:
            raise UsageError(f"the prompt is {len(p)} tokens; the model's context is {window}",
                             "no room is left for a single new token", "shorten the prompt")
    device = next(model.parameters()).device
    stops = stop_token_ids(tokenizer)
    rows = [_Row(i, sp, []) for i, sp in enumerate(params)]
    generators = []
    for sp in params:
        g = torch.Generator(device=device)
        g.manual_seed(sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        generators.append(g)
    longest = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), longest), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else len(tokenizer)
    track_seen = any(sp.repetition_penalty != 1 for sp in params)  # only the penalty reads it
    seen = torch.zeros((len(prompts), vocab if track_seen else 1), dtype=torch.bool, device=device)
    if track_seen:
        for i, p in enumerate(prompts):
            seen[i, torch.tensor(p, device=device).clamp(max=vocab - 1)] = True
    limits = [min(sp.max_new_tokens, window - len(p)) for sp, p in zip(params, prompts)]
    cache = DynamicCache()
    cache_kw = cache_argument(model)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step_input = input_ids
    with torch.inference_mode():
        while rows:
            out = model(input_ids=step_input, attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            chosen = next_tokens(out.logits[:, -1, :], [r.params for r in rows], seen,
                                 [generators[r.index] for r in rows])
            if track_seen:
                seen[torch.arange(len(rows), device=device), chosen] = True
            keep: list[int] = []
            for slot, (row, token) in enumerate(zip(rows, chosen.tolist())):
                finish = None
                if cancelled is not None and cancelled(row.index):
                    yield Event(row.index, None, "", "cancelled")
                    continue
                is_stop_token = token in stops and not row.params.ignore_eos
                if is_stop_token:
                    finish = "stop"
                else:
                    row.ids.append(token)
                    if len(row.ids) >= limits[row.index]:
                        finish = "length"
                row.detokenize(tokenizer, flush=finish is not None)
                hit = _first_stop(row.text, row.params.stop, row.emitted)
                if hit >= 0:
                    row.text, finish = row.text[:hit], "stop"
                safe = len(row.text) if finish else len(row.text) - _holdback(row.text, row.params.stop)
                delta = row.text[row.emitted:safe]
                row.emitted = max(row.emitted, safe)
                yield Event(row.index, None if is_stop_token else token, delta, finish)
                if finish is None:
                    keep.append(slot)
            if len(keep) != len(rows):
                rows = [rows[s] for s in keep]
                if not rows:
                    break
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, positions, chosen, seen = mask[idx], positions[idx], chosen[idx], seen[idx]
            mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=1)
            positions = positions[:, -1:] + 1
            step_input = chosen.unsqueeze(1)


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: str


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[Completion]:
    """Decode to the end and return each row's text, tokens and finish reason."""
    texts = [""] * len(prompts)
    ids: list[list[int]] = [[] for _ in prompts]
    reasons = [""] * len(prompts)
    for ev in stream(model, tokenizer, prompts, params):
        texts[ev.row] += ev.text
        if ev.token_id is not None:
            ids[ev.row].append(ev.token_id)
        if ev.finish_reason:
            reasons[ev.row] = ev.finish_reason
    return [Completion(t, i, r) for t, i, r in zip(texts, ids, reasons)]
