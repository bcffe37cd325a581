"""LlmkitError carries what / why / fix, and each class its exit code."""

from __future__ import annotations

import pytest

from llmkit.errors import ConfigError, EnvironmentProblem, LlmkitError, RunFailure, UsageError


def test_exit_codes() -> None:
    assert (ConfigError("a").exit_code, UsageError("a").exit_code) == (2, 2)
    assert EnvironmentProblem("a").exit_code == 3
    assert RunFailure("a").exit_code == 1


def test_render_has_summary_detail_fix() -> None:
    text = LlmkitError("it broke", "because", "do this").render()
    assert text == "error: it broke\nbecause\nfix: do this"


def test_message_less_error_is_refused() -> None:
    with pytest.raises(ValueError):
        LlmkitError("")
