"""`llmkit train`: the one loop, resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import RESUME_METAVAR, SetOpt


def register(app: typer.Typer) -> None:
    """Add `train` to the app."""
    app.command("train")(train)


def train(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: <runs_root>/<name>)."),
    resume: str = typer.Option("auto", "--resume", metavar=RESUME_METAVAR,
                               help="auto (newest valid checkpoint), never, or a checkpoint path."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="Resume even though the config changed (prints the diff)."),
    stop_at_step: int = typer.Option(None, "--stop-at-step", min=1,
                                     help="Checkpoint and stop after this step (resume later to continue)."),
) -> None:
    """Train (pretrain, SFT, LoRA or classification) as the config says; resumes by default."""
    from llmkit.config.load import load_config
    from llmkit.train.loop import train as run_train

    cfg = load_config(config, overrides)
    result = run_train(cfg, run_dir, resume, allow_config_change, stop_at_step, log=typer.echo)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in (result.eval.metrics() if result.eval else {}).items())
    if result.reason == "completed":
        typer.echo(f"done at step {result.step}: {summary}; model in {result.run_dir / 'final'}")
    elif result.reason == "stop_at_step":
        typer.echo(f"stopped at step {result.step} as asked; resume with: llmkit train --config {config}")
    raise typer.Exit(result.exit_code)
