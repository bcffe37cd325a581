"""The config reference page (docs/config.md), generated from the schema: every key, its type,
default, allowed range and docstring. `llmkit config reference` prints it; a test keeps the
committed page equal to what this module renders."""

from __future__ import annotations

import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmkit.config.schema import RunConfig

HEADER = """# Config reference

Every key of an llmkit run config, generated from the schema (`src/llmkit/config/schema.py`) by
`llmkit config reference > docs/config.md`; `tests/unit/config/test_reference.py` fails when this
page and the schema differ. Unknown keys are errors. `llmkit init --preset NAME FILE` writes a
commented example; `llmkit config show FILE` prints a config with every default filled in.
"""


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a).lower() for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (list, tuple, set):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type(args[0])} to {_type(args[1])}" if args else "map"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined:
        if field.default_factory is not None:
            value = field.default_factory()
            if isinstance(value, BaseModel):
                return ""
            return f"`{value!r}`".replace("'", '"') if value != [] else "`[]`"
        return "required"
    value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _bounds(field: Any) -> str:
    parts = []
    for m in field.metadata:
        for kind, sign in ((Gt, ">"), (Ge, ">="), (Lt, "<"), (Le, "<=")):
            if isinstance(m, kind):
                parts.append(f"{sign} {getattr(m, kind.__name__.lower())}")
        if isinstance(m, MinLen):
            parts.append(f"at least {m.min_length} long")
        if isinstance(m, MaxLen):
            parts.append(f"at most {m.max_length} long")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows, nested = [], []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((name, annotation, field))
            continue
        rows.append(f"| `{prefix}{name}` | {_type(annotation)} | {_cell(_default(field))} | {_bounds(field)} | "
                    f"{_cell(field.description or '')} |")
    if rows:
        out += ["| key | type | default | range | meaning |", "| --- | --- | --- | --- | --- |", *rows, ""]
    for name, sub, field in nested:
        out += [f"## `{prefix}{name}`", "", _cell(sub.__doc__ or field.description or ""), ""]
        _section(sub, f"{prefix}{name}.", out)


def render_reference() -> str:
    """docs/config.md: the top-level keys, then one heading per section (nested sections nested)."""
    out = [HEADER, "## Top level", ""]
    _section(RunConfig, "", out)
    return "\n".join(out).rstrip() + "\n"
