"""The serving engine's prefill: requests that arrive together are prefilled in one forward pass,
decode exactly what they decode alone, and a request whose prefill fails ends alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmkit.generate.decode import generate
from llmkit.generate.sampling import SamplingParams
from llmkit.serving.engine import Engine, EngineError, Handle, prefill_groups

from ..generate.test_decode import model_and_tokenizer  # noqa: F401 - the fixture: a 2-layer model, 64 positions


def _handle(*lengths: int) -> Handle:
    return Handle(0, [[1] * n for n in lengths], [SamplingParams()] * len(lengths), None)  # type: ignore[arg-type]


def test_prefill_groups_keep_order_and_the_padded_token_budget() -> None:
    hs = [_handle(10), _handle(30), _handle(5, 5), _handle(100), _handle(3)]
    groups = prefill_groups(hs, budget=120)
    assert [h for g in groups for h in g] == hs  # every request once, in arrival order
    for g in groups:
        rows = sum(len(h.prompts) for h in g)
        longest = max(len(p) for h in g for p in h.prompts)
        assert len(g) == 1 or rows * longest <= 120
    assert [len(g) for g in groups] == [3, 1, 1]  # 4 rows x 30; then 100 alone (5 x 100 > 120); then 3
    assert len(prefill_groups([_handle(500), _handle(2)], budget=120)) == 2  # an over-budget prompt is alone


async def _collect(engine: Engine, prompts: list[list[int]], params: list[SamplingParams]) -> list[Any]:
    """Submit every request under the engine's lock, so that it admits them all in one go; then
    read each request's events to its end."""
    with engine._wake:  # the engine thread waits for this lock before it admits anyone
        handles = [engine.submit([p], [sp]) for p, sp in zip(prompts, params)]
    out = []
    for h in handles:
        ids: list[int] = []
        while True:
            ev = await h.queue.get()
            if isinstance(ev, EngineError):
                out.append(ev)
                break
            if ev.token_id is not None:
                ids.append(ev.token_id)
            if ev.finish_reason:
                out.append(ids)
                break
    return out


def test_requests_arriving_together_share_one_prefill_and_decode_as_if_alone(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_and_tokenizer
    prompts = [tok.encode(t) for t in ("A", "The while statement repeats", "class", "def f(x):", "import os")]
    params = [SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)] * len(prompts)
    alone = [generate(model, tok, [p], [sp])[0].token_ids for p, sp in zip(prompts, params)]
    engine = Engine(model, tok, max_batch_size=16, max_concurrency=16, max_queue=16)
    calls: list[int] = []
    add = engine.decoder.add

    def counted(ps, sps, keys):  # type: ignore[no-untyped-def]
        calls.append(len(ps))
        return add(ps, sps, keys)

    engine.decoder.add = counted  # type: ignore[method-assign]
    try:
        got = asyncio.run(_collect(engine, prompts, params))
    finally:
        engine.close()
    assert got == alone
    assert calls == [5]  # one prefill for the five


def test_a_failing_prefill_ends_its_request_alone(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    model, tok = model_and_tokenizer
    prompts = [tok.encode("A"), list(range(10, 80)), tok.encode("class")]  # the second exceeds the 64-token context
    params = [SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)] * 3
    alone = [generate(model, tok, [p], [sp])[0].token_ids for p, sp in ((prompts[0], params[0]), (prompts[2], params[2]))]
    engine = Engine(model, tok, max_batch_size=16, max_concurrency=16, max_queue=16)
    try:
        got = asyncio.run(_collect(engine, prompts, params))
    finally:
        engine.close()
    assert isinstance(got[1], EngineError)
    assert [got[0], got[2]] == alone


def test_the_step_is_made_on_the_engines_thread_and_its_failure_reaches_the_caller(model_and_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """The decode step (packed, compiled, warmed) is made on the thread that will run it; a failure
    making it is raised by the constructor, not lost in the thread."""
    import threading

    from llmkit.generate.fastpath import DecodeStep

    model, tok = model_and_tokenizer
    seen: list[str] = []

    def make() -> DecodeStep:
        seen.append(threading.current_thread().name)
        return DecodeStep(model)

    engine = Engine(model, tok, max_batch_size=4, max_concurrency=4, max_queue=4, step=make)
    try:
        assert seen == ["llmkit-engine"] and isinstance(engine.step, DecodeStep)
        assert engine.decoder.fast is engine.step
    finally:
        engine.close()

    def broken() -> DecodeStep:
        raise RuntimeError("no oneDNN here")

    with pytest.raises(RuntimeError, match="no oneDNN here"):
        Engine(model, tok, max_batch_size=4, max_concurrency=4, max_queue=4, step=broken)
