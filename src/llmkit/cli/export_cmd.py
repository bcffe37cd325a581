"""`llmkit export` and `llmkit verify`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import ExportDtype, ExportFormat, GgufQuant, echo_json, json_option, progress


def register(app: typer.Typer) -> None:
    """Add `export` and `verify` to the app."""
    app.command("export")(export)
    app.command("verify")(verify)


def export(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    fmt: ExportFormat = typer.Option("hf", "--format", help="hf (Hugging Face directory) or gguf (llama.cpp file)."),
    out: Path = typer.Option(..., "--out", help="Output directory (hf) or file (gguf)."),
    dtype: ExportDtype = typer.Option("float32", "--dtype", help="hf: weight dtype."),
    merge_lora: bool = typer.Option(True, "--merge-lora/--no-merge-lora", help="LoRA runs: merged model or adapter."),
    quant: GgufQuant = typer.Option("f32", "--quant", help="gguf: tensor type."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    decrypt: bool = typer.Option(False, "--decrypt", help="Encrypted runs: write the export as plain files "
                                 "(other tools read nothing else); refused without it."),
    push_to_hub: str = typer.Option(None, "--push-to-hub", metavar="ORG/NAME",
                                    help="Then upload the export with a generated model card (README.md: data, "
                                         "training, evaluation, config, versions) to this Hub repository, created "
                                         "when needed; the token comes from the run's hub_token_env."),
    private: bool = typer.Option(False, "--private", help="--push-to-hub: create the repository private."),
    as_json: bool = json_option("what was written and the verification"),
) -> None:
    """Export the trained model; an fp32 HF export is then verified against the run's model."""
    from llmkit.export.hf import export_hf, open_source
    from llmkit.export.verify import render
    from llmkit.export.verify import verify as run_verify

    from dataclasses import asdict

    from llmkit.errors import UsageError

    if private and not push_to_hub:
        raise UsageError("--private applies to --push-to-hub", "", "add --push-to-hub ORG/NAME or drop --private")
    dtype = dtype.value
    say = progress(as_json)
    with open_source(run, decrypt) as src:
        if src != run / "final":
            say(f"decrypting: {run} is encrypted at rest; this export is written as PLAIN files (--decrypt)")
        if fmt.value == "gguf":
            from llmkit.export.gguf import export_gguf

            path = export_gguf(src, out, quant.value, overwrite)
            pushed = _push(run, path, push_to_hub, private, say)
            if as_json:
                echo_json({"format": "gguf", "path": str(path), "bytes": path.stat().st_size, "quant": quant.value,
                           "decrypted": src != run / "final", "pushed": pushed})
                return
            typer.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {quant.value})")
            return
        from llmkit.data.tokenizer import load_tokenizer

        tok = load_tokenizer(src)
        prompts = [tok.encode(p, add_special_tokens=False) or [tok.eos_token_id] for p in ("The", "A class is", "x = 1")]
        result = export_hf(run, out, dtype, merge_lora, overwrite, prompts=prompts, src=src)
    written = {"format": "hf", "path": str(out), "files": result.files, "dtype": result.dtype,
               "max_logit_diff_vs_float32": result.max_logit_diff}
    if not as_json:
        typer.echo(f"wrote {out}: {', '.join(result.files)}")
    if result.dtype == "adapter" or dtype != "float32":
        if dtype != "float32" and result.dtype != "adapter":
            say(f"warning: {dtype} changes the model: max logit difference {result.max_logit_diff:.3g} vs float32 "
                "on fixed prompts (greedy outputs may differ)")
        pushed = _push(run, out, push_to_hub, private, say)
        if as_json:
            echo_json({**written, "verify": None, "pushed": pushed})
        return
    report = run_verify(run, out)
    if not as_json:
        typer.echo(render(report))
    pushed = None
    if report.ok:
        pushed = _push(run, out, push_to_hub, private, say)
    elif push_to_hub:
        say(f"not pushed to {push_to_hub}: the export does not reproduce the run's model")
    if as_json:
        echo_json({**written, "verify": {**asdict(report), "ok": report.ok}, "pushed": pushed})
    raise typer.Exit(0 if report.ok else 1)


def _push(run: Path, exported: Path, repo_id: str | None, private: bool, say) -> str | None:  # type: ignore[no-untyped-def]
    """--push-to-hub: the card, then the upload; the commit URL (None: not asked)."""
    if not repo_id:
        return None
    from llmkit.export.card import push_to_hub
    from llmkit.rundir import RunDir

    cfg = RunDir(run).load_config()
    url = push_to_hub(run, exported, repo_id, private, cfg.hub_token_env)
    say(f"pushed to {repo_id}{' (private)' if private else ''}: {url}")
    return url


def verify(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    exported: Path = typer.Option(None, "--exported", help="Exported HF directory (default: the run's final/)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Base URL of a running OpenAI-compatible server."),
    endpoint_model: str = typer.Option(None, "--endpoint-model", help="Model id at the endpoint (default: run name)."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable with the endpoint's key."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest allowed logit difference."),
    gguf: Path = typer.Option(None, "--gguf", help="Also run this GGUF file in llama.cpp (llama-cpp-python): "
                              "tokenization and greedy tokens must match."),
    bf16: bool = typer.Option(False, "--bf16", help="Also record how the model decodes in bf16 (serve.dtype: bf16) "
                              "against fp32: largest logit difference and greedy agreement (not part of the verdict)."),
    as_json: bool = json_option("the report (each check and the verdict)"),
) -> None:
    """Parity check: the run's model vs its export (plain transformers), an endpoint, a GGUF in llama.cpp.
    Exit 1 on a mismatch."""
    import os

    from llmkit.export.verify import render
    from llmkit.export.verify import verify as run_verify

    from llmkit.privacy import crypto
    from llmkit.rundir import RunDir

    key = os.environ.get(api_key_env, "") if api_key_env else None
    if RunDir(run).config.exists():
        RunDir(run).load_config()  # an encrypted run opens with its key variable
    with crypto.readable_dir(exported or run / "final") as plain:  # final/ of an encrypted run: in memory
        report = run_verify(run, plain, endpoint, endpoint_model, tolerance, key or None, gguf, bf16)
    if as_json:
        from dataclasses import asdict

        echo_json({**asdict(report), "ok": report.ok})
    else:
        typer.echo(render(report))
    raise typer.Exit(0 if report.ok else 1)
