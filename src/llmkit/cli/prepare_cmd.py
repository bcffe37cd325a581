"""`llmkit prepare`: tokenizer and data for a run."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import SetOpt, echo_json, json_option, progress


def register(app: typer.Typer) -> None:
    """Add `prepare` to the app."""
    app.command("prepare")(prepare)


def prepare(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: <runs_root>/<name>)."),
    retrain_tokenizer: bool = typer.Option(False, "--retrain-tokenizer",
                                           help="Replace the run's existing tokenizer."),
    strict: bool = typer.Option(False, "--strict", help="SFT: stop (exit 2, no data written) when an example has an "
                                "empty answer, an answer cut by the context, or an assistant turn without an "
                                "end-of-turn token; without it they are reported. Preference: stop when any pair "
                                "would be dropped (identical or empty answers, an answer longer than the window)."),
    as_json: bool = json_option("what was made (tokenizer, each data set's counts, paths)"),
) -> None:
    """Train or load the tokenizer, then tokenize the data the config's task needs."""
    from llmkit.config.load import load_config
    from llmkit.data.prepare import prepare as run_prepare

    cfg = load_config(config, overrides)
    result = run_prepare(cfg, run_dir, retrain_tokenizer, log=progress(as_json), strict=strict)
    if as_json:
        echo_json({"run_dir": str(result.run_dir), "seconds": result.seconds,
                   "tokenizer": {"trained": result.tokenizer_trained, "vocab_size": result.vocab_size,
                                 "path": str(result.run_dir / "tokenizer")},
                   "outputs": result.outputs})
        return
    made = "trained" if result.tokenizer_trained else "loaded"
    typer.echo(f"tokenizer: {made}, {result.vocab_size} tokens -> {result.run_dir / 'tokenizer'}")
    for kind, meta in result.outputs.items():
        if kind == "pretrain":
            typer.echo(f"data: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
                       f"({meta['train_documents']} / {meta['val_documents']} documents, {meta['dtype']}, "
                       f"encoded by {meta.get('encoder', 'tokenizers')}) "
                       f"-> {result.run_dir / 'data'}")
        elif kind == "rl":
            typer.echo(f"rl: {meta['train_prompts']} train / {meta['val_prompts']} val prompts"
                       + (f", {len(meta['reward_files'])} reward file(s)" if meta["reward_files"] else "")
                       + f" -> {result.run_dir / 'data' / kind}")
        elif kind == "preference":
            typer.echo(f"preference: {meta['train_pairs']} train / {meta['val_pairs']} val pairs, "
                       f"{meta['train_unpaired']} / {meta['val_unpaired']} unpaired, {meta['train_tokens']:,} train "
                       f"tokens -> {result.run_dir / 'data' / kind}")
        else:
            typer.echo(f"{kind}: {meta['train_examples']} train / {meta['val_examples']} val examples, "
                       f"{meta['train_tokens']:,} train tokens -> {result.run_dir / 'data' / kind}")
    typer.echo(f"done in {result.seconds:.1f} s; next: llmkit train --config {config}")
