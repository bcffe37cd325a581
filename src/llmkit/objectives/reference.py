"""The reference model of a preference run (``train.preference.precompute_reference``).

``precomputed``: before step 1, one pass of the starting model (LoRA: adapters disabled) over every
training and validation example, in the training precision, stored in the run as
``reference/{train,val}.npy`` (sealed under encryption) with ``reference/meta.json`` naming the
data and base it was made from; a resumed run (or ``llmkit eval``) reads it back, and a changed
data set or base recomputes it. Otherwise LoRA disables its adapters and full fine-tuning keeps a
frozen copy (``auto`` picks the copy when it fits the device by the memory plan, else precomputes).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.rundir import RunDir

Log = Callable[[str], None]


def _copy_fits(cfg: RunConfig, device: Any, precision: str, micro: int) -> bool:
    """Whether the training plan plus a frozen copy of the weights fits the device."""
    from llmkit.device import memory_budget_bytes
    from llmkit.planning.memory import training_memory
    from llmkit.planning.pretrained import with_pretrained_shape

    shaped = with_pretrained_shape(cfg)
    kind = "cpu" if device.type == "cpu" else "gpu"
    mem = training_memory(shaped, micro, precision, device_kind=kind, reference="copy")
    return mem.peak_bytes <= memory_budget_bytes(device)


def _kind(cfg: RunConfig, device: Any, precision: str, micro: int) -> str:
    setting, lora = cfg.train.preference.precompute_reference, cfg.model.lora.enabled
    if setting is True:
        return "precomputed"
    if setting is False or lora or cfg.train.preference.loss == "kto":
        return "adapters_off" if lora else "copy"
    return "copy" if _copy_fits(cfg, device, precision, micro) else "precomputed"


def choose(cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str, log: Log,
           starting: bool, is_main: bool) -> Any:
    """The run's :class:`llmkit.objectives.preference.Reference` (a precomputed one attached to
    ``data``). ``starting``: ``model`` holds the starting weights; otherwise (evaluating a trained
    model) the reference comes from the run's precomputed files, else from the base model."""
    from llmkit.objectives.preference import Reference

    if not starting:
        return _for_evaluation(cfg, run_root, model, data, device, log)
    kind = _kind(cfg, device, precision, data.micro)
    if kind == "precomputed":
        data.reference = load_or_compute(cfg, run_root, model, data, device, precision, log, is_main)
        return Reference("precomputed")
    if kind == "copy":
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        return Reference("copy", frozen)
    return Reference("adapters_off")


def _for_evaluation(cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, log: Log) -> Any:
    from llmkit.objectives.preference import Reference

    stored = _read(cfg, run_root, data)
    if stored is not None:
        data.reference = stored
        return Reference("precomputed")
    base = cfg.model.from_pretrained
    if not base:
        raise UsageError("this preference run has no reference to evaluate against",
                         "no precomputed reference/ in the run and no model.from_pretrained base",
                         "set model.from_pretrained to the model the run started from")
    from llmkit.hub import resolve
    from llmkit.model.build import load_model

    m = cfg.model
    log(f"preference: reference = the base model {base}")
    source = resolve(base, "model", cfg.hub_token_env, m.allow_pickle_weights, log)
    frozen = load_model(source.path, m.trust_remote_code, None, None, m.allow_pickle_weights,
                        m.lora.base_bits if m.lora.enabled else 32, device).eval()
    return Reference("copy", frozen.to(device) if not getattr(frozen, "is_quantized", False) else frozen)


def _fingerprint(cfg: RunConfig, data: Any) -> dict[str, Any]:
    lora = cfg.model.lora
    return {"data": data.fingerprint, "base": cfg.model.from_pretrained, "lora_base_bits": lora.base_bits
            if lora.enabled else None, "sequence_length_tokens": cfg.train.sequence_length_tokens}


def _read(cfg: RunConfig, run_root: Path, data: Any) -> dict[str, np.ndarray] | None:
    from llmkit.privacy import crypto

    where = RunDir(Path(run_root)).reference
    if not (where / "meta.json").exists():
        return None
    meta = json.loads((where / "meta.json").read_text(encoding="utf-8"))
    if meta.get("fingerprint") != json.loads(json.dumps(_fingerprint(cfg, data))):
        return None
    return {split: crypto.load_npy(where / f"{split}.npy") for split in ("train", "val")}


def load_or_compute(cfg: RunConfig, run_root: Path, model: Any, data: Any, device: Any, precision: str, log: Log,
                    is_main: bool) -> dict[str, np.ndarray]:
    """The reference log-probabilities of every example, (n, 2) for pairs (chosen, rejected):
    read from the run, or computed with ``model`` (the starting weights) and stored."""
    import time

    from llmkit.fsutil import atomic_write_text, staged_dir
    from llmkit.privacy import crypto

    stored = _read(cfg, run_root, data)
    if stored is not None:
        log("preference: reference log-probabilities read from the run's reference/")
        return stored
    t0 = time.perf_counter()
    arrays = {split: _compute(model, data, split, device, precision) for split in ("train", "val")}
    log(f"preference: reference log-probabilities of {sum(len(a) for a in arrays.values())} examples computed in "
        f"{time.perf_counter() - t0:.1f} s (stored in reference/)")
    if is_main:
        with staged_dir(RunDir(Path(run_root)).reference) as tmp:
            for split, values in arrays.items():
                crypto.save_npy(tmp / f"{split}.npy", values)
            atomic_write_text(tmp / "meta.json", json.dumps({"fingerprint": _fingerprint(cfg, data)}, indent=2) + "\n")
    return arrays


def _compute(model: Any, data: Any, split: str, device: Any, precision: str) -> np.ndarray:
    """One split's reference log-probabilities, a micro-batch at a time, in eval mode."""
    import contextlib

    import torch

    from llmkit.device import autocast
    from llmkit.objectives.preference import peft_model, sequence_logps

    peft = peft_model(model)
    off = peft.disable_adapter() if peft is not None else contextlib.nullcontext()
    n, micro = data.size(split), data.micro
    out = []
    was = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision), off:
        for start in range(0, n, micro):
            batch = {k: torch.from_numpy(v).to(device) for k, v in
                     data.collate(split, list(range(start, min(start + micro, n))), reference=False).items()}
            lp = sequence_logps(model, batch["input_ids"], batch["labels"], batch["attention_mask"], True)[0]
            half = lp.shape[0] // 2
            out.append(torch.stack([lp[:half], lp[half:]], dim=1).double().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0, 2))

