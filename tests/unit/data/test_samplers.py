"""Samplers are seeded, and a restored position continues exactly."""

from __future__ import annotations

import numpy as np
import pytest

from llmkit.data.samplers import ExampleSampler, WindowSampler, eval_windows
from llmkit.errors import UsageError


def test_windows_are_shifted_and_resumable() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowSampler(tokens, seq_len=16, global_batch=8, seed=7)
    x, y = a.next_batch(4)
    assert x.shape == (4, 16) and (y == x + 1).all()
    run = [a.next_batch(4) for _ in range(5)]
    b = WindowSampler(tokens, seq_len=16, global_batch=8, seed=7)
    b.load_state_dict({"kind": "windows", "seed": 7, "position": 4})
    for (xa, _), (xb, _) in zip(run, (b.next_batch(4) for _ in range(5))):
        assert (xa == xb).all()
    assert not (WindowSampler(tokens, 16, 8, seed=8).next_batch(4)[0] == a.windows(0, 4)[0]).all()


def test_windows_of_a_step_do_not_depend_on_the_split() -> None:
    """One rank with micro-batch 8, or two ranks with micro-batch 2 (two accumulation steps each):
    the same 8 examples per global batch, step after step."""
    tokens = np.arange(5000, dtype=np.uint16)
    whole = WindowSampler(tokens, 16, global_batch=8, seed=3)
    ranks = [WindowSampler(tokens, 16, global_batch=8, seed=3) for _ in range(2)]
    for _ in range(3):
        expected = {tuple(row) for row in whole.next_batch(8)[0]}
        got = set()
        for _k in range(2):
            for r, sampler in enumerate(ranks):
                got |= {tuple(row) for row in sampler.next_batch(2, skip_before=r * 2, skip_after=(1 - r) * 2)[0]}
        assert got == expected
        assert all(s.position == whole.position for s in ranks)


def test_windows_cover_the_last_token() -> None:
    tokens = np.arange(18, dtype=np.uint16)  # exactly one window of 17 + 1 spare start
    s = WindowSampler(tokens, seq_len=16, global_batch=64, seed=0)
    starts = {int(x[0]) for x in s.next_batch(64)[0]}
    assert starts == {0, 1}


def test_too_little_data() -> None:
    with pytest.raises(UsageError, match="fewer than one sequence"):
        WindowSampler(np.arange(10), seq_len=16, global_batch=1, seed=0)
    with pytest.raises(UsageError, match="validation split"):
        eval_windows(np.arange(10), 16, 4)


def test_eval_windows_fixed() -> None:
    tokens = np.arange(500)
    w1, w2 = eval_windows(tokens, 32, 5), eval_windows(tokens, 32, 5)
    assert len(w1) == 5 and all((a[0] == b[0]).all() for a, b in zip(w1, w2))
    assert int(w1[-1][1][-1]) == 499


def test_example_sampler_epochs_and_resume() -> None:
    s = ExampleSampler(5, seed=3)
    first = s.take(5)
    assert sorted(first) == list(range(5))
    second = s.take(5)
    assert sorted(second) == list(range(5)) and s.epoch == 1
    s2 = ExampleSampler(5, seed=3)
    s2.take(7)
    state = s2.state_dict()
    s3 = ExampleSampler(5, seed=3)
    s3.load_state_dict(state)
    assert s3.take(3) == s2.take(3)
    with pytest.raises(UsageError, match="another dataset"):
        ExampleSampler(6, seed=3).load_state_dict(state)
