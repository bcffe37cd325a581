"""`llmkit init`: write a commented starter config from a preset."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `init` to the app."""
    app.command("init")(init)


def init(
    path: Path = typer.Argument(Path("run.yaml"), help="Where to write the config."),
    preset: str = typer.Option("tiny", "--preset", "-p", help="Preset to start from."),
    name: str = typer.Option(None, "--name", help="Run name (default: the preset's)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented starter config, validated, from a preset."""
    from llmkit.config.presets import list_presets, load_preset
    from llmkit.config.load import validate_config
    from llmkit.config.template import render_commented
    from llmkit.errors import UsageError
    from llmkit.fsutil import atomic_write_text

    data = load_preset(preset)
    if name is not None:
        data["name"] = name
    config = validate_config(data, f"preset {preset}")
    if path.exists() and not force:
        raise UsageError(
            f"{path} already exists", "init never overwrites a file by default", "pass --force, or another path"
        )
    header = (
        f"llmkit run config, from preset '{preset}' (presets: {', '.join(list_presets())}). "
        "Every key is documented above it; `llmkit config validate` checks the file."
    )
    atomic_write_text(path, render_commented(config, header))
    typer.echo(f"wrote {path} (preset {preset}); next: llmkit config validate {path}")
