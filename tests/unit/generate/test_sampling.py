"""The pure sampling transforms, row by row."""

from __future__ import annotations

import math

import pytest
import torch

from llmkit.errors import UsageError
from llmkit.generate.sampling import (SamplingParams, apply_repetition_penalty, apply_temperature, apply_top_k,
                                      apply_top_p, next_tokens)


def test_top_k_keeps_k_per_row() -> None:
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [1.0, 4.0, 3.0, 2.0]])
    out = apply_top_k(logits, torch.tensor([2, 0]))
    assert torch.isinf(out[0]).tolist() == [True, False, False, True]
    assert not torch.isinf(out[1]).any()  # k = 0: off


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(apply_top_p(logits, torch.tensor([0.5]))).tolist() == [[True, False, False, False]]
    assert torch.isfinite(apply_top_p(logits, torch.tensor([0.8]))).tolist() == [[True, True, False, False]]
    assert torch.isfinite(apply_top_p(logits, torch.tensor([0.81]))).tolist() == [[True, True, True, False]]
    assert torch.isfinite(apply_top_p(logits, torch.tensor([1.0]))).all()
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocabulary does not matter
    assert torch.isfinite(apply_top_p(shuffled, torch.tensor([0.8]))).tolist() == [[False, True, False, True]]


def test_temperature_and_repetition_penalty() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    assert apply_temperature(logits, torch.tensor([2.0])).tolist() == [[1.0, -1.0, 0.5]]
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, torch.tensor([2.0])).tolist() == [[1.0, -4.0, 1.0]]


def test_greedy_rows_and_seeded_rows() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])
    seen = torch.zeros(2, 3, dtype=torch.bool)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=3)]

    def gens():  # type: ignore[no-untyped-def]
        return [torch.Generator().manual_seed(s) for s in (0, 3)]

    a = [next_tokens(logits, params, seen, gens()).tolist() for _ in range(3)]
    assert all(x == a[0] for x in a) and a[0][0] == 1


def test_top_k_one_equals_greedy() -> None:
    logits = torch.randn(4, 50)
    seen = torch.zeros(4, 50, dtype=torch.bool)
    params = [SamplingParams(temperature=1.5, top_k=1)] * 4
    out = next_tokens(logits, params, seen, [torch.Generator().manual_seed(i) for i in range(4)])
    assert out.tolist() == logits.argmax(-1).tolist()


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": math.nan}, "temperature"),
    ({"temperature": 2.5}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"), ({"stop": ("",)}, "stop"),
])
def test_invalid_params(kwargs, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        SamplingParams(**kwargs)


def test_zero_temperature_is_legitimate() -> None:
    assert SamplingParams(temperature=0.0).greedy


def test_sampled_rows_follow_their_distribution_and_not_the_batch() -> None:
    """sample_rows draws each row from its own probabilities (frequencies within 1.5% over 20,000
    draws), never a token of probability 0 (top-k / top-p cuts), and a row's draw depends on its own
    generator only: the same seed gives the same token whatever the other rows are."""
    from llmkit.generate.sampling import sample_rows

    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.2, 0.3, 0.4, 0.0]])
    g = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    counts = torch.zeros_like(probs)
    for _ in range(20_000):
        picked = sample_rows(probs, g)
        counts[torch.arange(3), picked] += 1
    freq = counts / 20_000
    assert float((freq - probs).abs().max()) < 0.015
    assert counts[probs == 0].sum() == 0
    alone = sample_rows(probs[2:], [torch.Generator().manual_seed(9)])
    together = sample_rows(probs[[0, 2]], [torch.Generator().manual_seed(4), torch.Generator().manual_seed(9)])
    assert int(alone[0]) == int(together[1])
