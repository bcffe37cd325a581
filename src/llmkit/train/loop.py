"""The one training loop: pretraining, SFT, LoRA and classification differ only in their batches
(llmkit.data.batches) and model (train/build.py); the loop below is the same for all, top to bottom.

One optimizer step = ``global_batch_size / micro_batch_size`` micro-batches of forward +
backward (gradient accumulation), then a finiteness check, clipping and AdamW. Every
``checkpoint_every_steps`` the full state (weights, optimizer, data position, RNG) is committed,
so a resumed run computes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmkit import __version__
from llmkit.config.load import dump_config
from llmkit.config.schema import RunConfig, TrainConfig
from llmkit.data.batches import task_batches
from llmkit.device import autocast, resolve_device, resolve_precision, torch_dtype
from llmkit.errors import RunFailure, UsageError
from llmkit.eval.loss import EvalResult, compute_loss, evaluate
from llmkit.faults import fault_point, nan_loss_at
from llmkit.fsutil import atomic_write_text
from llmkit.rundir import RunDir
from llmkit.train import checkpoint as ckpt
from llmkit.train import setup
from llmkit.train.checkpoint import TrainerState
from llmkit.train.metrics import MetricsWriter
from llmkit.train.optim import lr_at, make_optimizer
from llmkit.train.progress import Progress
from llmkit.train.signals import StopSignals

Log = Callable[[str], None]
EndReason = Literal["completed", "stop_at_step", "signal"]


@dataclass
class TrainResult:
    """How a `train` call ended."""

    run_dir: Path
    step: int
    reason: EndReason
    exit_code: int = 0
    last_loss: float | None = None
    eval: EvalResult | None = None
    """The last evaluation (None when the run stopped before its first)."""


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: str = "auto",
          allow_config_change: bool = False, stop_at_step: int | None = None, log: Log = print) -> TrainResult:
    """Train ``cfg`` in its run directory; resumes from the newest committed checkpoint by default."""
    import torch

    from llmkit.doctor.manifest import write_manifest
    from llmkit.model.build import matmul_weights
    from llmkit.plan.compute import flops_per_token
    from llmkit.plan.measure import matmul_peak_flops
    from llmkit.train.build import build_for_training
    from llmkit.train.final import write_final

    # --- set-up: device, data, model, optimizer ---------------------------------------------
    run = RunDir.of(cfg, run_dir)
    tc = cfg.train
    device = resolve_device(tc.device)
    precision = resolve_precision(tc.precision, device)
    micro = setup.micro_batch(cfg, device, precision, log)
    accum = tc.global_batch_size // micro
    classify = tc.task == "classify"
    data = task_batches(cfg, run.root, micro)
    model = build_for_training(cfg, data, device, log)
    optimizer = make_optimizer(model, tc, device.type)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    total_steps = setup.total_steps(tc)

    # --- resume: newest committed checkpoint that verifies, or a fresh start -------------------
    for partial in ckpt.remove_partial(run.checkpoints):
        log(f"removed partial checkpoint {partial.name} (left by an interrupted save)")
    state = TrainerState(step=0, tokens_seen=0, train_time_s=0.0, nonfinite_skipped=0,
                         config=cfg.model_dump(mode="json"), data=data.fingerprint, data_position={},
                         param_groups=[], scaler=None, llmkit_version=__version__)
    found = _find_resume(run.checkpoints, resume, log)
    if found is not None:
        _check_resumable(found, state, allow_config_change)
        _restore(found, model, optimizer, data, scaler, state)
        log(f"resumed from {found.path} (step {state.step})")
    else:
        torch.manual_seed(tc.seed)

    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, dump_config(cfg))
    write_manifest(run.root, cfg, [p for p in run.data.rglob("meta.json")])
    metrics = MetricsWriter(run.metrics, state.step, run.tensorboard if tc.tensorboard else None)

    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops_tok = flops_per_token(*matmul_weights(model), cfg.model.num_hidden_layers, cfg.model.hidden_size,
                                tc.sequence_length_tokens)
    peak = matmul_peak_flops(device, torch_dtype(precision))
    log(f"training {n_params:,} parameters ({trainable:,} trainable) on {device.type}, {precision}, "
        f"micro-batch {micro} x {accum} accumulation steps")

    def save() -> None:
        tensors = setup.trainable_tensors(model)
        opt_tensors, state.param_groups = setup.optimizer_tensors(optimizer)
        if not all(bool(torch.isfinite(t).all()) for t in [*tensors.values(), *opt_tensors.values()]):
            raise RunFailure(f"refusing to save step {state.step}: the model holds non-finite values",
                             "a checkpoint with NaN/inf would poison every resume", "resume from the previous checkpoint")
        state.data_position = data.state_dict()
        state.scaler = scaler.state_dict() if scaler is not None else None
        path = ckpt.save_checkpoint(run.checkpoints, tensors, opt_tensors, state, setup.rng_state())
        ckpt.apply_retention(run.checkpoints, tc.keep_last)
        log(f"checkpoint {path.name} committed")

    # --- the loop -----------------------------------------------------------------------------
    model.train()
    last_saved, last_loss, last_eval, eval_step = state.step, None, None, -1
    reason: EndReason = "completed"
    progress = Progress(total_steps, state.step, log, every=tc.log_every_steps)
    with StopSignals() as signals, progress:
        while not _budget_spent(tc, state, total_steps):
            if stop_at_step is not None and state.step >= stop_at_step:
                reason = "stop_at_step"
                break
            t0 = time.perf_counter()
            lr = lr_at(state.step, tc, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, step_tokens = _accumulate_gradients(model, data, accum, device, precision, classify, scaler,
                                                          state.step + 1)
            fault_point("step")
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.requires_grad], tc.grad_clip_norm or float("inf")))
            step_loss = loss_sum / accum
            _apply_update(optimizer, scaler, step_loss, grad_norm, tc, state, last_saved, log)
            state.step += 1
            state.tokens_seen += step_tokens
            dt = time.perf_counter() - t0
            state.train_time_s += dt
            last_loss = step_loss
            tok_s = step_tokens / dt
            record = {"kind": "train", "step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": state.tokens_seen, "tokens_per_s": tok_s, "mfu": tok_s * flops_tok / peak,
                      "elapsed_s": state.train_time_s}
            progress.update(state.step, record)
            if state.step % tc.log_every_steps == 0:
                metrics.write(record)
            if state.step % tc.eval_every_steps == 0:
                last_eval, eval_step = _evaluate(model, data, precision, classify, state.step, metrics), state.step
                progress.note(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.metrics().items()))
            if state.step % tc.checkpoint_every_steps == 0:
                save()
                last_saved = state.step
            if signals.received is not None:
                reason = "signal"
                break
        if state.step != last_saved:
            save()
    if reason == "completed":
        if eval_step != state.step:
            last_eval = _evaluate(model, data, precision, classify, state.step, metrics)
        write_final(cfg, run, model, log)
    metrics.close()
    exit_code = signals.exit_code if reason == "signal" else 0
    if reason == "signal":
        log(f"stopped by {signals.received.name} after step {state.step}; checkpoint saved; resume with --resume auto")
    return TrainResult(run.root, state.step, reason, exit_code, last_loss, last_eval)


def _accumulate_gradients(model: Any, data: Any, accum: int, device: Any, precision: str, classify: bool,
                          scaler: Any, step: int) -> tuple[float, int]:
    """Forward and backward over ``accum`` micro-batches, gradients summed as the mean over them;
    returns (the sum of their losses, the tokens they held, padding excluded)."""
    import torch

    loss_sum, tokens = 0.0, 0
    for _ in range(accum):
        np_batch = data.next_micro_batch()
        batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in np_batch.items()}
        with autocast(device, precision):
            loss = compute_loss(model, batch, classify)[0]
        if nan_loss_at(step):
            loss = loss * float("nan")
        scaled = loss / accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += float(loss.detach())
        mask = np_batch.get("attention_mask")
        tokens += int(mask.sum()) if mask is not None else int(np_batch["input_ids"].size)
    return loss_sum, tokens


def _restore(found: ckpt.Checkpoint, model: Any, optimizer: Any, data: Any, scaler: Any, state: TrainerState) -> None:
    """Load a checkpoint into the model, optimizer, data position, RNGs, loss scaler and counters."""
    setup.load_trainable(model, found.tensors)
    setup.load_optimizer(optimizer, found.optimizer_tensors, found.state.param_groups)
    data.load_state_dict(found.state.data_position)
    setup.set_rng_state(found.rng)
    if scaler is not None and found.state.scaler is not None:
        scaler.load_state_dict(found.state.scaler)
    state.step, state.tokens_seen = found.state.step, found.state.tokens_seen
    state.train_time_s, state.nonfinite_skipped = found.state.train_time_s, found.state.nonfinite_skipped


def _budget_spent(tc: TrainConfig, state: TrainerState, total_steps: int | None) -> bool:
    """Whether the run has reached its step, token or time budget."""
    return ((total_steps is not None and state.step >= total_steps)
            or (tc.max_tokens is not None and state.tokens_seen >= tc.max_tokens)
            or (tc.max_time_s is not None and state.train_time_s >= tc.max_time_s))


def _apply_update(optimizer: Any, scaler: Any, loss: float, grad_norm: float, tc: TrainConfig,
                  state: TrainerState, last_saved: int, log: Log) -> None:
    """Step the optimizer, unless the loss or gradient is not finite: then the update is never
    applied, and the run stops (``train.nonfinite: stop``) or counts the skipped batch. Under fp16
    the loss scaler handles inf gradients itself (it skips the step and lowers the scale)."""
    if not math.isfinite(loss) or (scaler is None and not math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)  # this step's update is never applied
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        if tc.nonfinite == "stop":
            raise RunFailure(f"non-finite {what} at step {state.step + 1} ({loss if what == 'loss' else grad_norm})",
                             f"the update was not applied; the last good checkpoint is step {last_saved}",
                             "lower train.learning_rate or check the data; resume with --resume auto, or "
                             "set train.nonfinite: skip to skip such batches")
        state.nonfinite_skipped += 1
        log(f"step {state.step + 1}: non-finite {what}, batch skipped ({state.nonfinite_skipped} so far)")
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _evaluate(model: Any, data: Any, precision: str, classify: bool, step: int, metrics: MetricsWriter) -> EvalResult:
    """Evaluate on the fixed validation batches and log the result at ``step``."""
    result = evaluate(model, data.eval_batches(), precision, classify)
    metrics.write({"kind": "eval", "step": step, **result.metrics()})
    return result


def _check_resumable(found: ckpt.Checkpoint, fresh: TrainerState, allow_config_change: bool) -> None:
    """Refuse to resume a checkpoint made with another config or other data, unless allowed."""
    diff = setup.config_diff(found.state.config, fresh.config)
    if found.state.data != fresh.data:
        diff.append("data: the prepared data changed since this checkpoint")
    if diff and not allow_config_change:
        raise UsageError(f"the config differs from the one {found.path.name} was trained with",
                         "changed:\n  " + "\n  ".join(diff),
                         "restore the old values, start a new run (new name), or pass --allow-config-change")


def _find_resume(root: Path, resume: str, log: Log) -> ckpt.Checkpoint | None:
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
    return ckpt.read_checkpoint(path)
