"""Weight-only int8 / int4 linear layers (llmkit.wquant, serve.dtype int8 | int4): each layer
multiplies by exactly the weight it stores, that weight is within half a quantization step of the
original, a quantized model decodes through llmkit's decode step as through its forward, and the
serving plan counts the bytes they hold."""

from __future__ import annotations

import pytest
import torch

from llmkit.generate.fastpath import DecodeStep, supports
from llmkit.wquant import BYTES_PER_WEIGHT, GROUP, QuantizedEmbedding, QuantizedLinear, quantize_model, supported

from .test_fastpath import run, tiny, tok  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(supported() is not None, reason=str(supported()))


def linear(n: int, k: int, bias: bool = True) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.1, 3.0, n)[:, None])  # rows of different ranges
    return layer


@pytest.mark.parametrize("bits", [8, 4])
def test_the_product_is_by_the_stored_weight_and_that_is_near_the_original(bits: int) -> None:
    lin = linear(64, 96)
    q = QuantizedLinear(lin, bits)
    assert q.bits == bits
    w, x = lin.weight.detach(), torch.randn(5, 3, 96)
    stored = q.dequantized()
    assert torch.allclose(q(x), x @ stored.T + lin.bias.detach(), atol=1e-4)
    if bits == 8:
        step = w.abs().amax(dim=1, keepdim=True) / 127
        assert ((stored - w).abs() <= step / 2 + 1e-6).all()
    else:
        groups = w.reshape(64, -1, GROUP)
        step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15
        assert ((stored.reshape(64, -1, GROUP) - groups).abs() <= step / 2 + 1e-5).all()
    assert not torch.equal(stored, w)  # it is quantized


def test_shapes_the_int4_kernel_cannot_take_stay_at_int8() -> None:
    assert QuantizedLinear(linear(24, 64), 4).bits == 8  # 24 outputs: not a multiple of 16
    assert QuantizedLinear(linear(32, 48), 4).bits == 8  # 48 inputs: not a multiple of the group
    assert QuantizedLinear(linear(32, 64), 4).bits == 4


def test_stored_bytes_are_what_the_plan_counts() -> None:
    for bits, kind in ((8, "int8"), (4, "int4")):
        q = QuantizedLinear(linear(256, 512, bias=False), bits)
        held = sum(b.numel() * b.element_size() for b in q.buffers())
        assert abs(held / (256 * 512) - BYTES_PER_WEIGHT[kind]) < 0.02, (kind, held / (256 * 512))


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_model_decodes_through_the_step_as_through_forward(bits: int, tok) -> None:  # noqa: F811
    model = tiny("llama")
    reference = model(torch.tensor([[5, 6, 7, 8]])).logits
    counts = quantize_model(model, bits, activations=torch.float32)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert counts[f"int{bits}"] >= 14 and (bits == 8 or counts["int8"] == 2)  # the head and embedding at 8
    assert model.lm_head.bits == 8 and isinstance(model.model.embed_tokens, QuantizedEmbedding)
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.corrcoef(torch.stack([logits.ravel(), reference.ravel()]))[0, 1] > (0.999 if bits == 8 else 0.97)
    assert supports(model)
    step = DecodeStep(model, pack=True)  # the quantized layers are not packed again
    assert step.packed == 0
    assert run(model, tok, step, check=step, atol=1e-4) == run(model, tok, False)


def test_bf16_activations_decode_through_the_step_as_through_forward(tok) -> None:  # noqa: F811
    model = tiny("llama")
    counts = quantize_model(model, 4, activations=torch.bfloat16)
    assert counts["bf16_activations"] == 1 and model.model.norm.weight.dtype == torch.bfloat16
    assert model.lm_head.scales.dtype == torch.bfloat16 and model.lm_head.qweight.dtype == torch.int8
    step = DecodeStep(model)
    assert run(model, tok, step, check=step, atol=0.05) == run(model, tok, False)


@pytest.mark.slow  # two compiles, about 25 s
def test_a_quantized_model_decodes_through_the_frozen_compiled_step_as_through_forward(tok) -> None:  # noqa: F811
    """serve.compile: true with serve.dtype int8: the frozen compiled step (DecodeStep.compile) over
    the quantized layers gives forward's logits at every step and its greedy tokens."""
    model = tiny("llama")
    quantize_model(model, 8, activations=torch.float32)
    step = DecodeStep(model, pack=True, pack_forward=True)
    assert step.compile(frozen=True)
    assert run(model, tok, step, check=step, atol=1e-4) == run(model, tok, False)


def test_a_tied_embedding_shares_the_int8_head() -> None:
    model = tiny("llama", tie_word_embeddings=True)
    ids = torch.tensor([[1, 5, 9]])
    before = model.model.embed_tokens(ids)
    quantize_model(model, 4, activations=torch.float32)
    assert model.model.embed_tokens.rows()[0] is model.lm_head.qweight
    assert not list(model.model.embed_tokens.buffers())  # stored once, in the head
    step = model.lm_head.scales[ids].unsqueeze(-1)
    assert ((model.model.embed_tokens(ids) - before).abs() <= step / 2 + 1e-6).all()
    model.to(torch.bfloat16)  # a cast reaches the shared rows' scales through the head
    assert model.model.embed_tokens(ids).dtype == torch.bfloat16


def test_the_plan_counts_quantized_weights() -> None:
    from llmkit.config.load import validate_config
    from llmkit.config.presets import load_preset
    from llmkit.planning.serving import serve_memory, weight_bytes

    cfg = validate_config(load_preset("tiny"))
    held = {d: serve_memory(cfg, d, 1, 1)[0] for d in ("fp32", "bf16", "int8", "int4")}
    assert held["fp32"] > held["bf16"] > held["int8"] > held["int4"]
    multiplied = {d: weight_bytes(cfg, d)[0] for d in ("fp32", "int8", "int4")}
    assert multiplied["fp32"] / multiplied["int8"] > 3.5 and multiplied["int8"] > multiplied["int4"]
