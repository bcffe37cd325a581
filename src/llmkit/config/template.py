"""Render a config as commented YAML: every key preceded by its field docstring."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

_WIDTH = 96


def _scalar(value: Any) -> str:
    """One value in YAML flow style on a single line (lists included; a list of sections, such as
    train.rl.rewards, as their settings that differ from the defaults)."""
    if isinstance(value, list):
        value = [v.model_dump(mode="json", exclude_defaults=True) if isinstance(v, BaseModel) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True)
    return text.removesuffix("...\n").strip()


def _comment(text: str, indent: str) -> list[str]:
    lines: list[str] = []
    for para in " ".join(text.split()).split("\n"):
        lines += textwrap.wrap(para, _WIDTH - len(indent) - 2) or [""]
    return [f"{indent}# {line}".rstrip() for line in lines]


def _render(model: BaseModel, depth: int) -> list[str]:
    indent = "  " * depth
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.description:
            out += _comment(field.description, indent)
        if isinstance(value, BaseModel):
            out.append(f"{indent}{name}:")
            out += _render(value, depth + 1)
            if depth == 0:
                out.append("")
        else:
            out.append(f"{indent}{name}: {_scalar(value)}")
    return out


def render_commented(config: BaseModel, header: str = "") -> str:
    """The full config as YAML with comments; loading it gives back an equal config."""
    lines = _comment(header, "") + [""] if header else []
    return "\n".join(lines + _render(config, 0)).rstrip() + "\n"
