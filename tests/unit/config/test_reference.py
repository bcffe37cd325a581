"""docs/config.md is the schema's reference page, regenerated: every key is on it, nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from llmkit.config.reference import render_reference
from llmkit.config.schema import RunConfig

PAGE = Path(__file__).resolve().parents[3] / "docs" / "config.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _keys(field.annotation, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def test_the_committed_page_is_what_the_schema_renders() -> None:
    assert PAGE.read_text(encoding="utf-8") == render_reference(), (
        "docs/config.md is out of date: run `llmkit config reference > docs/config.md`")


def test_every_key_has_one_row_with_its_docstring() -> None:
    page = render_reference()
    rows = re.findall(r"^\| `([a-z_.0-9]+)` \|", page, re.M)
    assert sorted(rows) == sorted(_keys(RunConfig)) and len(rows) == len(set(rows))
    assert "| `train.learning_rate` | float |" in page
    line = next(x for x in page.splitlines() if x.startswith("| `serve.port` |"))
    assert "`8000`" in line and ">= 0, <= 65535" in line and "TCP port" in line
    line = next(x for x in page.splitlines() if x.startswith("| `tokenizer.eos_token` |"))
    assert line.count(" | ") == 4  # the default's own pipes are escaped: still five cells
