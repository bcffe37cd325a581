"""Every config key is read by the code it documents (RELIABILITY.md C4).

A field counts as read when a module outside ``config/`` (or ``config/derived.py``, which derives
values for the model builder and plan) both refers to its section (an attribute
``.train``, ``.lora`` ... or the section's class name) and reads an attribute of the field's name.
The allow-list holds the keys of work not built yet; each must be refused when set.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llmkit.config.load import ConfigProblems, validate_config
from llmkit.config.schema import RunConfig

SRC = Path(__file__).resolve().parents[3] / "src" / "llmkit"

NOT_BUILT_YET: set[str] = set()
"""Refused unless default, until the performance work implements them."""

NON_DEFAULT: dict[str, Any] = {}  # a value for each allow-listed key that the schema would accept if built


def schema_fields(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, type[BaseModel]]]:
    """(dotted key, section attribute, section class) of every leaf field."""
    out = []
    section = prefix.rsplit(".", 2)[-2] if prefix else ""
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += schema_fields(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", section, model))
    return out


def _code_facts() -> list[tuple[set[str], set[str]]]:
    """Per module outside config/: (attribute names read, names referred to)."""
    facts = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "config" and path.name != "derived.py":  # derived.py uses the config
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        facts.append((attrs, names))
    return facts


def _allowed(key: str) -> bool:
    return key in NOT_BUILT_YET or any(a.endswith(".*") and key.startswith(a[:-1]) for a in NOT_BUILT_YET)


def test_every_schema_field_is_read_outside_config() -> None:
    facts = _code_facts()
    unread = []
    for key, section, cls in schema_fields():
        field = key.rsplit(".", 1)[-1]
        read = any(field in attrs and (not section or section in attrs or cls.__name__ in names)
                   for attrs, names in facts)
        if not read and not _allowed(key):
            unread.append(key)
    assert not unread, f"config keys read nowhere outside config/ (implement them or refuse them): {unread}"


def test_allow_list_holds_only_unbuilt_work_and_each_key_is_refused() -> None:
    keys = [k for k, _, _ in schema_fields() if _allowed(k)]
    assert set(keys) == set(NON_DEFAULT), "NON_DEFAULT must give a value for every allow-listed key"
    for key in keys:
        section, field = key.split(".")
        with pytest.raises(ConfigProblems, match="not implemented yet") as err:
            validate_config({"name": "x", section: {field: NON_DEFAULT[key]}})
        assert key.split(".")[0] in str(err.value)
    assert validate_config({"name": "x", "train": {"compile": False, "distributed": "auto"}})
