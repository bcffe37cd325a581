"""The one training loop: pretraining, SFT, LoRA and classification differ only in their batches
(train/batches.py) and model (model/); the loop below is the same for all, top to bottom.

One optimizer step = ``global_batch_size / micro_batch_size`` micro-batches of forward +
backward (gradient accumulation), then a finiteness check, clipping and AdamW. Every
``checkpoint_every_steps`` the full state (weights, optimizer, data position, RNG) is committed,
so a resumed run computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit import __version__
from llmkit.config.load import dump_config
from llmkit.config.schema import RunConfig
from llmkit.data.prepare import run_dir_of
from llmkit.errors import RunFailure, UsageError
from llmkit.fsutil import atomic_write_text
from llmkit.train import checkpoint as ckpt
from llmkit.train import setup
from llmkit.train.batches import task_batches
from llmkit.train.faults import fault_point, nan_loss_at
from llmkit.train.metrics import MetricsWriter
from llmkit.train.optim import lr_at, make_optimizer
from llmkit.train.perf import flops_per_token, matmul_peak_flops
from llmkit.train.progress import Progress
from llmkit.train.signals import StopSignals

Log = Callable[[str], None]


@dataclass
class TrainResult:
    """How a `train` call ended."""

    run_dir: Path
    step: int
    reason: str  # "completed", "stop_at_step", "signal"
    exit_code: int = 0
    last_loss: float | None = None
    eval: dict[str, float] = field(default_factory=dict)


def compute_loss(model: Any, batch: dict[str, Any], classify: bool) -> tuple[Any, int]:
    """Mean cross-entropy over positions with a label (ignore -100), and how many there were."""
    import torch.nn.functional as F

    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
    logits = out.logits.float()
    if classify:
        return F.cross_entropy(logits, batch["labels"]), int(batch["labels"].numel())
    labels = batch["labels"]
    count = int((labels != -100).sum())
    total = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")
    return total / max(count, 1), count


def evaluate(model: Any, batches: list[dict[str, Any]], device: Any, precision: str, classify: bool) -> dict[str, float]:
    """Validation loss (and perplexity, or accuracy for classifiers) over fixed batches."""
    import torch

    model.eval()
    loss_sum, count, correct = 0.0, 0, 0
    with torch.no_grad(), setup.autocast(device, precision):
        for np_batch in batches:
            batch = {k: torch.from_numpy(v).to(device) for k, v in np_batch.items()}
            loss, n = compute_loss(model, batch, classify)
            loss_sum += float(loss) * n
            count += n
            if classify:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                correct += int((logits.argmax(-1) == batch["labels"]).sum())
    model.train()
    val_loss = loss_sum / max(count, 1)
    result = {"val_loss": val_loss}
    if classify:
        result["val_accuracy"] = correct / max(count, 1)
    else:
        result["val_ppl"] = math.exp(min(val_loss, 700.0))
    return result


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: str = "auto",
          allow_config_change: bool = False, stop_at_step: int | None = None, log: Log = print) -> TrainResult:
    """Train ``cfg`` in its run directory; resumes from the newest committed checkpoint by default."""
    import torch

    from llmkit.doctor.manifest import write_manifest
    from llmkit.train.build import build_for_training
    from llmkit.train.final import write_final

    # --- set-up: device, data, model, optimizer ---------------------------------------------
    run = run_dir_of(cfg, run_dir)
    tc = cfg.train
    device = setup.resolve_device(tc.device)
    precision = setup.resolve_precision(tc.precision, device)
    micro = setup.micro_batch(cfg, device, precision, log)
    accum = tc.global_batch_size // micro
    classify = tc.task == "classify"
    data = task_batches(cfg, run, micro)
    model = build_for_training(cfg, data, device, log)
    optimizer = make_optimizer(model, tc, device.type)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    tokens_per_step = tc.global_batch_size * tc.sequence_length_tokens
    total_steps = tc.max_steps or (math.ceil(tc.max_tokens / tokens_per_step) if tc.max_tokens else None)

    # --- resume: newest committed checkpoint that verifies, or a fresh start -------------------
    ckpt_root = run / "checkpoints"
    for partial in ckpt.remove_partial(ckpt_root):
        log(f"removed partial checkpoint {partial.name} (left by an interrupted save)")
    step, tokens_seen, train_time_s, skipped = 0, 0, 0.0, 0
    current = cfg.model_dump(mode="json")
    found = _find_resume(ckpt_root, resume, log)
    if found is not None:
        path, (tensors, opt_tensors, state, rng) = found
        diff = setup.config_diff(state["config"], current)
        if state.get("data") != data.fingerprint:
            diff.append("data: the prepared data changed since this checkpoint")
        if diff and not allow_config_change:
            raise UsageError(f"the config differs from the one {path.name} was trained with",
                             "changed:\n  " + "\n  ".join(diff),
                             "restore the old values, start a new run (new name), or pass --allow-config-change")
        setup.load_trainable(model, tensors)
        setup.load_optimizer(optimizer, opt_tensors, state["param_groups"])
        data.load_state_dict(state["data_position"])
        setup.set_rng_state(rng)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        train_time_s, skipped = state["train_time_s"], state.get("nonfinite_skipped", 0)
        log(f"resumed from {path} (step {step})")
    else:
        torch.manual_seed(tc.seed)

    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    write_manifest(run, cfg, [p for p in (run / "data").rglob("meta.json")])
    metrics = MetricsWriter(run / "metrics.jsonl", step, run / "tensorboard" if tc.tensorboard else None)

    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_tok = flops_per_token(n_params, cfg.model.num_hidden_layers, cfg.model.hidden_size,
                                tc.sequence_length_tokens, trainable / n_params)
    peak = matmul_peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float16
                             if precision == "fp16" else torch.float32)
    log(f"training {n_params:,} parameters ({trainable:,} trainable) on {device.type}, {precision}, "
        f"micro-batch {micro} x {accum} accumulation steps")

    def save(at_step: int) -> None:
        tensors = setup.trainable_tensors(model)
        opt_tensors, groups = setup.optimizer_tensors(optimizer)
        if not all(bool(torch.isfinite(t).all()) for t in [*tensors.values(), *opt_tensors.values()]):
            raise RunFailure(f"refusing to save step {at_step}: the model holds non-finite values",
                             "a checkpoint with NaN/inf would poison every resume", "resume from the previous checkpoint")
        state = {"step": at_step, "tokens_seen": tokens_seen, "train_time_s": train_time_s,
                 "nonfinite_skipped": skipped, "config": current, "data": data.fingerprint,
                 "data_position": data.state_dict(), "param_groups": groups,
                 "scaler": scaler.state_dict() if scaler is not None else None, "llmkit_version": __version__}
        path = ckpt.save_checkpoint(ckpt_root, at_step, tensors, opt_tensors, state, setup.rng_state())
        ckpt.apply_retention(ckpt_root, tc.keep_last)
        log(f"checkpoint {path.name} committed")

    # --- the loop -----------------------------------------------------------------------------
    model.train()
    last_saved, last_loss, reason, eval_result, eval_step = step, None, "completed", {}, -1
    progress = Progress(total_steps, step, log, every=tc.log_every_steps)
    with StopSignals() as signals, progress:
        while True:
            if total_steps is not None and step >= total_steps:
                break
            if tc.max_tokens is not None and tokens_seen >= tc.max_tokens:
                break
            if tc.max_time_s is not None and train_time_s >= tc.max_time_s:
                break
            if stop_at_step is not None and step >= stop_at_step:
                reason = "stop_at_step"
                break
            t0 = time.perf_counter()
            lr = lr_at(step, tc, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = 0.0, 0
            for _ in range(accum):
                np_batch = data.next_micro_batch()
                batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in np_batch.items()}
                with setup.autocast(device, precision):
                    loss, _ = compute_loss(model, batch, classify)
                if nan_loss_at(step + 1):
                    loss = loss * float("nan")
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += float(loss.detach())
                mask = np_batch.get("attention_mask")
                step_tokens += int(mask.sum()) if mask is not None else int(np_batch["input_ids"].size)
            fault_point("step")
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], tc.grad_clip_norm or float("inf")))
            step_loss = loss_sum / accum
            if not math.isfinite(step_loss) or (scaler is None and not math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)  # this step's update is never applied
                what = "loss" if not math.isfinite(step_loss) else "gradient norm"
                if tc.nonfinite == "stop":
                    raise RunFailure(f"non-finite {what} at step {step + 1} ({step_loss if what == 'loss' else grad_norm})",
                                     f"the update was not applied; the last good checkpoint is step {last_saved}",
                                     "lower train.learning_rate or check the data; resume with --resume auto, or "
                                     "set train.nonfinite: skip to skip such batches")
                skipped += 1
                log(f"step {step + 1}: non-finite {what}, batch skipped ({skipped} so far)")
            elif scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            train_time_s += dt
            last_loss = step_loss
            tok_s = step_tokens / dt
            record = {"kind": "train", "step": step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": tokens_seen, "tokens_per_s": tok_s, "mfu": tok_s * flops_tok / peak,
                      "elapsed_s": train_time_s}
            progress.update(step, record)
            if step % tc.log_every_steps == 0:
                metrics.write(record)
            if step % tc.eval_every_steps == 0:
                eval_result, eval_step = evaluate(model, data.eval_batches(), device, precision, classify), step
                metrics.write({"kind": "eval", "step": step, **eval_result})
                progress.note(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in eval_result.items()))
            if step % tc.checkpoint_every_steps == 0:
                save(step)
                last_saved = step
            if signals.received is not None:
                reason = "signal"
                break
        if step != last_saved:
            save(step)
    if reason == "completed":
        if eval_step != step:
            eval_result = evaluate(model, data.eval_batches(), device, precision, classify)
            metrics.write({"kind": "eval", "step": step, **eval_result})
        write_final(cfg, run, model, log)
    metrics.close()
    exit_code = signals.exit_code if reason == "signal" else 0
    if reason == "signal":
        log(f"stopped by {signals.received.name} after step {step}; checkpoint saved; resume with --resume auto")
    return TrainResult(run, step, reason, exit_code, last_loss, eval_result)


def _find_resume(root: Path, resume: str, log: Log) -> tuple[Path, tuple[Any, ...]] | None:
    if resume == "never":
        if ckpt.committed(root):
            raise UsageError(f"{root} already holds checkpoints",
                             "--resume never would start over and overwrite them",
                             "use --resume auto to continue, or a new run name")
        return None
    if resume == "auto":
        return ckpt.newest_valid(root, log)
    path = Path(resume)
    if not (path / ckpt.COMMITTED).exists():
        found = ", ".join(p.name for _, p in ckpt.committed(root)) or "none"
        raise UsageError(f"{path} is not a committed checkpoint", f"committed checkpoints in {root}: {found}",
                         "pass one of those, or --resume auto")
    return path, ckpt.read_checkpoint(path)
