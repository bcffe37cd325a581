"""Options shared by several commands, declared once."""

from __future__ import annotations

from enum import Enum
from typing import Any

import typer

ConfigArg = typer.Argument(..., help="Run config YAML file.", metavar="FILE")
SetOpt = typer.Option(
    [], "--set", metavar="KEY=VALUE", help="Override a config key, e.g. train.max_steps=100 (repeatable)."
)


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum whose members are ``values``: Typer lists them in --help and completes them."""
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


# The allowed values, as the modules that own them spell them (tests/unit/test_cli_choices.py keeps
# them equal; they are repeated here so `llmkit --help` imports neither pydantic models nor numpy).
ExportDtype = _choices("ExportDtype", ("float32", "bfloat16", "float16"))  # llmkit.exporting.hf.DTYPES
GgufQuant = _choices("GgufQuant", ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"))  # llmkit.exporting.gguf.QUANTS
Cloud = _choices("Cloud", ("any", "aws", "gcp", "azure", "lambda", "runpod"))  # PlanConfig.cloud
ServeEngine = _choices("ServeEngine", ("llmkit", "vllm"))  # ServeConfig.engine
ServeDtype = _choices("ServeDtype", ("fp32", "bf16", "int8", "int4"))  # ServeConfig.dtype
LaunchWhat = _choices("LaunchWhat", ("train", "serve"))  # llmkit.launching.spec.WHATS
RESUME_METAVAR = "auto|never|PATH"


def registry_option(table: str, default: str | None, flags: tuple[str, ...], help: str) -> Any:
    """An option whose values are the names of ``llmkit.registry.<table>``, checked when the command
    runs (a format or target registered in the same process is accepted); --help lists the names
    registered at import."""
    from llmkit import registry

    def parse(value: str) -> str:
        names = getattr(registry, table)
        if value not in names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, names))}")
        return value

    return typer.Option(default, *flags, parser=parse, metavar="|".join(getattr(registry, table)), help=help)


def json_option(what: str) -> bool:
    """``--json``: ``what`` as one JSON document on stdout (progress goes to stderr); errors become
    ``{"error": {summary, detail, fix, exit_code}}`` on stdout, with the same exit codes."""
    return typer.Option(False, "--json", help=f"Print {what} as JSON on stdout (progress on stderr); errors as JSON too.")


def echo_json(data: object) -> None:
    import json

    typer.echo(json.dumps(data, indent=2, default=str))


def progress(as_json: bool):  # type: ignore[no-untyped-def]
    """Where progress lines go: stdout, or stderr when stdout carries JSON."""
    return (lambda line: typer.echo(line, err=True)) if as_json else typer.echo
