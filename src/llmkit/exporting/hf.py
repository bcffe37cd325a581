"""`llmkit export --format hf`: a Hugging Face directory that plain transformers loads.

The source is the run's ``final/`` (LoRA runs: merged there, adapter in ``final/adapter``).
Weights are written as safetensors, sharded with an index above ``max_shard_size``; tokenizer
files (with the chat template) and generation_config.json come along. A dtype that changes the
model is measured: the largest logit difference on the run's eval prompts is reported.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.exporting.base import ExportFormat, Exported, ExportRequest
from llmkit.fsutil import staged_dir
from llmkit.rundir import RunDir

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    dtype: str
    max_logit_diff: float  # vs the fp32 model on the eval prompts (0 for float32)


def source_dir(run: Path) -> Path:
    """The run's final/ directory, or an error naming the command that makes one."""
    paths = RunDir(run)
    if (paths.final / "config.json").exists():
        return paths.final
    if not run.exists():
        raise UsageError(f"{run} does not exist", "", "pass a run directory made by `llmkit train` or `llmkit quickstart`")
    has_ckpt = any(paths.checkpoints.glob("step-*/COMMITTED")) if paths.checkpoints.exists() else False
    detail = ("it has checkpoints but training has not finished (final/ is written at the end)" if has_ckpt
              else "it has neither final/ nor checkpoints")
    raise UsageError(f"{run} has no trained model to export", detail,
                     "finish training: llmkit train --config <run.yaml> (resumes where it stopped)")


@contextlib.contextmanager
def open_source(run: Path, decrypt: bool = False) -> Iterator[Path]:
    """The run's final/ as plain files: itself, or for an encrypted run (with ``decrypt``) a copy
    decrypted in memory. Exports are for other tools, so they are plain: an encrypted run is
    exported only when the user asks for that with ``decrypt``."""
    from llmkit.privacy import crypto

    src = source_dir(run)
    if not crypto.has_sealed(src):
        yield src
        return
    if not decrypt:
        raise UsageError(f"{run} is encrypted at rest (privacy.encryption_key_env)",
                         "an export is for other tools, which read plain files only: it would hold the model "
                         "and tokenizer unencrypted",
                         "pass --decrypt to write a plain export (keep it as protected as the data)")
    with RunDir(run).run_context().open_run(run), crypto.readable_dir(src) as plain:  # the run's key
        yield plain


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless overwriting is asked for."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"{out} exists and is not empty", "export never overwrites by default",
                         "pass --overwrite, or another --out")


def logit_diff(a: Any, b: Any, prompts: list[list[int]]) -> float:
    """Largest absolute difference of the two models' logits over the prompts (fp32 compare)."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for ids in prompts:
            x = torch.tensor([ids])
            worst = max(worst, float((a(input_ids=x).logits.float() - b(input_ids=x).logits.float()).abs().max()))
    return worst


def export_hf(run: Path, out: Path, dtype: str = "float32", merge_lora: bool = True, overwrite: bool = False,
              max_shard_size: str = "2GB", prompts: list[list[int]] | None = None,
              src: Path | None = None) -> ExportResult:
    """Write the run's model as an HF directory (or, without merging, its PEFT adapter); ``src``:
    the run's final/ as plain files when it is not final/ itself (``open_source``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", f"choose one of {', '.join(DTYPES)}", "pass --dtype float32")
    src = src if src is not None else source_dir(run)
    check_out_dir(out, overwrite)
    if not merge_lora:
        if not (src / "adapter" / "adapter_config.json").exists():
            raise UsageError(f"{run} is not a LoRA run (no final/adapter)", "--no-merge-lora exports an adapter",
                             "drop --no-merge-lora to export the full model")
        with staged_dir(out) as tmp:
            shutil.copytree(src / "adapter", tmp, dirs_exist_ok=True)
            _copy_tokenizer(src, tmp)
        return ExportResult(out, sorted(p.name for p in out.iterdir()), "adapter", 0.0)
    import json

    arch = json.loads((src / "config.json").read_text()).get("architectures", [""])[0]
    cls = AutoModelForSequenceClassification if "SequenceClassification" in arch else AutoModelForCausalLM
    model = cls.from_pretrained(str(src), dtype=torch.float32, use_safetensors=True, local_files_only=True)
    converted = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
    diff = 0.0 if dtype == "float32" or not prompts else logit_diff(model, converted, prompts)
    with staged_dir(out) as tmp:
        converted.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=max_shard_size)
        _copy_tokenizer(src, tmp)
        if (src / "generation_config.json").exists():
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
            _stop_at_end_of_turn(tmp)
    return ExportResult(out, sorted(p.name for p in out.iterdir()), dtype, diff)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    from llmkit.data.tokenizer import portable_tokenizer_config

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    portable_tokenizer_config(dst)  # also for a final/ written before the portable form


def _stop_at_end_of_turn(directory: Path) -> None:
    """generation_config.json's eos_token_id lists every end token (for a final/ written before it did)."""
    import json

    from llmkit.data.tokenizer import end_token_ids
    from llmkit.fsutil import atomic_write_text

    path = directory / "generation_config.json"
    data = json.loads(path.read_text())
    eos = data.get("eos_token_id")
    ends = end_token_ids(directory, eos if isinstance(eos, int) else None)
    if isinstance(eos, int) and len(ends) > 1:
        data["eos_token_id"] = ends
        atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class HfFormat(ExportFormat):
    """A plain Hugging Face directory (LoRA merged, or the PEFT adapter), in a chosen dtype; a
    float32 export is verified against the run's model in plain transformers."""

    name = "hf"

    def export(self, request: ExportRequest) -> Exported:
        from llmkit.data.tokenizer import load_tokenizer

        tok = load_tokenizer(request.src)
        prompts = [tok.encode(p, add_special_tokens=False) or [tok.eos_token_id] for p in ("The", "A class is", "x = 1")]
        result = export_hf(request.run, request.out, request.dtype, request.merge_lora, request.overwrite,
                           prompts=prompts, src=request.src)
        if request.dtype != "float32" and result.dtype != "adapter":
            request.log(f"warning: {request.dtype} changes the model: max logit difference {result.max_logit_diff:.3g} "
                        "vs float32 on fixed prompts (greedy outputs may differ)")
        return Exported(request.out, "hf", result.files,
                        {"dtype": result.dtype, "max_logit_diff_vs_float32": result.max_logit_diff})

    def verify(self, run: Path, exported: Exported) -> Any:
        if exported.details["dtype"] != "float32":
            return None  # an adapter, or another dtype: not the run's model bit for bit
        from llmkit.exporting.verify import verify

        return verify(run, exported.path)

    def describe(self, report: Any) -> str:
        from llmkit.exporting.verify import render

        return render(report)


FORMAT = HfFormat()
