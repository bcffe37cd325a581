"""`llmkit report`: the run's self-contained report.html."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `report` to the app."""
    app.command("report")(report)


def report(run: Path = typer.Argument(..., help="Run directory (runs/<name>).")) -> None:
    """(Re)generate the run's self-contained report.html."""
    from llmkit.report.html import build_report

    typer.echo(f"written: {build_report(run)}")
