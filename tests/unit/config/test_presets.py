"""Every preset shipped is a valid config; discovery is recursive."""

from __future__ import annotations

import pytest

from llmkit.config.load import dump_config, validate_config
from llmkit.config.presets import PRESET_DIR, list_presets, load_preset
from llmkit.config.template import render_commented
from llmkit.config.load import parse_yaml
from llmkit.errors import ConfigError

PRESETS = list_presets()


def test_discovery_finds_every_yaml_file_recursively() -> None:
    on_disk = {p.relative_to(PRESET_DIR).with_suffix("").as_posix() for p in PRESET_DIR.rglob("*.yaml")}
    assert set(PRESETS) == on_disk
    assert {"tiny", "gpt2-124m", "llama-1b", "llama-8b"} <= on_disk
    assert any("/" in name for name in on_disk), "expected at least one preset in a subfolder"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_valid_and_round_trips(name: str) -> None:
    cfg = validate_config(load_preset(name), name)
    assert validate_config(parse_yaml(dump_config(cfg), name)) == cfg
    assert validate_config(parse_yaml(render_commented(cfg, "header"), name)) == cfg


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="tiny"):
        load_preset("tinny")
