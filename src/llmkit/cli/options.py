"""Options shared by several commands, declared once."""

from __future__ import annotations

import typer

ConfigArg = typer.Argument(..., help="Run config YAML file.", metavar="FILE")
SetOpt = typer.Option(
    [], "--set", metavar="KEY=VALUE", help="Override a config key, e.g. train.max_steps=100 (repeatable)."
)
