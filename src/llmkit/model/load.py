"""Find and load a model for inference: a run directory (its final/) or an HF model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.data.tokenizer import load_tokenizer
from llmkit.device import resolve_device
from llmkit.errors import UsageError
from llmkit.model.build import load_model
from llmkit.privacy.context import RunContext
from llmkit.rundir import RunDir


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory from a run directory or a model directory; errors list what is nearby."""
    p = Path(path)
    for candidate in (RunDir(p).final, p):
        if (candidate / "config.json").exists():
            return candidate
    if p.is_dir():
        found = sorted(x.name for x in p.iterdir())[:12]
        detail = f"{p} has no final/ or config.json; it holds: {', '.join(found) or 'nothing'}"
    else:
        parent = p.parent if p.parent.is_dir() else Path(".")
        near = sorted(x.name for x in parent.iterdir() if x.is_dir())[:12]
        detail = f"{p} does not exist; directories in {parent}: {', '.join(near) or 'none'}"
    raise UsageError(f"no model at {p}", detail,
                     "`llmkit quickstart` makes runs/quickstart; `llmkit train --config run.yaml` makes runs/<name>")


def load_for_inference(path: str | Path, device: str = "auto", trust_remote_code: bool = False,
                       dtype: str = "fp32") -> tuple[Any, Any, Path]:
    """(model in eval mode, tokenizer, model directory), in ``dtype`` (fp32, bf16, or int8 / int4:
    weight-only quantized linear layers on the CPU, ``llmkit.wquant``), on ``device`` (``auto``: as
    ``llmkit.device.resolve_device`` picks)."""
    from llmkit.device import torch_dtype

    model_dir = resolve_model_dir(path)
    target = resolve_device(device)
    quantized = dtype in ("int8", "int4")
    if quantized and str(target) != "cpu":
        raise UsageError(f"serve.dtype {dtype} runs on the CPU only (the weight-only kernels are PyTorch's CPU ones)",
                         f"the model would go to {target}",
                         "use dtype bf16 on a GPU, or vLLM with a checkpoint quantized beforehand")
    with run_context_of(model_dir).open_run(model_dir.parent if model_dir.name == "final" else model_dir):
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
        model = load_model(model_dir, trust_remote_code)
    model.to(device=target, dtype=torch_dtype("fp32" if quantized else dtype)).eval()
    if quantized:
        from llmkit.wquant import quantize_model

        model.quantized_linear = quantize_model(model, 8 if dtype == "int8" else 4)
    model.config.use_cache = True
    return model, tokenizer, model_dir


def run_context_of(model_dir: Path) -> RunContext:
    """The context a model directory opens with: the one in use when it is a run's, else that of
    the run the directory belongs to (an encrypted run's final/ opens with the key its config
    names; a run with privacy.offline is loaded offline), else the one in use."""
    from llmkit.privacy.context import current

    if current().encrypted or current().offline:
        return current()
    for candidate in (model_dir.parent, model_dir):
        if RunDir(candidate).config.exists():
            return RunDir(candidate).run_context()
    return current()
