"""train.trackers: the old train.tensorboard switch says what replaced it; a tracker listed twice is an error."""

from __future__ import annotations

import pytest

from llmkit.config.load import ConfigProblems, validate_config


def test_old_tensorboard_key_points_at_trackers() -> None:
    with pytest.raises(ConfigProblems, match=r"trackers: \[tensorboard\]"):
        validate_config({"name": "t", "train": {"tensorboard": True}})


def test_trackers_are_known_and_listed_once() -> None:
    assert validate_config({"name": "t", "train": {"trackers": ["mlflow", "wandb"]}}).train.trackers == ["mlflow", "wandb"]
    with pytest.raises(ConfigProblems, match="twice"):
        validate_config({"name": "t", "train": {"trackers": ["mlflow", "mlflow"]}})
    with pytest.raises(ConfigProblems, match="trackers"):
        validate_config({"name": "t", "train": {"trackers": ["comet"]}})
