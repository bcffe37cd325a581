"""`llmkit serve`: the OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import ServeDtype, ServeEngine, SetOpt


def register(app: typer.Typer) -> None:
    """Add `serve` to the app."""
    app.command("serve")(serve)


def serve(
    model_path: Path = typer.Argument(..., metavar="MODEL_DIR_OR_RUN", help="Run directory or HF model directory."),
    config: Path = typer.Option(None, "--config", "-c", help="Run config whose `serve` and `generate` sections apply."),
    overrides: list[str] = SetOpt,
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="TCP port (default 8000)."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding the API key."),
    allow_unauthenticated: bool = typer.Option(None, "--allow-unauthenticated",
                                               help="Allow a non-loopback bind without an API key."),
    max_concurrency: int = typer.Option(None, "--max-concurrency", help="Requests generating at once."),
    max_batch_size: int = typer.Option(None, "--max-batch-size", help="Sequences decoded together."),
    max_queue: int = typer.Option(None, "--max-queue", help="Requests allowed to wait (beyond: 429)."),
    drain_timeout: float = typer.Option(None, "--drain-timeout", help="Seconds in-flight requests get on SIGTERM."),
    engine: ServeEngine = typer.Option(None, "--engine", help="llmkit (in-process) or vllm (GPU hosts)."),
    served_model_name: str = typer.Option(None, "--served-model-name", help="Model id clients send."),
    ui: bool = typer.Option(None, "--ui/--no-ui", help="Serve the chat page at / (default: serve.ui, on)."),
    dtype: ServeDtype = typer.Option(None, "--dtype", help="fp32 (default: the model as evaluated), bf16 (faster decode "
                              "on bf16 hardware; see `llmkit verify --bf16`), or int8 / int4 (CPU: weight-only "
                              "quantized layers; `llmkit verify --endpoint` measures their perplexity)."),
    compile_step: bool = typer.Option(None, "--compile/--no-compile",
                                      help="torch.compile the decode step at start-up (about a minute on a "
                                           "CPU; faster decode after). Default: serve.compile (auto: eager)."),
    pack_weights: bool = typer.Option(None, "--pack-weights/--no-pack-weights",
                                      help="Decode with oneDNN-packed copies of the projection weights (CPU). "
                                           "Default: serve.pack_weights (auto: the shapes measured faster)."),
    adapter: list[str] = typer.Option(None, "--adapter", help="A LoRA adapter served on the base, NAME=RUN_OR_DIR "
                                      "(repeatable); requests pick it by `model`. Adds to serve.adapters."),
    tool_parser: str = typer.Option(None, "--tool-parser", help="How tool calls are read: hermes, llama3_json or "
                                    "mistral (default: serve.tool_parser, auto: from the chat template)."),
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (binds 127.0.0.1 by default)."""
    from llmkit.serving.entry import serve_config, serve_foreground

    flags = {"serve.host": host, "serve.port": port, "serve.api_key_env": api_key_env,
             "serve.allow_unauthenticated": allow_unauthenticated, "serve.max_concurrency": max_concurrency,
             "serve.max_batch_size": max_batch_size, "serve.max_queue": max_queue,
             "serve.drain_timeout_s": drain_timeout, "serve.engine": engine.value if engine else None,
             "serve.ui": ui, "serve.dtype": dtype.value if dtype else None, "serve.compile": compile_step,
             "serve.pack_weights": pack_weights, "serve.tool_parser": tool_parser}
    sets = list(overrides) + [f"{k}={_yaml(v)}" for k, v in flags.items() if v is not None]
    for spec in adapter or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--adapter takes NAME=RUN_OR_DIR (got {spec!r})")
        sets.append(f"serve.adapters.{name}={_yaml(path)}")
    serve_foreground(model_path, serve_config(model_path, config, sets), served_model_name)


def _yaml(value: object) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
