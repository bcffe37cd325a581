"""`llmkit export`'s entry point: the run's model in a registered format
(``llmkit.registry.EXPORT_FORMATS``), verified where the format can be, then pushed to the Hub
when asked. The CLI and the Python API both call :func:`export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.exporting.base import Exported, ExportFormat, ExportRequest, Log
from llmkit.exporting.hf import open_source
from llmkit.registry import EXPORT_FORMATS, load


def export(run: str | Path, out: str | Path, format: str = "hf", dtype: str = "float32", merge_lora: bool = True,
           quant: str = "f32", overwrite: bool = False, verify: bool = True, decrypt: bool = False,
           push_to_hub: str | None = None, private: bool = False, log: Log = print) -> Exported:
    """Export the run's model as ``format`` (``hf``: a Hugging Face directory in ``dtype``, LoRA
    merged or the adapter; ``gguf``: a llama.cpp file in ``quant``). An encrypted run is exported
    only with ``decrypt`` (exports are plain files for other tools). With ``verify``, the format
    checks the export against the run's model. ``push_to_hub="org/name"`` then uploads it with a
    model card, unless verification failed."""
    run, out = Path(run), Path(out)
    fmt: ExportFormat = load(EXPORT_FORMATS, format, "export format", "FORMAT")
    if private and not push_to_hub:
        raise UsageError("--private applies to --push-to-hub", "", "add --push-to-hub ORG/NAME or drop --private")
    with open_source(run, decrypt) as src:
        decrypted = src != run / "final"
        if decrypted:
            log(f"decrypting: {run} is encrypted at rest; this export is written as PLAIN files (--decrypt)")
        exported = fmt.export(ExportRequest(run, src, out, dtype, merge_lora, quant, overwrite, log))
    exported.decrypted = decrypted
    if verify:
        exported.report = fmt.verify(run, exported)
        if exported.report is not None:
            exported.verified, exported.summary = exported.report.ok, fmt.describe(exported.report)
    if push_to_hub and exported.verified is False:
        log(f"not pushed to {push_to_hub}: the export does not reproduce the run's model")
    elif push_to_hub:
        from llmkit.exporting.card import push_to_hub as push
        from llmkit.rundir import RunDir

        exported.pushed = push(run, exported.path, push_to_hub, private, RunDir(run).load_config().hub_token_env)
        log(f"pushed to {push_to_hub}{' (private)' if private else ''}: {exported.pushed}")
    return exported


def verify_export(run: str | Path, exported: str | Path | None = None, endpoint: str | None = None,
                  endpoint_model: str | None = None, tolerance: float = 1e-4, api_key: str | None = None,
                  gguf: str | Path | None = None, bf16: bool = False) -> tuple[Any, str]:
    """`llmkit verify`: the run's model against its export (default its final/, plain transformers),
    an OpenAI-compatible endpoint and a GGUF file in llama.cpp; (the report, the report in words).
    An encrypted run's final/ is decrypted in memory with the run's key."""
    from llmkit.exporting.verify import render, verify
    from llmkit.privacy import crypto
    from llmkit.rundir import RunDir

    run = Path(run)
    with RunDir(run).run_context().open_run(run), crypto.readable_dir(exported or run / "final") as plain:
        report = verify(run, plain, endpoint, endpoint_model, tolerance, api_key,
                        Path(gguf) if gguf is not None else None, bf16)
    return report, render(report)
