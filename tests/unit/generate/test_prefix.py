"""The prefix cache: a prompt that starts with cached blocks is prefilled from there and decodes
exactly as without the cache (greedy tokens equal, log-probabilities within 1e-4 in fp32);
blocks are keyed by every token before them and by namespace; memory stays within the budget."""

from __future__ import annotations

import pytest
import torch

from llmkit.generate.batch import BatchDecoder
from llmkit.generate.prefix import PrefixCache
from llmkit.generate.sampling import SamplingParams

from ...tiny import tiny_llama


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return tiny_llama(tmp_path_factory.mktemp("tok"), hidden=64, heads=4, kv_heads=2, seed=7)


SYSTEM = ("You are a helpful assistant that answers questions about the Python language, its statements, "
          "its expressions and its data model, briefly and exactly. ") * 2


def decode(model, tok, prompts, cache=None, namespace="m", logprobs=True):  # type: ignore[no-untyped-def]
    decoder = BatchDecoder(model, tok, prefix_cache=cache, namespace=namespace)
    params = [SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, logprobs=0 if logprobs else None)
              for _ in prompts]
    out: dict[int, list] = {i: [] for i in range(len(prompts))}
    for ev in decoder.add(prompts, params, list(range(len(prompts)))):
        out[ev.key].append((ev.token_id, ev.logprob))
    while decoder:
        for ev in decoder.step():
            out[ev.key].append((ev.token_id, ev.logprob))
    return [out[i] for i in range(len(prompts))]


def same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert [t for t, _ in a] == [t for t, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < 1e-4


def test_a_hit_decodes_as_a_miss(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompts = [tok.encode(SYSTEM + q) for q in ("What is a list?", "What does for do?", "Explain yield.")]
    plain = decode(model, tok, prompts)
    cache = PrefixCache(64 << 20, block=16)
    first = decode(model, tok, prompts[:1], cache)  # stores the shared blocks
    assert cache.stats.cached_tokens == 0 and len(cache) > 0
    again = decode(model, tok, prompts, cache)  # three hits, prefilled from the cache
    for a, b in zip(again, plain):
        same(a, b)
    same(first[0], plain[0])
    shared = len(tok.encode(SYSTEM))
    assert cache.stats.hits == 3
    assert cache.stats.cached_tokens >= 3 * 16 * ((shared - 16) // 16)


def test_hit_and_cold_rows_in_one_join(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    cache = PrefixCache(64 << 20, block=8)
    warm = tok.encode(SYSTEM + "What is a tuple?")
    decode(model, tok, [warm], cache)
    prompts = [tok.encode("A short prompt"), warm, tok.encode("class A: pass")]
    for a, b in zip(decode(model, tok, prompts, cache), decode(model, tok, prompts)):
        same(a, b)


def test_blocks_are_not_shared_across_namespaces_or_different_starts(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    cache = PrefixCache(64 << 20, block=8)
    ids = tok.encode(SYSTEM + "Hi")
    decode(model, tok, [ids], cache, namespace="base")
    assert cache.lookup("adapter-a", ids)[0] == 0
    assert cache.lookup("base", [ids[1]] + ids)[0] == 0  # one token more at the start: nothing matches
    n, kv = cache.lookup("base", ids)
    assert n == 8 * ((len(ids) - 1) // 8) and kv.shape[3] == n


def test_memory_stays_within_the_budget_in_lru_order(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    one_block = 2 * 2 * 2 * 8 * 16 * 4  # layers x (k, v) x kv heads x block x head dim x fp32
    cache = PrefixCache(10 * one_block, block=8)
    for i in range(6):
        decode(model, tok, [tok.encode(f"{i} " + SYSTEM)], cache, logprobs=False)
        assert cache.bytes <= 10 * one_block and len(cache) <= 10
    assert cache.stats.evicted_blocks > 0
    newest = tok.encode("5 " + SYSTEM)
    assert cache.lookup("m", newest)[0] > 0  # the last prompt's blocks are the newest: kept
    assert cache.lookup("m", tok.encode("0 " + SYSTEM))[0] == 0  # the first prompt's: evicted


def test_echo_prompts_are_prefilled_whole(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    cache = PrefixCache(64 << 20, block=8)
    ids = tok.encode(SYSTEM)
    decode(model, tok, [ids], cache)
    decoder = BatchDecoder(model, tok, prefix_cache=cache, namespace="m")
    events = decoder.add([ids], [SamplingParams(max_new_tokens=0, prompt_logprobs=0)], ["e"])
    assert len(events[0].prompt) == len(ids)
    assert torch.isfinite(torch.tensor([lp for _, lp, _ in events[0].prompt[1:]])).all()
