"""`llmkit eval` and `llmkit report`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `eval` and `report` to the app."""
    app.command("eval")(evaluate)
    app.command("report")(report)


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    tasks: list[str] = typer.Option([], "--task", help="lm-evaluation-harness task (repeatable; extra `eval`)."),
    task_dir: Path = typer.Option(None, "--task-dir", help="Folder of extra harness task YAML files."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many examples per harness task."),
) -> None:
    """Validation loss, perplexity and bits/byte (or accuracy, macro-F1, confusion matrix), plus samples;
    with --task, lm-evaluation-harness tasks too."""
    from llmkit.eval.run import evaluate_run

    result = evaluate_run(run, harness_tasks=tasks, harness_dir=task_dir, harness_limit=limit)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result["metrics"].items():
        if isinstance(value, float):
            typer.echo(f"{key:18} {value:.4f}")
        elif not isinstance(value, list):
            typer.echo(f"{key:18} {value}")
    if "confusion_matrix" in result["metrics"]:
        labels = result["metrics"]["labels"]
        typer.echo("confusion (rows: true, columns: predicted): " + " ".join(labels))
        for label, row in zip(labels, result["metrics"]["confusion_matrix"]):
            typer.echo(f"  {label:>12} " + " ".join(f"{c:5d}" for c in row))
    for task, metrics in result.get("harness", {}).items():
        typer.echo(f"{task}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    for s in result["samples"]:
        typer.echo(f"--- {s['prompt']}\n{s['completion']}")
    typer.echo(f"written: {run / 'eval.json'}")


def report(run: Path = typer.Argument(..., help="Run directory (runs/<name>).")) -> None:
    """(Re)generate the run's self-contained report.html."""
    from llmkit.report.html import build_report

    typer.echo(f"written: {build_report(run)}")
