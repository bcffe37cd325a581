"""`llmkit quickstart`: the whole chain on the embedded corpus in a few minutes."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `quickstart` to the app."""
    app.command("quickstart")(quickstart)


def quickstart(
    minutes: float = typer.Option(4.0, "--minutes", min=0.5, max=600, help="Time budget for the training stages."),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Where runs/quickstart is written."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete an earlier runs/quickstart first."),
    offline: bool = typer.Option(False, "--offline", help="privacy.offline for the runs: nothing is sent anywhere."),
) -> None:
    """doctor -> prepare -> pretrain -> fine-tune -> eval -> report, on Python's own docs, no downloads."""
    from llmkit.quickstart import run_quickstart

    run_quickstart(runs_root, minutes, fresh, log=typer.echo, offline=offline)
