"""`llmkit doctor`: is this machine ready, and what exactly to install."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import SetOpt

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def register(app: typer.Typer) -> None:
    """Add `doctor` to the app."""
    app.command("doctor")(doctor)


def doctor(
    config: Path = typer.Option(None, "--config", "-c", help="Run config to check the machine against."),
    overrides: list[str] = SetOpt,
    run_dir: Path = typer.Option(None, "--run-dir", help="Where the run will write (default: from the config, else .)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    install_plan: bool = typer.Option(False, "--install-plan", help="Print the commands that make this machine ready (runs nothing)."),
    network: bool = typer.Option(False, "--network", help="Also test that the Hugging Face hub is reachable."),
) -> None:
    """Diagnose this machine: each check says ok / warn / fail and what to do. Exit 1 on a fail."""
    from llmkit.config.derived import run_context
    from llmkit.config.load import load_config
    from llmkit.doctor.report import install_plan as plan_steps
    from llmkit.privacy.context import RunContext
    from llmkit.doctor.report import render_json, run_doctor

    cfg = load_config(config, overrides) if config is not None else None
    with (run_context(cfg) if cfg is not None else RunContext.plain()).active():  # the offline switches, as stages set them
        report = run_doctor(cfg, run_dir, network=network)
    if as_json:
        typer.echo(render_json(report))
    elif install_plan:
        steps = plan_steps(report, cfg)
        if steps:
            typer.echo("# run these, in order, to make this machine ready:")
            typer.echo("\n".join(steps))
        else:
            typer.echo("# nothing to install: this machine is ready for this config")
    else:
        _render_table(report)
    raise typer.Exit(1 if report.failed else 0)


def _render_table(report) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"llmkit doctor (llmkit {report.llmkit_version})")
    table.add_column("check", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("finding", overflow="fold")
    for f in report.findings:
        text = escape(f.summary) + (f"\n[dim]{escape(f.detail)}[/dim]" if f.detail else "")
        table.add_row(f.id, f"[{_STYLE[f.status]}]{f.status}[/]", text)
    console = Console()
    console.print(table)
    todo = [f for f in report.findings if f.fix and f.status in ("fail", "warn")]
    if todo:
        console.print("what to do:")
        for f in todo:  # printed whole, never cut: these are commands to copy
            console.print(f"  {f.id}: {escape(f.fix)}", soft_wrap=True, highlight=False)
    fails = sum(f.status == "fail" for f in report.findings)
    warns = sum(f.status == "warn" for f in report.findings)
    console.print(f"{'not ready' if fails else 'ready'}: {fails} fail, {warns} warn")
