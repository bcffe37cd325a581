"""`llmkit generate` and `llmkit chat`: the KV-cache decode loop at the terminal, streaming."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `generate` and `chat` to the app."""
    app.command("generate")(generate)
    app.command("chat")(chat)


def _params(model_path: Path, max_tokens: int | None, temperature: float | None, top_k: int | None,
            top_p: float | None, repetition_penalty: float | None, stop: list[str] | None,
            seed: int | None):  # type: ignore[no-untyped-def]
    """The run's `generate` section (built-in defaults for a bare model directory), flags overriding."""
    from llmkit.generate.sampling import SamplingParams
    from llmkit.rundir import generate_defaults

    return SamplingParams.from_config(generate_defaults(model_path), max_new_tokens=max_tokens, temperature=temperature,
                                      top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                      stop=stop or None, seed=seed)


_FROM_RUN = " (default: the run's generate section)"
MaxTokens = typer.Option(None, "--max-tokens", help="Most new tokens" + _FROM_RUN + ".")
Temperature = typer.Option(None, "--temperature", help="0 = greedy" + _FROM_RUN + ".")
TopK = typer.Option(None, "--top-k", help="Keep the k most likely tokens" + _FROM_RUN + ".")
TopP = typer.Option(None, "--top-p", help="Nucleus sampling mass" + _FROM_RUN + ".")
RepPenalty = typer.Option(None, "--repetition-penalty", help="> 1 discourages repeats" + _FROM_RUN + ".")
Stop = typer.Option([], "--stop", help="Stop string, repeatable" + _FROM_RUN + ".")
Seed = typer.Option(None, "--seed", help="Sampling seed" + _FROM_RUN + ".")


def _stream(model, tokenizer, ids, params) -> str:  # type: ignore[no-untyped-def]
    from llmkit.generate.decode import stream

    text = ""
    for ev in stream(model, tokenizer, [ids], [params]):
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        text += ev.text
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
    from llmkit.model.load import load_for_inference

    if not prompt.strip():
        raise UsageError("the prompt is empty", "", "pass --prompt 'some text'")
    params = _params(model_path, max_tokens, temperature, top_k, top_p, repetition_penalty, stop, seed)
    model, tokenizer, _ = load_for_inference(model_path)
    if chat_mode:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    else:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        sys.stdout.write(prompt)
    _stream(model, tokenizer, ids, params)


def chat(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="Run directory or HF model directory."),
    system: str = typer.Option(None, "--system", help="System message."),
    max_tokens: int | None = MaxTokens, temperature: float | None = Temperature, top_k: int | None = TopK,
    top_p: float | None = TopP, repetition_penalty: float | None = RepPenalty, seed: int | None = Seed,
) -> None:
    """Talk to a model turn by turn (chat template, streaming). Ctrl-D or Ctrl-C ends."""
    from llmkit.errors import UsageError
    from llmkit.model.load import load_for_inference

    params = _params(model_path, max_tokens, temperature, top_k, top_p, repetition_penalty, None, seed)
    model, tokenizer, model_dir = load_for_inference(model_path)
    if not tokenizer.chat_template:
        raise UsageError(f"the tokenizer in {model_dir} has no chat template", "chat needs one to format turns",
                         "use `llmkit generate` for plain continuation")
    history = [{"role": "system", "content": system}] if system else []
    window = model.config.max_position_embeddings
    typer.echo(f"chatting with {model_dir} (Ctrl-D or Ctrl-C to quit)")
    try:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                typer.echo("")
                break
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True, return_dict=False)
            while len(ids) >= window - 8 and len(history) > 1:  # forget the oldest turns that no longer fit
                history.pop(1 if history[0]["role"] == "system" and len(history) > 2 else 0)
                ids = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
            sys.stdout.write("model> ")
            answer = _stream(model, tokenizer, ids, params)
            history.append({"role": "assistant", "content": answer})
    except KeyboardInterrupt:
        typer.echo("\nbye")
