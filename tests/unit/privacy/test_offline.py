"""privacy.offline: the switches it sets, and what the config refuses under it."""

from __future__ import annotations

import pytest

from llmkit.config.load import ConfigProblems, load_config, validate_config
from llmkit.privacy.offline import OFFLINE_ENV, apply, missing


def test_apply_sets_every_switch() -> None:
    env: dict[str, str] = {"HF_HUB_OFFLINE": "0"}
    apply(False, env)
    assert env == {"HF_HUB_OFFLINE": "0"}
    apply(True, env)
    assert env == OFFLINE_ENV and missing(env) == []


@pytest.mark.parametrize(("section", "value", "match"), [
    ("serve", {"host": "0.0.0.0"}, "serve.host is 0.0.0.0"),
    ("train", {"checkpoint_uri": "s3://bucket/run", "max_steps": 1}, "checkpoints would leave this machine"),
])
def test_offline_refuses_what_would_leave_the_machine(section: str, value: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigProblems, match=match):
        validate_config({"name": "x", "privacy": {"offline": True}, section: value})
    assert validate_config({"name": "x", section: value})  # fine when not offline


def test_loading_sets_nothing_and_the_run_context_sets_the_switches(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import os

    from llmkit.config.derived import run_context

    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    path = tmp_path / "run.yaml"
    path.write_text("name: x\n")
    monkeypatch.setenv("LLMKIT_OFFLINE", "true")
    cfg = load_config(path)
    assert cfg.privacy.offline is True
    assert missing(os.environ) == list(OFFLINE_ENV)  # loading a config has no side effects
    with run_context(cfg).active():  # a command's entry
        assert missing(os.environ) == []
