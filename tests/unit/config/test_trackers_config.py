"""train.trackers: configs with the old train.tensorboard switch keep working; a tracker listed twice is an error."""

from __future__ import annotations

import pytest

from llmkit.config.load import ConfigProblems, validate_config


def test_configs_written_with_the_old_tensorboard_switch_keep_working() -> None:
    assert validate_config({"name": "t", "train": {"tensorboard": True}}).train.trackers == ["tensorboard"]
    assert validate_config({"name": "t", "train": {"tensorboard": False}}).train.trackers == []
    assert validate_config({"name": "t", "train": {"tensorboard": True, "trackers": ["mlflow"]}}).train.trackers == [
        "mlflow", "tensorboard"]
    with pytest.raises(ConfigProblems, match="true or false"):
        validate_config({"name": "t", "train": {"tensorboard": "yes please"}})


def test_trackers_are_known_and_listed_once() -> None:
    assert validate_config({"name": "t", "train": {"trackers": ["mlflow", "wandb"]}}).train.trackers == ["mlflow", "wandb"]
    with pytest.raises(ConfigProblems, match="twice"):
        validate_config({"name": "t", "train": {"trackers": ["mlflow", "mlflow"]}})
    with pytest.raises(ConfigProblems, match="trackers"):
        validate_config({"name": "t", "train": {"trackers": ["comet"]}})
