"""The `llmkit` entry point: the command registry, global flags and error rendering.

Commands import their heavy dependencies (torch, transformers) inside their bodies so that
`llmkit --help` stays fast and works on a machine without torch.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from llmkit.version import __version__
from llmkit.cli import (config_cmd, doctor_cmd, eval_cmd, export_cmd, generate_cmd, init_cmd, launch_cmd, plan_cmd,
                        prepare_cmd, privacy_cmd, quickstart_cmd, report_cmd, serve_cmd, studio_cmd, train_cmd)
from llmkit.errors import LlmkitError

app = typer.Typer(
    name="llmkit",
    help="From a bare machine to a trained, evaluated and served language model, "
    "from one validated config file.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_state = {"debug": False}

# The one registry of commands: each module adds its own to the app.
for _module in (quickstart_cmd, init_cmd, config_cmd, doctor_cmd, prepare_cmd, train_cmd, eval_cmd, report_cmd,
                generate_cmd, serve_cmd, export_cmd, plan_cmd, launch_cmd, privacy_cmd, studio_cmd):
    _module.register(app)


# what `--version` reports besides llmkit: the libraries a run's results depend on, then the extras
VERSIONED = ("torch", "transformers", "tokenizers", "safetensors")
EXTRAS = {"serve": ("fastapi", "uvicorn"), "hub": ("huggingface-hub",), "datasets": ("datasets",), "lora": ("peft",), "eval": ("lm-eval",), "export": ("gguf",),
          "tensorboard": ("tensorboard",), "wandb": ("wandb",), "mlflow": ("mlflow-skinny",), "s3": ("s3fs",), "privacy": ("opacus", "phonenumbers"),
          "ner": ("presidio-analyzer",), "llamacpp": ("llama-cpp-python",), "serve.engine vllm": ("vllm",)}


def version_lines() -> list[str]:
    """llmkit's version, Python's, the core libraries' and each extra's (\"not installed\" where absent),
    read from the installed packages' metadata (nothing is imported)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    lines = [f"llmkit {__version__}", f"python {platform.python_version()}"]
    lines += [f"{name} {of(name)}" for name in VERSIONED]
    for extra, packages in EXTRAS.items():
        found = [f"{p} {of(p)}" for p in packages if of(p) != "not installed"]
        lines.append(f"[{extra}] " + (", ".join(found) if found else "not installed"))
    return lines


def _version(value: bool) -> None:
    if value:
        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def _lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because a peer process went away."""
    text = str(exc)
    return type(exc).__name__.startswith("Dist") or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                      "NCCL communicator was aborted"))


def _worker_prints(rendered: str) -> bool:
    from llmkit.training.elastic import report_worker_error

    return report_worker_error(rendered)


def _exit(code: int) -> None:
    """Exit with ``code``. A torchrun worker leaves without running C++ destructors: a gloo thread
    torn down while a failed peer is also leaving can abort the process (SIGABRT, "terminate called
    without an active exception"), which its agent would report instead of the real error. Every
    file it wrote is already committed (atomic renames)."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _json_error(summary: str, detail: str, fix: str, code: int) -> None:
    """An error as the JSON document a --json caller parses (stdout), then its exit code."""
    import json

    sys.stdout.write(json.dumps({"error": {"summary": summary, "detail": detail, "fix": fix, "exit_code": code}},
                                indent=2) + "\n")
    _exit(code)


def _run_json(args: list[str]) -> None:
    """The CLI with --json: click's own usage errors (a bad option, a missing argument) are JSON too."""
    try:  # typer vendors click in recent releases
        from typer._click import exceptions as click_exceptions  # type: ignore[import-not-found]
    except ImportError:
        from click import exceptions as click_exceptions

    try:
        code = typer.main.get_command(app).main(args=args, prog_name="llmkit", standalone_mode=False)
    except click_exceptions.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        _json_error(exc.format_message(), ctx.get_usage() if ctx else "",
                    f"see `{ctx.command_path if ctx else 'llmkit'} --help`", exc.exit_code)
    _exit(code if isinstance(code, int) else 0)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an LlmkitError becomes its message on stderr and its exit code (with --json: a
    JSON document on stdout, the same exit code)."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    try:
        if as_json:
            _run_json(args)
        else:
            app(args=argv, prog_name="llmkit")
    except LlmkitError as exc:
        if _state["debug"] or "--debug" in (argv or sys.argv):
            traceback.print_exc()
        if as_json and "TORCHELASTIC_ERROR_FILE" not in os.environ:
            _json_error(exc.summary, exc.detail, exc.fix, exc.exit_code)
        if "TORCHELASTIC_ERROR_FILE" not in os.environ or _worker_prints(exc.render()):
            sys.stderr.write(exc.render() + "\n")
        _exit(exc.exit_code)
    except RuntimeError as exc:
        if "TORCHELASTIC_ERROR_FILE" not in os.environ or _state["debug"] or not _lost_peer(exc):
            raise
        # another rank died (torchrun's agent reports which, and stops the group): one line, not a traceback
        from llmkit.training.elastic import LOST_PEER, report_worker_error

        report_worker_error(LOST_PEER)
        sys.stderr.write(f"[rank {os.environ.get('RANK')}] stopped: {LOST_PEER}\n")
        _exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
