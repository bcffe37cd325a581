"""Several LoRA adapters on one base, chosen per row: each row decodes as PEFT's model of its own
adapter does (peft is the oracle), whatever the other rows of the batch use."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

from llmkit.errors import UsageError  # noqa: E402
from llmkit.generate.batch import BatchDecoder  # noqa: E402
from llmkit.generate.prefix import PrefixCache  # noqa: E402
from llmkit.generate.sampling import SamplingParams  # noqa: E402
from llmkit.model.multilora import AdapterSet  # noqa: E402

from ...tiny import tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def base_and_adapters(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("multilora")
    base, tok = tiny_llama(root / "tok", positions=256, hidden=64, heads=4, kv_heads=2, seed=3)
    dirs = {}
    for name, r, targets, seed in (("a", 4, ["q_proj", "v_proj"], 1), ("b", 8, ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                             "gate_proj", "up_proj", "down_proj"], 2)):
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False))
        wrapped.save_pretrained(str(root / name))
        dirs[name] = root / name
    return base, tok, dirs


def _peft(base, directory):  # type: ignore[no-untyped-def]
    return peft.PeftModel.from_pretrained(copy.deepcopy(base), str(directory)).eval()


def _greedy(model, tok, prompts, slots, adapters=None, cache=None):  # type: ignore[no-untyped-def]
    decoder = BatchDecoder(model, tok, adapters=adapters, prefix_cache=cache, namespace="m")
    params = [SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True, logprobs=0, adapter=s) for s in slots]
    out: dict[int, list] = {i: [] for i in range(len(prompts))}
    for ev in decoder.add(prompts, params, list(range(len(prompts)))):
        out[ev.key].append((ev.token_id, ev.logprob))
    while decoder:
        for ev in decoder.step():
            out[ev.key].append((ev.token_id, ev.logprob))
    return [out[i] for i in range(len(prompts))]


def _same(a, b, tol=1e-4) -> None:  # type: ignore[no-untyped-def]
    assert [t for t, _ in a] == [t for t, _ in b]
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < tol


def test_rows_of_different_adapters_decode_as_peft_does(base_and_adapters) -> None:
    base, tok, dirs = base_and_adapters
    served = copy.deepcopy(base)
    adapters = AdapterSet(served)
    slot_a, slot_b = adapters.load("a", dirs["a"]), adapters.load("b", dirs["b"])
    prompts = [tok.encode("The for statement"), tok.encode("class A:"), tok.encode("while True"), tok.encode("x = 1")]
    mixed = _greedy(served, tok, prompts, [slot_a, slot_b, 0, slot_a], adapters)
    oracle_a, oracle_b = _peft(base, dirs["a"]), _peft(base, dirs["b"])
    _same(mixed[0], _greedy(oracle_a, tok, prompts[:1], [0])[0])
    _same(mixed[1], _greedy(oracle_b, tok, prompts[1:2], [0])[0])
    _same(mixed[2], _greedy(base, tok, prompts[2:3], [0])[0])
    _same(mixed[3], _greedy(oracle_a, tok, prompts[3:], [0])[0])
    assert [t for t, _ in mixed[0]] != [t for t, _ in _greedy(base, tok, prompts[:1], [0])[0]]  # the adapter matters


def test_prefix_cache_keeps_adapters_apart_and_unload_frees_the_slot(base_and_adapters) -> None:
    base, tok, dirs = base_and_adapters
    served = copy.deepcopy(base)
    adapters = AdapterSet(served)
    slot = adapters.load("a", dirs["a"])
    cache = PrefixCache(64 << 20, block=4)
    prompt = tok.encode("The for statement is used to iterate over the elements of a sequence")
    on_base = _greedy(served, tok, [prompt], [0], adapters, cache)[0]
    with_a = _greedy(served, tok, [prompt], [slot], adapters, cache)[0]  # must not reuse the base's KV
    _same(with_a, _greedy(_peft(base, dirs["a"]), tok, [prompt], [0])[0])
    _same(on_base, _greedy(base, tok, [prompt], [0])[0])
    old_tag = adapters.tag(slot)
    adapters.unload(slot)
    assert adapters.names == [] and adapters.slot("a") is None
    again = adapters.load("a", dirs["b"])  # a different adapter under the same name
    assert adapters.tag(again) != old_tag
    _same(_greedy(served, tok, [prompt], [again], adapters, cache)[0], _greedy(_peft(base, dirs["b"]), tok, [prompt], [0])[0])


def test_what_cannot_be_served_together_is_refused(base_and_adapters, tmp_path: Path) -> None:
    base, tok, dirs = base_and_adapters
    adapters = AdapterSet(copy.deepcopy(base))
    adapters.load("a", dirs["a"])
    with pytest.raises(UsageError, match="already loaded"):
        adapters.load("a", dirs["a"])
    with pytest.raises(UsageError, match="no PEFT adapter"):
        adapters.load("c", tmp_path)
    dora = tmp_path / "dora"
    dora.mkdir()
    config = json.loads((dirs["a"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    (dora / "adapter_model.safetensors").write_bytes((dirs["a"] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(UsageError, match="DoRA"):
        adapters.load("d", dora)
    from llmkit.config.schema import ModelConfig
    from llmkit.model.build import build_model

    other = build_model(ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64),
                        300, tok.eos_token_id, tok.pad_token_id, seed=0)
    with pytest.raises(UsageError, match="does not fit"):
        AdapterSet(other).load("a", dirs["a"])
