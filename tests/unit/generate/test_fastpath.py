"""llmkit's own decode step computes what the model's forward computes, per architecture."""

from __future__ import annotations

import pytest
import torch

from llmkit.generate.batch import BatchDecoder
from llmkit.generate.fastpath import DecodeStep, supports
from llmkit.packing import PackedLinear
from llmkit.generate.sampling import SamplingParams

VOCAB = 300


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    from llmkit.config.schema import DataConfig, TokenizerConfig
    from llmkit.data.corpus import iter_documents
    from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap

    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=VOCAB)
    wrap(train_bpe(iter_documents(DataConfig()), cfg), cfg, 128).save_pretrained(str(out))
    return load_tokenizer(out)


def tiny(kind: str, **extra: object):
    """A random model of ``kind`` with grouped-query attention (4 query heads, 2 key/value heads)."""
    import transformers

    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra)
    cls, model_cls = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
                      "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                      "gpt2": ("GPT2Config", "GPT2LMHeadModel")}[kind]
    if kind == "gpt2":
        common = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    cfg = getattr(transformers, cls)(**common)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(3)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # biases and norms away from their 0 / 1 initialisation, so they count
        for name, p in model.named_parameters():
            if "bias" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def next_logits(decoder: BatchDecoder, fast: DecodeStep | None) -> torch.Tensor:
    """The logits of the decoder's next step, by ``fast`` or by ``model.forward``, without advancing."""
    kv = decoder.kv
    with torch.inference_mode():
        if fast is not None:
            kv.reserve_step()
            return fast(decoder.pending, decoder.positions, kv).float()
        cache, mask = kv.cache(), kv.mask()
        out = decoder.model(input_ids=decoder.pending.unsqueeze(1), attention_mask=mask, position_ids=decoder.positions,
                            use_cache=True, logits_to_keep=1, **{decoder.cache_kw: cache})
        return out.logits[:, -1].float()


def run(model, tok, fast: DecodeStep | bool, check: DecodeStep | None = None, atol: float = 1e-5) -> list[list[int]]:
    """Greedy decoding of three prompts of different lengths, a fourth joining after 5 steps; with
    ``check``, every step's logits by ``check`` are compared with the forward's first."""
    greedy = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    prompts = [tok.encode("The for statement"), tok.encode("A"), tok.encode("class Point: the while loop repeats")]
    out: dict[int, list[int]] = {i: [] for i in range(4)}
    decoder = BatchDecoder(model, tok, fast=fast)
    events = decoder.add(prompts, [greedy] * 3, [0, 1, 2])
    steps = 0
    while decoder:
        if steps == 5:
            events += decoder.add([tok.encode("def main")], [greedy], [3])
        if check is not None:
            ref, ours = next_logits(decoder, None), next_logits(decoder, check)
            assert torch.allclose(ours, ref, atol=atol, rtol=0), (ours - ref).abs().max()
        events += decoder.step()
        steps += 1
    for ev in events:
        if ev.token_id is not None:
            out[ev.key].append(ev.token_id)
    return [out[i] for i in range(4)]


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "qwen3"])
def test_decode_step_equals_forward(kind: str, tok) -> None:
    model = tiny(kind)
    assert supports(model)
    step = DecodeStep(model)
    assert run(model, tok, step, check=step) == run(model, tok, False)


def test_bf16_weights_decode_step_equals_bf16_forward(tok) -> None:
    model = tiny("llama").to(torch.bfloat16)
    step = DecodeStep(model)
    assert run(model, tok, step, check=step, atol=0.05) == run(model, tok, False)


def test_lora_layers_are_used_by_the_decode_step(tok) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapter change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    assert supports(model)
    step = DecodeStep(model)
    tokens = run(model, tok, step, check=step)
    assert tokens == run(model, tok, False)
    with model.disable_adapter():
        assert run(model, tok, DecodeStep(model)) != tokens


def test_architectures_without_the_step_decode_through_forward(tok) -> None:
    assert not supports(tiny("gpt2"))
    assert not supports(tiny("mistral", sliding_window=16))  # shorter than the 128-position context
    assert supports(tiny("mistral", sliding_window=None))
    assert BatchDecoder(tiny("gpt2"), tok).fast is None
    assert BatchDecoder(tiny("llama"), tok).fast is not None


def test_compiled_step_equals_eager_for_one_row_and_many(tok) -> None:
    """torch.compile of the step as the server builds it (weights packed for the prefill, then a
    frozen compile with the C++ wrapper on a CPU): two compiles, a batch of one and a dynamic
    batch; the span grows every step and the cache is compacted and regrown without a third. The
    frozen step multiplies by the modules' own weights, not the packed copies."""
    model = tiny("llama")
    step = DecodeStep(model, pack=True, pack_forward=True)
    assert step.compile(frozen=True)
    assert not any(isinstance(p, PackedLinear) for proj in step.proj for p in proj)
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    single = BatchDecoder(model, tok, fast=step)
    single.add([tok.encode("The")], [greedy], [0])
    while single:
        expected = next_logits(single, DecodeStep(model))
        got = next_logits(single, step)
        assert torch.allclose(got, expected, atol=1e-4, rtol=0)
        single.step()
    assert run(model, tok, step, check=step, atol=1e-4) == run(model, tok, False)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_packed_step_equals_forward(kind: str, tok) -> None:
    """serve.pack_weights: the step multiplies by oneDNN-packed copies of every projection (qwen2:
    with biases); its logits equal forward's (unpacked) to float rounding at every step, with the
    same greedy tokens; the model's parameters are untouched."""
    model = tiny(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = DecodeStep(model, pack=True)
    layers = len(model.model.layers)
    assert step.packed == 7 * layers + 1  # q, k, v, o, gate, up, down per layer; the head
    assert all(isinstance(p, PackedLinear) for proj in step.proj for p in proj)
    assert run(model, tok, step, check=step, atol=1e-4) == run(model, tok, False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_packed_forward_serves_prefill_too_and_lora_layers_stay_themselves(tok) -> None:
    """pack_forward (the server's model): the modules' forward multiplies by the packed copies, so a
    prefill through ``model.forward`` gives what the unpacked model gives; a LoRA-wrapped projection
    is not a plain nn.Linear and is called as itself (its adapter still counts)."""
    from peft import LoraConfig, get_peft_model

    plain = tiny("llama")
    ids = torch.tensor([tok.encode("class Point: the while loop repeats")])
    with torch.inference_mode():
        expected = plain(input_ids=ids).logits
    step = DecodeStep(plain, pack=True, pack_forward=True)
    assert isinstance(plain.model.layers[0].self_attn.q_proj.forward, PackedLinear)
    with torch.inference_mode():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-4, rtol=0)
    assert run(plain, tok, step, check=step, atol=1e-4) == run(tiny("llama"), tok, False)

    lora = get_peft_model(tiny("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    lora.eval()
    step = DecodeStep(lora, pack=True)
    assert step.packed == 5 * 2 + 1  # k, o, gate, up, down per layer and the head; q and v carry LoRA
    q, k, v, _o = step.proj[0]
    assert not isinstance(q, PackedLinear) and not isinstance(v, PackedLinear) and isinstance(k, PackedLinear)
    assert run(lora, tok, step, check=step, atol=1e-4) == run(lora, tok, False)


def test_packing_is_measured_and_refused_when_the_copies_would_not_fit(tok, monkeypatch) -> None:
    """auto packs the shapes its measurement found faster (each decision is one of those measured);
    with too little RAM for the copies nothing is packed and the note says why."""
    import llmkit.generate.fastpath as fastpath
    from llmkit.packing import faster_packed

    model = tiny("llama")
    linears = [model.model.layers[0].self_attn.q_proj, model.model.layers[0].mlp.down_proj, model.lm_head]
    measured = faster_packed(linears)
    assert set(measured) == {(32, 32, False, "torch.float32"), (64, 32, False, "torch.float32"),
                             (32, VOCAB, False, "torch.float32")}
    assert all(isinstance(v, bool) for v in measured.values())
    # auto packs exactly the shapes the measurement says are faster: here, say, only down_proj's
    monkeypatch.setattr(fastpath, "faster_packed", lambda ms: {(64, 32, False, "torch.float32"): True})
    step = DecodeStep(model, pack="auto")
    assert step.packed == 2 and "64x32" in step.pack_note
    assert [type(m).__name__ for m in step.mlp[0][:3]] == ["Linear", "Linear", "PackedLinear"]
    assert not any(isinstance(p, PackedLinear) for proj in step.proj for p in proj)
    assert run(model, tok, step, check=step, atol=1e-4) == run(model, tok, False)
    monkeypatch.setattr(fastpath, "available_memory", lambda: 1000)
    refused = DecodeStep(model, pack=True)
    assert refused.packed == 0 and "not packed" in refused.pack_note
    assert not any(isinstance(p, PackedLinear) for proj in refused.proj for p in proj)
