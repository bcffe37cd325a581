"""`llmkit config`: validate and show run configs, list presets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from llmkit.cli.options import ConfigArg, SetOpt

config_app = typer.Typer(help="Validate and show run configs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `config` group to the app."""
    app.add_typer(config_app, name="config")


@config_app.command("validate")
def validate(file: Path = ConfigArg, overrides: list[str] = SetOpt) -> None:
    """Check a config; print every problem at once (exit 2) or a one-line summary."""
    from llmkit.config.load import load_config

    cfg = load_config(file, overrides)
    m = cfg.model
    shape = (
        f"from {m.from_pretrained}"
        if m.from_pretrained
        else f"{m.architecture} {m.num_hidden_layers}x{m.hidden_size}"
    )
    typer.echo(f"ok: {file} is valid (run '{cfg.name}', {shape}, task {cfg.train.task})")


@config_app.command("show")
def show(
    file: Path = ConfigArg,
    overrides: list[str] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
) -> None:
    """Print the resolved config: file, then environment, then --set overrides."""
    from llmkit.config.load import dump_config, load_config

    cfg = load_config(file, overrides)
    if as_json:
        typer.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))
    else:
        typer.echo(dump_config(cfg), nl=False)


@config_app.command("reference")
def reference() -> None:
    """Print the config reference (Markdown): every key, type, default, range and meaning."""
    from llmkit.config.reference import render_reference

    typer.echo(render_reference(), nl=False)


@config_app.command("presets")
def presets() -> None:
    """List the presets that `llmkit init --preset` accepts."""
    from llmkit.config.presets import list_presets, load_preset

    for name in list_presets():
        data = load_preset(name)
        m = data.get("model", {})
        typer.echo(
            f"{name:16} {m.get('architecture', 'llama'):6} layers={m.get('num_hidden_layers')} "
            f"hidden={m.get('hidden_size')}"
        )
