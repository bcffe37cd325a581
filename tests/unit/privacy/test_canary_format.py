"""Canary files and the format of random candidates (the model-free part of llmkit.eval.canaries)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from llmkit.errors import UsageError
from llmkit.eval.canaries import Canary, format_space, random_like, read_canaries


def test_both_file_forms(tmp_path: Path) -> None:
    f = tmp_path / "c.txt"
    f.write_text('{"prefix": "my pin is ", "secret": "4821"}\n\nthe key is {AB-12cd} ok\n')
    assert read_canaries(f) == [Canary("my pin is ", "4821"), Canary("the key is ", "AB-12cd")]


@pytest.mark.parametrize("line", ["no braces here", "{only a secret}", '{"prefix": "x"}', "pin {---}"])
def test_bad_lines_are_named(tmp_path: Path, line: str) -> None:
    f = tmp_path / "c.txt"
    f.write_text(line + "\n")
    with pytest.raises(UsageError):
        read_canaries(f)


def test_random_candidates_keep_the_format() -> None:
    rng = random.Random(0)
    for _ in range(200):
        r = random_like("Ab-12 x9", rng)
        assert r[0].isupper() and r[1].islower() and r[2] == "-" and r[3:5].isdigit() and r[5] == " "
        assert r[6].islower() and r[7].isdigit()
    assert format_space("287-65-4321") == pytest.approx(9 * math.log2(10))
    assert format_space("ab") == pytest.approx(2 * math.log2(26))
