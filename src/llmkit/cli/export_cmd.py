"""`llmkit export` and `llmkit verify`."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import ExportDtype, GgufQuant, echo_json, json_option, progress, registry_option


def register(app: typer.Typer) -> None:
    """Add `export` and `verify` to the app."""
    app.command("export")(export)
    app.command("verify")(verify)


def export(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    fmt: str = registry_option("EXPORT_FORMATS", "hf", ("--format",),
                               "hf (Hugging Face directory), gguf (llama.cpp file), or another registered format."),
    out: Path = typer.Option(..., "--out", help="Output directory (hf) or file (gguf)."),
    dtype: ExportDtype = typer.Option("float32", "--dtype", help="hf: weight dtype."),
    merge_lora: bool = typer.Option(True, "--merge-lora/--no-merge-lora", help="LoRA runs: merged model or adapter."),
    quant: GgufQuant = typer.Option("f32", "--quant", help="gguf: tensor type. f32, f16, bf16, q8_0 "
                                 "written by llmkit; q6_k, q5_k_m, q4_k_m, q4_0 by llama.cpp's quantizer (extra llamacpp)."),
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
    from dataclasses import asdict

    from llmkit.exporting.entry import export as run_export

    exported = run_export(run, out, fmt, dtype.value, merge_lora, quant.value, overwrite, True, decrypt, push_to_hub,
                          private, log=progress(as_json))
    report = exported.report
    if as_json:
        verified = {**asdict(report), "ok": report.ok} if report is not None else None
        echo_json({"format": exported.format, "path": str(exported.path), "files": exported.files,
                   **exported.details, "decrypted": exported.decrypted, "verify": verified, "pushed": exported.pushed})
    else:
        size = exported.details.get("bytes")
        typer.echo(f"wrote {exported.path}: {', '.join(exported.files)}"
                   + (f" ({size / 2**20:.1f} MiB)" if size is not None else ""))
        if exported.summary is not None:
            typer.echo(exported.summary)
    raise typer.Exit(1 if exported.verified is False else 0)


def verify(
    run: Path = typer.Argument(..., help="Run directory (runs/<name>)."),
    exported: Path = typer.Option(None, "--exported", help="Exported HF directory (default: the run's final/)."),
    endpoint: str = typer.Option(None, "--endpoint", help="Base URL of a running OpenAI-compatible server."),
    endpoint_model: str = typer.Option(None, "--endpoint-model", help="Model id at the endpoint (default: run name)."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable with the endpoint's key."),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="Largest allowed logit difference."),
    gguf: Path = typer.Option(None, "--gguf", help="Also run this GGUF file in llama.cpp (llama-cpp-python): "
                              "tokenization must match; an f32 file's greedy tokens too, a quantized file's "
                              "perplexity on the held-out text within its type's limit of the fp32 model's."),
    bf16: bool = typer.Option(False, "--bf16", help="Also record how the model decodes in bf16 (serve.dtype: bf16) "
                              "against fp32: largest logit difference and greedy agreement (not part of the verdict)."),
    as_json: bool = json_option("the report (each check and the verdict)"),
) -> None:
    """Parity check: the run's model vs its export (plain transformers), an endpoint, a GGUF in llama.cpp.
    Exit 1 on a mismatch."""
    import os

    from llmkit.exporting.entry import verify_export

    key = os.environ.get(api_key_env, "") if api_key_env else None
    report, words = verify_export(run, exported, endpoint, endpoint_model, tolerance, key or None, gguf, bf16)
    if as_json:
        from dataclasses import asdict

        echo_json({**asdict(report), "ok": report.ok})
    else:
        typer.echo(words)
    raise typer.Exit(0 if report.ok else 1)
