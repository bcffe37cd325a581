"""`llmkit generate` and `llmkit chat`: the KV-cache decode loop at the terminal, streaming."""

from __future__ import annotations

import contextlib
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `generate` and `chat` to the app."""
    app.command("generate")(generate)
    app.command("chat")(chat)


_FROM_RUN = " (default: the run's generate section)"
MaxTokens = typer.Option(None, "--max-tokens", help="Most new tokens" + _FROM_RUN + ".")
Temperature = typer.Option(None, "--temperature", help="0 = greedy" + _FROM_RUN + ".")
TopK = typer.Option(None, "--top-k", help="Keep the k most likely tokens" + _FROM_RUN + ".")
TopP = typer.Option(None, "--top-p", help="Nucleus sampling mass" + _FROM_RUN + ".")
RepPenalty = typer.Option(None, "--repetition-penalty", help="> 1 discourages repeats" + _FROM_RUN + ".")
Stop = typer.Option([], "--stop", help="Stop string, repeatable" + _FROM_RUN + ".")
Seed = typer.Option(None, "--seed", help="Sampling seed" + _FROM_RUN + ".")


def _show(pieces) -> str:  # type: ignore[no-untyped-def]
    """Write streamed text as it comes; the whole of it."""
    text = ""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text += piece
    sys.stdout.write("\n")
    return text


def generate(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Run directory or HF model directory."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue (or the user message with --chat)."),
    chat_mode: bool = typer.Option(False, "--chat", help="Send the prompt as a chat user turn."),
    max_tokens: int | None = MaxTokens, temperature: float | None = Temperature, top_k: int | None = TopK,
    top_p: float | None = TopP, repetition_penalty: float | None = RepPenalty, stop: list[str] = Stop,
    seed: int | None = Seed,
) -> None:
    """Continue a prompt, streaming tokens to the terminal."""
    from llmkit.errors import UsageError
    from llmkit.generate.session import open_session

    if not prompt.strip():
        raise UsageError("the prompt is empty", "", "pass --prompt 'some text'")
    session = open_session(model_path, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           repetition_penalty=repetition_penalty, stop=stop or None, seed=seed)
    if not chat_mode:
        sys.stdout.write(prompt)
    _show(session.complete(prompt, chat_mode))


@contextlib.contextmanager
def _sigint_for_the_main_thread() -> Iterator[None]:
    """SIGINT blocked while torch is imported and the model loads and warms up, so that every thread
    the libraries start then (torch's, OpenMP's pool, the tokenizer's) inherits a mask without it. The kernel then hands Ctrl-C
    to the main thread, whose ``input()`` it interrupts. A signal that lands on a worker thread
    instead leaves the main thread asleep in ``input()``: Ctrl-C seems to do nothing (seen under
    load, about one press in six)."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: signals go to the main thread anyway
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a press meanwhile is raised here


def _ask(prompt: str) -> str:
    """``input(prompt)`` in a terminal (line editing). From a pipe, the wait for the line wakes every
    0.2 s, so that a Ctrl-C that arrived just before it began is raised then: a blocking read
    begun after the signal's arrival would never see it."""
    if sys.stdin.isatty():
        return input(prompt)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0.2)[0]:
        pass
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def chat(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Run directory or HF model directory."),
    system: str = typer.Option(None, "--system", help="System message."),
    max_tokens: int | None = MaxTokens, temperature: float | None = Temperature, top_k: int | None = TopK,
    top_p: float | None = TopP, repetition_penalty: float | None = RepPenalty, seed: int | None = Seed,
) -> None:
    """Talk to a model turn by turn (chat template, streaming). Ctrl-D or Ctrl-C ends."""
    with _sigint_for_the_main_thread():  # before torch is imported: importing it starts a thread
        from llmkit.generate.session import open_session

        session = open_session(model_path, system, chat=True, max_new_tokens=max_tokens, temperature=temperature,
                               top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
        session.warm()
    typer.echo(f"chatting with {session.model_dir} (Ctrl-D or Ctrl-C to quit)")
    try:
        while True:
            try:
                line = _ask("you> ")
            except EOFError:
                typer.echo("")
                break
            if not line.strip():
                continue
            sys.stdout.write("model> ")
            _show(session.say(line))
    except KeyboardInterrupt:
        typer.echo("\nbye")
