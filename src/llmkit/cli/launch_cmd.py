"""`llmkit launch`: render (and optionally submit) the run for a registered target (Slurm,
Kubernetes, SkyPilot, Docker, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from llmkit.cli.options import LaunchWhat, SetOpt, registry_option


def register(app: typer.Typer) -> None:
    """Add `launch` to the app."""
    app.command("launch")(launch)


def launch(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    target: str = registry_option("LAUNCH_TARGETS", None, ("--target", "-t"),
                                  "Engine to render for (default: launch.target)."),
    what: LaunchWhat = typer.Option(LaunchWhat("train"), "--what", help="Train the run, or serve its final model."),
    out: Path = typer.Option(None, "--out", help="Folder for the files (default: launch/<name>/<target>)."),
    submit: bool = typer.Option(False, "--submit", help="Also submit: sbatch (Slurm), the SkyPilot API or CLI, "
                                "docker build + run; Kubernetes: print the kubectl lines."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in --out that differ."),
) -> None:
    """Render the run as an sbatch script, Kubernetes manifests, a SkyPilot task or a Dockerfile."""
    from llmkit.config.load import load_config
    from llmkit.launching.entry import launch as run_launch

    launched = run_launch(load_config(config, overrides), target, what.value, out, overwrite)
    spec = launched.spec
    for name in launched.files:
        typer.echo(f"wrote {launched.folder / name}")
    _estimate(spec)
    for note in spec.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"grace before a kill: {spec.grace_s} s (one step and one checkpoint, from the plan)"
               if spec.what == "train" else f"serve: port {spec.serve_port}, /ready and /health probes")
    launched.start(submit, typer.echo)


def _estimate(spec: Any) -> None:
    e = spec.estimate
    if e is None:
        typer.echo("plan: no estimate for CPU nodes (`llmkit plan --this-machine` times this machine)")
        return
    hours = f"{e.hours:.2f} h" if e.hours is not None else "time unknown"
    cost = (f"${e.cost_usd:,.0f} ({e.offering})" if e.cost_usd is not None
            else "no list price (your own hardware)" if e.own_hardware else "no price listed")
    typer.echo(f"plan: {e.num_devices} x {e.device}, {'fits' if e.fits else 'does NOT fit'} "
               f"(micro-batch {e.micro_batch or '-'}), {hours}, {cost}")
