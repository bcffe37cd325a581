"""Decoding to the end: stream or collect the output of a fixed set of prompts.

`llmkit generate`, `chat`, `eval` samples and the harness adapter decode through here; the
server drives the same :class:`~llmkit.generate.batch.BatchDecoder` with requests that join
and leave between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llmkit.errors import UsageError
from llmkit.generate.batch import BatchDecoder, Event, context_length, stop_token_ids
from llmkit.generate.sampling import SamplingParams

__all__ = ["Completion", "Event", "context_length", "generate", "stop_token_ids", "stream"]


def stream(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams],
           cancelled: Callable[[int], bool] | None = None) -> Iterator[Event]:
    """Decode ``prompts`` (token ids) together; yields Events keyed by prompt index.

    A prompt that leaves no room in the context window is an error; ``max_new_tokens`` beyond the
    window is cut to fit and the sequence ends with finish_reason "length".
    """
    if len(prompts) != len(params) or not prompts:
        raise UsageError("one sampling-parameter set per prompt is needed", "", "pass as many as prompts")
    decoder = BatchDecoder(model, tokenizer)
    yield from decoder.add(prompts, params, list(range(len(prompts))))
    while decoder:
        if cancelled is not None:
            for seq in decoder.seqs:
                if cancelled(int(seq.key)):  # type: ignore[call-overload]
                    decoder.cancel(seq.key)
        yield from decoder.step()


@dataclass
class Completion:
    """A finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: str


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[Completion]:
    """Decode to the end and return each prompt's text, tokens and finish reason."""
    texts = [""] * len(prompts)
    ids: list[list[int]] = [[] for _ in prompts]
    reasons = [""] * len(prompts)
    for ev in stream(model, tokenizer, prompts, params):
        i = int(ev.key)  # type: ignore[call-overload]
        texts[i] += ev.text
        if ev.token_id is not None:
            ids[i].append(ev.token_id)
        if ev.finish_reason:
            reasons[i] = ev.finish_reason
    return [Completion(t, i, r) for t, i, r in zip(texts, ids, reasons)]
