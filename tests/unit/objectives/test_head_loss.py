"""The chunked cross-entropy over the output head against F.cross_entropy on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmkit.objectives.head_loss import IGNORE, deferred_head, linear_cross_entropy, output_head


def reference(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_loss_and_gradients_match_full_logits_in_fp32(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 300, (50,), generator=g)
    labels[::4] = IGNORE
    ours = linear_cross_entropy(hidden, weight, labels, chunk)
    ours.backward(torch.tensor(0.37))
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = reference(hidden, weight, labels)
    (ref * 0.37).backward()
    assert torch.allclose(ours, ref, rtol=1e-5)
    assert torch.allclose(gh, hidden.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(gw, weight.grad, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_matches_the_autocast_path() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(500, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 500, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, labels, 16)
        ref = reference(hidden, weight, labels)
    assert abs(float(ours.detach()) - float(ref.detach())) / float(ref.detach()) < 1e-3
    ours.backward()
    gw = weight.grad.clone()
    weight.grad = None
    ref.backward()
    assert (gw - weight.grad).abs().max() / weight.grad.abs().max() < 2e-2
    assert gw.dtype == torch.float32


def test_frozen_weight_and_no_grad() -> None:
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8)  # frozen (LoRA)
    labels = torch.randint(0, 20, (10,))
    linear_cross_entropy(hidden, weight, labels).backward()
    assert hidden.grad is not None and weight.grad is None
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, weight, labels), reference(hidden, weight, labels))


def test_all_positions_ignored_give_zero() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = linear_cross_entropy(hidden, torch.randn(20, 8), torch.full((4,), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(hidden.grad.abs().sum()) == 0.0


def test_deferred_head_returns_hidden_states_and_restores_the_head() -> None:
    from llmkit.config.schema import ModelConfig
    from llmkit.model.build import build_model

    for arch in ("llama", "gpt2"):
        model = build_model(ModelConfig(architecture=arch, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=16), 50, 0, None, seed=0)
        head = output_head(model)
        ids = torch.randint(0, 50, (2, 8))
        logits = model(input_ids=ids).logits
        with deferred_head(head):
            hidden = model(input_ids=ids).logits
        assert hidden.shape == (2, 8, 32)
        assert torch.allclose(hidden @ head.weight.t(), logits, atol=1e-5)
        assert torch.equal(model(input_ids=ids).logits, logits)  # restored
        assert "forward" not in vars(head)


def test_models_with_a_transform_after_the_head_keep_full_logits() -> None:
    """Gemma's logit soft-capping (or any model type not known to be head-only) would be skipped by
    the chunked loss: such models get no head, so compute_loss takes the full-logits path."""
    from llmkit.config.schema import ModelConfig
    from llmkit.objectives.lm import OBJECTIVE as LM
    from llmkit.model.build import build_model

    model = build_model(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    max_position_embeddings=16), 50, 0, None, seed=0)
    assert output_head(model) is not None
    model.config.model_type = "gemma2"
    assert output_head(model) is None
    ids = torch.randint(0, 50, (2, 8))
    loss, count, logits = LM.loss(model, {"input_ids": ids, "labels": ids}, chunked=True)
    assert logits is not None and logits.shape == (2, 8, 50) and count == 16


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_token_logprobs_and_gradients_match_full_logits_in_fp32(chunk: int) -> None:
    """Per-token log-probabilities (the preference losses' input): values, and gradients under an
    arbitrary per-token incoming gradient (the backward recomputes each chunk)."""
    from llmkit.objectives.head_loss import linear_token_logprobs

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 16, generator=g, requires_grad=True)
    weight = torch.randn(300, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 300, (50,), generator=g)
    labels[::3] = IGNORE
    upstream = torch.randn(50, generator=g)
    ours = linear_token_logprobs(hidden, weight, labels, chunk)
    ours.backward(upstream)
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = -F.cross_entropy((hidden @ weight.t()).float(), labels, ignore_index=IGNORE, reduction="none")
    ref.backward(upstream)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert bool((ours[::3] == 0).all())
    assert torch.allclose(gh, hidden.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(gw, weight.grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear_token_logprobs(hidden, weight, labels, chunk), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["loss", "logprobs"])
def test_each_chunks_softmax_is_freed_before_the_next_chunk_is_made(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import weakref

    import llmkit.objectives.head_loss as head_loss

    made: list[weakref.ref] = []
    alive_at_next: list[bool] = []
    name = "_chunk_loss" if kind == "loss" else "_chunk_logprobs"
    original = getattr(head_loss, name)

    def watched(*args):  # type: ignore[no-untyped-def]
        alive_at_next.extend(ref() is not None for ref in made[-1:])
        out = original(*args)
        made.append(weakref.ref(out[1]))  # the chunk's fp32 softmax: the biggest thing it holds
        return out

    monkeypatch.setattr(head_loss, name, watched)
    hidden = torch.randn(40, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (40,))
    if kind == "loss":
        linear_cross_entropy(hidden, weight, labels, 10).backward()
    else:
        head_loss.linear_token_logprobs(hidden, weight, labels, 10).sum().backward()
    assert len(alive_at_next) >= 3 and not any(alive_at_next)  # never two chunks' logits at once
