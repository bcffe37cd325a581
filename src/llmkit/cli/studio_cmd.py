"""`llmkit studio`: plan, start, watch, chat with and export runs from a browser."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `studio` to the app."""
    app.command("studio")(studio)


def studio(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs --api-key-env."),
    port: int = typer.Option(7860, "--port", min=0, max=65535, help="TCP port (0: a free one)."),
    workspace: Path = typer.Option(Path("."), "--workspace", help="Directory whose runs/ holds the runs."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding the API key."),
    max_upload_mb: int = typer.Option(512, "--max-upload-mb", min=1, help="Largest data file an upload may be."),
) -> None:
    """The whole pipeline in a browser: new run (validated, planned), live curves, stop/resume, chat, export."""
    from llmkit.studio.entry import run_studio

    run_studio(workspace, host, port, api_key_env, max_upload_mb, echo=typer.echo)
