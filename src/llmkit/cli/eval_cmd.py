"""`llmkit eval`."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `eval` to the app."""
    app.command("eval")(evaluate)


def evaluate(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    tasks: list[str] = typer.Option([], "--task", help="lm-evaluation-harness task (repeatable; extra `eval`)."),
    task_dir: Path = typer.Option(None, "--task-dir", help="Folder of extra harness task YAML files."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many examples per harness task."),
    canaries: Path = typer.Option(None, "--canaries", help="Secrets known to be in the training data (JSONL of "
                                  "prefix/secret, or text lines 'prefix {secret}'): exposure and greedy reproduction."),
    canary_candidates: int = typer.Option(1000, "--canary-candidates", min=10,
                                          help="Random secrets of the same format each canary is ranked against."),
) -> None:
    """Validation loss, perplexity and bits/byte (or accuracy, macro-F1, confusion matrix), plus samples;
    with --task, lm-evaluation-harness tasks too."""
    from llmkit.eval.run import evaluate_run

    result = evaluate_run(run, harness_tasks=tasks, harness_dir=task_dir, harness_limit=limit,
                          canaries=canaries, canary_candidates=canary_candidates)
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
    if "canaries" in result:
        typer.echo(f"{'canary':>7} {'exposure':>9} {'of max':>7} {'fit':>6} {'rank':>6} {'reproduced':>11}")
        for c in result["canaries"]:
            typer.echo(f"{c['index']:>7} {c['exposure']:9.2f} {c['exposure_max']:7.2f} {c['exposure_fit']:6.1f} "
                       f"{c['rank']:>6} {'yes' if c['reproduced'] else 'no':>11}")
        typer.echo("exposure near 1 bit: not memorized; near its max (log2 of candidates + 1): ranked first")
    for s in result["samples"]:
        typer.echo(f"--- {s['prompt']}\n{s['completion']}")
    typer.echo(f"written: {run / 'eval.json'}")

