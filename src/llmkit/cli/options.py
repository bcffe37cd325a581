"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path

import typer

ConfigArg = typer.Argument(..., help="Run config YAML file.", metavar="FILE")
SetOpt = typer.Option(
    [], "--set", metavar="KEY=VALUE", help="Override a config key, e.g. train.max_steps=100 (repeatable)."
)


def existing_file(path: Path) -> Path:
    """Typer passes paths through unchanged; the loader reports missing files with a fix."""
    return path
