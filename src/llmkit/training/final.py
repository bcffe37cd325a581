"""`final/`: the trained model as a plain Hugging Face directory (LoRA merged, adapter beside it)."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.data.tokenizer import end_token_ids, portable_tokenizer_config
from llmkit.fsutil import staged_dir
from llmkit.model.quantize import merged_fp32
from llmkit.errors import UsageError
from llmkit.objectives import for_task
from llmkit.rundir import RunDir


def write_final(cfg: RunConfig, run: RunDir, model: Any, log: Any,
                held_out: Callable[[Any], Any] | None = None, out: Path | None = None) -> Path:
    """Write run/final (or ``out``) atomically: config, safetensors, tokenizer, generation_config.
    ``held_out(model)``: the model's validation result, to record what merging adapters trained
    on a bf16 or quantized base cost (``merge_report``)."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from llmkit.privacy import crypto

    out = run.final if out is None else out
    with staged_dir(out) as staged, crypto.writable_dir(staged) as tmp:  # sealed file by file with a key
        merge: dict[str, Any] = {}
        if cfg.model.lora.enabled:
            model.save_pretrained(str(tmp / "adapter"))  # the standard PEFT adapter directory
            _adapter_names_base(tmp / "adapter", cfg.model.from_pretrained)
            if cfg.model.lora.base_bits < 32:
                merged = merged_fp32(model, model.get_base_model().config, for_task(cfg.train.task).head != "causal_lm")
                merge = merge_report(model, merged, held_out, cfg.model.lora.base_bits, log)
                model = merged
            else:
                model = model.merge_and_unload()
        model.config.use_cache = True
        model.save_pretrained(str(tmp), safe_serialization=True)
        for f in run.tokenizer.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(crypto.read_bytes(f))  # plain here (tmp is in memory when sealing)
        portable_tokenizer_config(tmp)  # runs prepared before the portable form get it here
        g = cfg.generate
        eos = model.config.eos_token_id
        ends = end_token_ids(tmp, eos)  # every token that ends a turn: transformers and vLLM stop at each
        gen = GenerationConfig(eos_token_id=ends if len(ends) > 1 else eos, pad_token_id=model.config.pad_token_id,
                               bos_token_id=eos,
                               max_new_tokens=g.max_new_tokens, do_sample=g.temperature > 0,
                               temperature=g.temperature if g.temperature > 0 else None,
                               top_p=g.top_p if g.temperature > 0 else None,
                               top_k=g.top_k if g.temperature > 0 else None,
                               repetition_penalty=g.repetition_penalty)
        gen.save_pretrained(str(tmp))
        info = {"run": cfg.name, "task": cfg.train.task, **({"merge": merge} if merge else {})}
        (tmp / "llmkit.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"final model written to {out}")
    return out


def materialise_checkpoint(run: RunDir, step: int, out: Path, log: Any) -> Path:
    """A committed one-process checkpoint written as ``final/`` would be, at ``out``: the model
    rebuilt from the run's config, its trained tensors loaded (LoRA adapters on their base, merged
    as ``final/``), saved by :func:`write_final`. Encrypted runs are read and written sealed
    (enter the run's context first). A sharded checkpoint is refused: its tensors are per rank."""
    import torch

    from llmkit.training import checkpoint as ckpt
    from llmkit.training.build import build_for_training
    from llmkit.training.setup import load_trainable

    cfg = run.load_config()
    path = dict(ckpt.committed(run.checkpoints)).get(step)
    if path is None:
        raise UsageError(f"{run.root.name} has no committed checkpoint at step {step}",
                         f"committed: {', '.join(str(s) for s, _ in ckpt.committed(run.checkpoints)) or 'none'}",
                         "pick one of those steps")
    if (path / "dcp").is_dir():
        raise UsageError(f"checkpoint step {step} is sharded (written by several processes)",
                         "its tensors are split per rank; only `llmkit train` reassembles them",
                         "chat with the run's final model, or resume the run to its end")
    found = ckpt.read_checkpoint(path)
    data = for_task(cfg.train.task).batches(cfg, run.root, 1)
    model = build_for_training(cfg, data, torch.device("cpu"), log)
    load_trainable(model, found.tensors or {})
    return write_final(cfg, run, model, log, out=out)


def _adapter_names_base(adapter: Path, base: str | None) -> None:
    """adapter_config.json names the base by what the config gave (a Hub id, or a local path),
    so the adapter loads elsewhere on top of the same base."""
    path = adapter / "adapter_config.json"
    if base and path.exists():
        data = json.loads(path.read_text())
        data["base_model_name_or_path"] = base
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def merge_report(trained: Any, merged: Any, held_out: Callable[[Any], Any] | None, bits: int, log: Any) -> dict[str, Any]:
    """What merging cost: the largest logit difference between the adapters on the base they
    trained on and the merged fp32 model, on the validation batches, and each one's validation
    result. Merging into the dequantized base changes only the arithmetic (the base's weights are
    the same values), so the difference is rounding in the base's compute dtype."""
    report: dict[str, Any] = {"base_bits": bits}
    if held_out is None:
        return report
    captured: dict[str, list[Any]] = {"trained": [], "merged": []}

    def capture(name: str) -> Callable[..., None]:
        return lambda _m, _args, out: captured[name].append(out.logits.detach().float().cpu())

    hooks = [trained.get_base_model().register_forward_hook(capture("trained")),
             merged.register_forward_hook(capture("merged"))]
    try:
        a, b = held_out(trained), held_out(merged)
    finally:
        for h in hooks:
            h.remove()
    diff = max((float((x - y).abs().max()) for x, y in zip(captured["trained"], captured["merged"])), default=0.0)
    report.update({"max_logit_diff": diff, "trained": a.metrics(), "merged": b.metrics()})
    shown = ", ".join(f"{k} {a.metrics()[k]:.4g} -> {b.metrics()[k]:.4g}" for k in a.metrics())
    log(f"merged the adapters into the {bits}-bit base dequantized to fp32: max logit difference {diff:.3g} "
        f"on the validation batches; {shown}")
    return report
