"""Presets: complete run configs shipped as YAML data under ``config/presets/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.config.load import parse_yaml
from llmkit.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> dict[str, Path]:
    """Every preset, found recursively: name (path below presets/, no suffix) -> file."""
    return {
        p.relative_to(PRESET_DIR).with_suffix("").as_posix(): p
        for p in sorted(PRESET_DIR.rglob("*.yaml"))
    }


def load_preset(name: str) -> dict[str, Any]:
    """The preset's raw mapping (validate it with `validate_config`)."""
    presets = list_presets()
    if name not in presets:
        raise ConfigError(
            f"unknown preset {name!r}",
            f"available presets: {', '.join(presets)}",
            "pass one of those to --preset",
        )
    path = presets[name]
    data = parse_yaml(path.read_text(encoding="utf-8"), str(path.name))
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name} is not a mapping", str(path), "report this as a bug")
    return data
