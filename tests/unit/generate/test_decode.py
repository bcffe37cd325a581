"""The decode loop against HF generate, with batches, stop rules and cancellation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from llmkit.errors import UsageError
from llmkit.generate.batch import BatchDecoder, _Seq, holdback
from llmkit.generate.decode import generate, stream
from llmkit.generate.sampling import SamplingParams


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from llmkit.config.schema import ModelConfig, TokenizerConfig, DataConfig
    from llmkit.data.corpus import iter_documents
    from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap
    from llmkit.model.build import build_model

    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=300)
    wrap(train_bpe(iter_documents(DataConfig()), cfg), cfg, 64).save_pretrained(str(out))
    tok = load_tokenizer(out)
    model = build_model(ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    max_position_embeddings=64), 300, tok.eos_token_id, tok.pad_token_id, seed=5)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_new_tokens=n, temperature=0)


def test_greedy_matches_hf_generate(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompt = tok.encode("The for statement")
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None)
    ours = generate(model, tok, [prompt], [greedy(20)])[0]
    expected = [t for t in hf[0, len(prompt):].tolist()]
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    cut = next((i for i, t in enumerate(expected) if t in stops), len(expected))
    assert ours.token_ids == expected[:cut]


def test_batch_with_padding_equals_one_by_one(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompts = [tok.encode("A"), tok.encode("The while statement repeats"), tok.encode("class")]
    batch = generate(model, tok, prompts, [greedy(12)] * 3)
    single = [generate(model, tok, [p], [greedy(12)])[0] for p in prompts]
    assert [b.token_ids for b in batch] == [s.token_ids for s in single]


def test_length_limit_and_context_window(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    out = generate(model, tok, [tok.encode("x")], [SamplingParams(max_new_tokens=5, temperature=0)])[0]
    assert out.finish_reason in ("length", "stop") and len(out.token_ids) <= 5
    long_prompt = list(range(10, 70))  # 60 of the model's 64 positions
    out = generate(model, tok, [long_prompt], [SamplingParams(max_new_tokens=50, temperature=0)])[0]
    assert len(out.token_ids) <= 4
    with pytest.raises(UsageError, match="no room"):
        generate(model, tok, [list(range(10, 74))], [greedy(1)])
    with pytest.raises(UsageError, match="prompt is empty"):
        generate(model, tok, [[]], [greedy(1)])


def test_stop_strings_cut_and_never_stream_past(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompt = tok.encode("The")
    free = generate(model, tok, [prompt], [greedy(30)])[0].text
    if len(free) < 6:
        pytest.skip("the untrained model stopped too early to pick a stop string")
    stop = free[3:6]
    streamed = "".join(ev.text for ev in stream(model, tok, [prompt], [SamplingParams(max_new_tokens=30, temperature=0, stop=(stop,))]))
    assert streamed == free[: free.find(stop)]


def test_holdback_of_partial_stop() -> None:
    assert holdback("hello wor", ("world",)) == 3
    assert holdback("hello", ("world",)) == 0


def test_cancellation_ends_a_row(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompts = [tok.encode("The"), tok.encode("A")]
    events = list(stream(model, tok, prompts, [greedy(20)] * 2, cancelled=lambda row: row == 1))
    assert [e.finish_reason for e in events if e.key == 1][-1] == "cancelled"
    assert len([e for e in events if e.key == 1]) == 2  # the first token (from the prefill), then cancelled
    assert len([e for e in events if e.key == 0]) >= 1


def test_seeded_sampling_is_reproducible(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    sp = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=42)
    a = generate(model, tok, [tok.encode("The")], [sp])[0]
    b = generate(model, tok, [tok.encode("The")], [sp])[0]
    assert a.token_ids == b.token_ids


def test_incremental_detokenization_never_splits_characters(model_and_tokenizer) -> None:
    _, tok = model_and_tokenizer
    text = "héllo 漢字🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    row = _Seq(0, SamplingParams(), 100, None, None)
    pieces = []
    for i, t in enumerate(ids):
        row.ids.append(t)
        before = len(row.text)
        row.detokenize(tok, flush=i == len(ids) - 1)
        pieces.append(row.text[before:])
        assert "\ufffd" not in row.text
    assert "".join(pieces) == text


def test_sequences_joining_a_running_batch_decode_as_if_alone(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    prompts = [tok.encode("The while statement"), tok.encode("A"), tok.encode("class Foo and some more words")]
    alone = [generate(model, tok, [p], [greedy(15)])[0].token_ids for p in prompts]
    dec = BatchDecoder(model, tok)
    got: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def collect(events):  # type: ignore[no-untyped-def]
        for ev in events:
            if ev.token_id is not None:
                got[ev.key].append(ev.token_id)

    collect(dec.add([prompts[0]], [greedy(15)], [0]))
    for _ in range(3):
        collect(dec.step())
    collect(dec.add([prompts[1], prompts[2]], [greedy(15)] * 2, [1, 2]))  # join mid-flight
    while dec:
        collect(dec.step())
    assert [got[i] for i in range(3)] == alone


def test_slot_cache_survives_random_joins_leaves_growth_and_compaction(model_and_tokenizer) -> None:
    """Rows of many lengths join at random steps and leave at their own limits (swap-removal of
    slots), the slot and time buffers grow, and the time axis is compacted: every sequence still
    decodes exactly the tokens it decodes alone."""
    import random

    model, tok = model_and_tokenizer
    rng = random.Random(7)
    vocab = [t for t in range(5, 300) if t not in (tok.eos_token_id, tok.pad_token_id)]
    jobs = [([rng.choice(vocab) for _ in range(rng.randint(1, 40))], rng.randint(1, 20)) for _ in range(14)]

    def params(n: int) -> SamplingParams:
        return SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True)

    alone = [generate(model, tok, [p], [params(n)])[0].token_ids for p, n in jobs]
    dec = BatchDecoder(model, tok)
    got: dict[int, list[int]] = {i: [] for i in range(len(jobs))}
    pending = list(range(len(jobs)))
    steps = compactions = 0
    while pending or dec:
        if pending and (not dec or rng.random() < 0.3):
            take = [pending.pop(0) for _ in range(min(len(pending), rng.randint(1, 3)))]
            events = dec.add([jobs[i][0] for i in take], [params(jobs[i][1]) for i in take], take)
        else:
            before = dec.kv.start
            events = dec.step()
            compactions += dec.kv.start < before and dec.kv.start == 0
            steps += 1
        for ev in events:
            if ev.token_id is not None:
                got[ev.key].append(ev.token_id)
    assert [got[i] for i in range(len(jobs))] == alone
    assert steps > 20 and dec.kv.slots >= 4



class _Rows:
    """Drives a SlotCache with made-up keys and checks, at every step, that each row's unmasked
    keys and values are exactly its own history, in order."""

    def __init__(self, cache: Any) -> None:
        self.cache, self.history, self.names = cache, {}, []

    def join(self, rows: dict[str, int]) -> None:
        from types import SimpleNamespace

        longest = max(rows.values())
        keys = torch.zeros(len(rows), 1, longest, 1)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, (name, n) in enumerate(rows.items()):
            self.history[name] = [float(hash((name, j)) % 1000) for j in range(n)]
            keys[i, 0, longest - n:, 0] = torch.tensor(self.history[name])
            mask[i, longest - n:] = 1
            self.names.append(name)
        layer = SimpleNamespace(keys=keys, values=keys + 0.5)
        self.cache.join(SimpleNamespace(layers=[layer, layer]), mask)

    def step(self) -> None:
        kv = self.cache.cache()
        new = torch.tensor([float(len(self.history[n]) * 1000 + i) for i, n in enumerate(self.names)]).view(-1, 1, 1, 1)
        for layer in kv.layers:
            keys, values = layer.update(new, new + 0.5)
        mask = self.cache.mask()
        for i, name in enumerate(self.names):
            self.history[name].append(float(new[i]))
            assert keys[i, 0, mask[i].bool(), 0].tolist() == self.history[name]
            assert values[i, 0, mask[i].bool(), 0].tolist() == [h + 0.5 for h in self.history[name]]
        self.cache.advance()

    def leave(self, gone: set[str]) -> None:
        order = self.cache.keep([i for i, n in enumerate(self.names) if n not in gone])
        self.names[:] = [self.names[i] for i in order]


def test_slot_cache_keeps_each_rows_history_through_compaction() -> None:
    """The cache alone: after joins (one longer than the batch), steps, swap removals, growth and
    a compaction of the time axis, each row's unmasked keys are exactly its own history."""
    from llmkit.generate.kvcache import SlotCache

    cache = SlotCache(layers=2, device=torch.device("cpu"))
    rows = _Rows(cache)
    rows.join({"a": 3})
    for _ in range(4):
        rows.step()
    rows.join({"b": 60, "c": 2})  # longer than the batch: start moves back
    rows.step()
    rows.leave({"a"})  # the last row (c) moves into a's slot
    for _ in range(5):
        rows.step()
    rows.leave({"b", "c"})
    assert cache.rows == 0
    rows.join({"d": 5, "e": 1})  # short rows at the end of a long buffer
    capacity, before = cache.capacity, cache.start
    for _ in range(80):
        rows.step()
        rows.leave({"e"} if len(rows.history["e"]) == 30 else set())
    assert cache.start < before and cache.capacity == capacity  # compacted, not grown
    rows.join({"f": 4})
    for _ in range(3):
        rows.step()
    assert cache.rows == 2 and set(rows.names) == {"d", "f"}


def test_slot_cache_time_axis_stops_growing_at_the_longest_row() -> None:
    """Rows of random lengths (never past the context of 64) join and leave for 1,500 steps: the
    time axis stops at 64 + 2 positions (moved back instead of doubled; unbounded, it reaches 128),
    and every row keeps its own history throughout."""
    import random

    from llmkit.generate.kvcache import SlotCache

    sizes = {}
    for longest in (None, 64):
        rng = random.Random(0)
        cache = SlotCache(layers=2, device=torch.device("cpu"), longest=longest)
        rows, ends, serial, most = _Rows(cache), {}, 0, 0
        for _ in range(1500):
            if cache.rows < 6 and rng.random() < 0.3:
                n = rng.randrange(1, 50)
                serial += 1
                ends[f"r{serial}"] = n + rng.randrange(1, 64 - n)
                rows.join({f"r{serial}": n})
            if cache.rows:
                rows.step()
            rows.leave({n for n in rows.names if len(rows.history[n]) >= ends[n]})
            most = max(most, cache.capacity)
        sizes[longest] = most
    assert sizes[64] == 66 and sizes[None] > 66


def test_unstreamed_decoding_ends_with_the_same_text(model_and_tokenizer) -> None:
    """stream=False (RL's rollouts): no text until a row ends, then all of it; the same tokens and
    the same text as streaming; a row with stop strings still streams (they are found in the text)."""
    model, tok = model_and_tokenizer

    def run(stream: bool) -> tuple[dict[int, list[int]], dict[int, list[str]]]:
        prompts = [tok.encode("The"), tok.encode("A long prompt about"), tok.encode("x")]
        params = [SamplingParams(max_new_tokens=12, temperature=1.0, seed=s) for s in (1, 2)]
        params.append(SamplingParams(max_new_tokens=12, temperature=1.0, seed=3, stop=("zz",)))
        d = BatchDecoder(model, tok, stream=stream)
        ids: dict[int, list[int]] = {0: [], 1: [], 2: []}
        texts: dict[int, list[str]] = {0: [], 1: [], 2: []}
        events = d.add(prompts, params, [0, 1, 2])
        while True:
            for e in events:
                if e.token_id is not None:
                    ids[e.key].append(e.token_id)
                texts[e.key].append(e.text)
            if not len(d):
                return ids, texts
            events = d.step()

    streamed, unstreamed = run(True), run(False)
    assert streamed[0] == unstreamed[0]
    assert {k: "".join(v) for k, v in streamed[1].items()} == {k: "".join(v) for k, v in unstreamed[1].items()}
    for key in (0, 1):
        assert all(t == "" for t in unstreamed[1][key][:-1]) and unstreamed[1][key][-1]
    assert unstreamed[1][2] == streamed[1][2]
