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
from llmkit.device import autocast, bf16_weights, resolve_device, resolve_precision, torch_dtype
from llmkit.errors import ConfigError, RunFailure, UsageError
from llmkit.eval.loss import EvalResult, compute_loss, evaluate, loss_weight
from llmkit.faults import fault_point, nan_loss_at
from llmkit.fsutil import atomic_write_text
from llmkit.privacy import crypto
from llmkit.rundir import RunDir
from llmkit.train import checkpoint as ckpt
from llmkit.train import master as master_
from llmkit.train import setup
from llmkit.train.checkpoint import TrainerState
from llmkit.train.metrics import MetricsWriter
from llmkit.train.optim import lr_at, make_optimizer
from llmkit.train.progress import Progress
from llmkit.train.remote import RemoteCheckpoints, remote_for, sync_for_resume
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
          allow_config_change: bool = False, stop_at_step: int | None = None, log: Log = print,
          bar: bool | None = None) -> TrainResult:
    """Train ``cfg`` in its run directory; resumes from the newest committed checkpoint by default.

    Under torchrun every rank calls this; rank 0 logs, writes metrics and the final model.
    """
    from llmkit.train import distributed as dist_

    device = resolve_device(cfg.train.device)
    d = dist_.init(cfg, device)
    try:
        return _train(cfg, d, dist_.rank_device(device, d), run_dir, resume, allow_config_change, stop_at_step,
                      log if d.is_main else _quiet, bar)
    finally:
        dist_.close(d)


def _report(run: RunDir, log: Log) -> Path:
    """report.html for the trackers (not for an encrypted run: its samples are sealed)."""
    from llmkit.privacy import crypto
    from llmkit.report.html import build_report

    if crypto.active() is not None:
        log("trackers: no report.html for an encrypted run")
        return run.report
    return build_report(run.root)


def _quiet(_line: str) -> None:
    """The log of ranks other than 0."""


def _train(cfg: RunConfig, d: Any, device: Any, run_dir: str | Path | None, resume: str, allow_config_change: bool,
           stop_at_step: int | None, log: Log, bar: bool | None = None) -> TrainResult:
    import torch

    from llmkit.device import memory_budget_bytes
    from llmkit.doctor.manifest import write_manifest
    from llmkit.model.build import matmul_weights
    from llmkit.plan.compute import flops_per_token
    from llmkit.plan.measure import matmul_peak_flops
    from llmkit.train import distributed as dist_
    from llmkit.train.build import build_for_training
    from llmkit.train.final import write_final

    # --- set-up: device, data, model, wrapper, optimizer ---------------------------------------
    run = RunDir.of(cfg, run_dir)
    key = crypto.activate(cfg.privacy.encryption_key_env, strict=True)  # a missing key stops here
    if key is not None:
        if d.enabled:
            raise ConfigError("privacy.encryption_key_env is set, but this run has several processes",
                              "sharded checkpoints (torch.distributed.checkpoint) are not encrypted yet",
                              "train on one device, or turn encryption off for distributed runs")
        if d.is_main:
            from llmkit.privacy.rotate import recover

            recover(run.root, log)
        log(f"encryption: on (AES-256-GCM, key id {key.id_hex} from ${key.env})")
    tc = cfg.train
    private = cfg.privacy.dp.enabled
    precision = "fp32" if private and tc.precision == "auto" else resolve_precision(tc.precision, device)
    if private:
        from llmkit.train.dp import check_supported

        check_supported(cfg, d.enabled, precision)
    device_kind = "cpu" if device.type == "cpu" else "gpu"
    wrapper = dist_.choose_wrapper(cfg, d, memory_budget_bytes(device), precision, device_kind)
    micro = setup.micro_batch(cfg, device, precision, log, d.world_size, sharded=wrapper == "fsdp")
    accum = tc.global_batch_size // (micro * d.world_size)
    classify = tc.task == "classify"
    data = task_batches(cfg, run.root, micro, d.rank, d.world_size)
    inner = build_for_training(cfg, data, device, log)
    masters = None  # train.precision bf16-weights (or auto where it applies): llmkit.train.master
    if bf16_weights(tc.precision, precision, device.type, cfg.model.lora.enabled, d.enabled, private):
        master_.check_supported(cfg.model.lora.enabled, d.enabled, private, device.type)
        masters = master_.MasterWeights(inner)
    model = dist_.wrap(inner, wrapper, d, precision, device)
    # the loss over the vocabulary in chunks of tokens (llmkit.eval.head_loss), except where the
    # wrapper must see the head's weight used inside the forward (FSDP gathers it there; Opacus
    # hooks the head for per-example gradients)
    chunked = wrapper != "fsdp" and not private
    dist_.check_setup(cfg, d, model, wrapper)
    optimizer = make_optimizer(model, tc, device.type, masters)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    total_steps = setup.total_steps(tc)
    dp = None
    if private:  # per-example gradients, clipping, noise and the accountant (llmkit.train.dp)
        from llmkit.train.dp import DpTrainer

        dp = DpTrainer(cfg, model, optimizer, data, micro, total_steps, classify, log)

    # --- resume: newest committed checkpoint that verifies, or a fresh start -------------------
    if d.local_rank == 0:
        for partial in ckpt.remove_partial(run.checkpoints):
            log(f"removed partial checkpoint {partial.name} (left by an interrupted save)")
    dist_.barrier(d)
    state = TrainerState(step=0, tokens_seen=0, train_time_s=0.0, nonfinite_skipped=0,
                         config=cfg.model_dump(mode="json"), data=data.fingerprint, data_position={},
                         param_groups=[], scaler=None, llmkit_version=__version__)
    remote = remote_for(tc.checkpoint_uri)
    if remote is not None and resume == "auto":
        # rank 0 first (it also drops partial uploads), then the first rank of every other node: on
        # node-local disks each node needs its own copy; on shared storage they find it already there
        if d.is_main:
            sync_for_resume(remote, run.checkpoints, log, remove_partial=True)
        dist_.barrier(d)
        if d.local_rank == 0 and not d.is_main:
            sync_for_resume(remote, run.checkpoints, _quiet, remove_partial=False)
        dist_.barrier(d)
    if d.restart and resume == "never":
        resume = "auto"  # torchrun restarted the workers: continue, never start over
    found = _find_resume(run.checkpoints, resume, log, d)
    if found is not None:
        _check_resumable(found, state, allow_config_change)
        _restore(found, model, inner, optimizer, data, scaler, state, d)
        if masters is not None:
            masters.load(found.tensors)
        if dp is not None:
            dp.load_state_dict(found.state.dp)
            state.dp = found.state.dp
        log(f"resumed from {found.path} (step {state.step})")
    else:
        torch.manual_seed(tc.seed + d.rank)  # dropout: its own stream per rank

    if d.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, dump_config(cfg))
        write_manifest(run.root, cfg, [p for p in run.data.rglob("meta.json")])
    trackers = None
    if d.is_main and tc.trackers:
        from llmkit.train.trackers import Trackers

        trackers = Trackers(cfg, run.root, log)
    metrics = MetricsWriter(run.metrics, state.step, trackers) if d.is_main else None
    if metrics is not None and found is not None:
        metrics.write({"kind": "resume", "step": state.step, "world_size": d.world_size, "restart": d.restart})

    n_params = sum(p.numel() for p in inner.parameters())
    trainable = sum(p.numel() for p in inner.parameters() if p.requires_grad)
    flops_tok = flops_per_token(*matmul_weights(inner), cfg.model.num_hidden_layers, cfg.model.hidden_size,
                                tc.sequence_length_tokens)
    peak = matmul_peak_flops(device, torch_dtype(precision)) * d.world_size
    where = f"{d.world_size} process(es) ({d.backend}, {wrapper})" if d.enabled else device.type
    shown = f"{precision} weights, fp32 master weights" if masters is not None else precision
    log(f"training {n_params:,} parameters ({trainable:,} trainable) on {where}, {shown}, "
        f"micro-batch {micro} x {accum} accumulation steps" + (f" x {d.world_size} ranks" if d.enabled else ""))

    # --- train.compile: the module the step calls (the model, or its compiled wrapper) ------------
    model.train()
    step_model = model
    if tc.compile is not False and dp is None:
        if d.enabled and tc.compile is True:
            raise ConfigError("train.compile: true runs in one process here",
                              "compiling the DDP / FSDP-wrapped model is not supported yet",
                              "set train.compile: false (or auto, which trains such runs eager)")
        if d.enabled:
            log("compile: auto -> eager (several processes)")
        else:
            from llmkit.train.compiled import prepare as prepare_compile

            first = {k: torch.from_numpy(v).to(device) for k, v in data.eval_batches()[0].items()}

            def dry_loss(m: Any, b: dict[str, Any]) -> Any:
                with autocast(device, precision):
                    return compute_loss(m, b, classify, chunked)[0]

            remaining = None if total_steps is None else total_steps - state.step
            step_model = prepare_compile(tc.compile, model, first, dry_loss, remaining, accum, log)
    elif tc.compile == "auto" and dp is not None:
        log("compile: auto -> eager (privacy.dp's per-example gradient hooks)")

    # --- the loop -----------------------------------------------------------------------------
    last_saved, last_loss, last_eval, eval_step = state.step, None, None, -1
    reason: EndReason = "completed"
    progress = Progress(total_steps, state.step, log, every=tc.log_every_steps, interactive=bar if d.is_main else False)
    with StopSignals() as signals, progress:
        while not _budget_spent(tc, state, total_steps):
            if stop_at_step is not None and state.step >= stop_at_step:
                reason = "stop_at_step"
                break
            t0 = time.perf_counter()
            lr = lr_at(state.step, tc, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if dp is not None:
                step_loss, step_tokens, _ = dp.accumulate(state.step + 1)
                fault_point("step")
                if not math.isfinite(step_loss):
                    dp.discard()
                _apply_update(dp.optimizer, None, step_loss, 0.0, tc, state, last_saved, log)  # noise, then AdamW
                grad_norm = dp.last_grad_norm  # of the clipped, noised, averaged gradient
                state.dp = dp.state_dict()
            else:
                step_loss, step_tokens = _accumulate_gradients(step_model, data, accum, device, precision, classify,
                                                               scaler, state.step + 1, chunked)
                fault_point("step")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if masters is not None:
                    masters.grads_to_masters()
                updated = masters.masters if masters is not None else [p for p in model.parameters() if p.requires_grad]
                grad_norm = float(dist_.local_value(torch.nn.utils.clip_grad_norm_(
                    updated, tc.grad_clip_norm or float("inf"))))
                _apply_update(optimizer, scaler, step_loss, grad_norm, tc, state, last_saved, log)
                if masters is not None:
                    masters.masters_to_model()
            state.step += 1
            state.tokens_seen += step_tokens
            # every rank stops after the same step and counts the same time (the slowest rank's)
            dt, stop = dist_.all_reduce([time.perf_counter() - t0, float(signals.received is not None)], "max")
            state.train_time_s += dt
            last_loss = step_loss
            tok_s = step_tokens / dt
            record = {"kind": "train", "step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens": state.tokens_seen, "tokens_per_s": tok_s, "mfu": tok_s * flops_tok / peak,
                      "elapsed_s": state.train_time_s}
            if dp is not None:
                record["epsilon"] = state.dp["epsilon"] if state.dp else 0.0
                record["delta"] = dp.setup.delta
            progress.update(state.step, record)
            if metrics is not None and state.step % tc.log_every_steps == 0:
                metrics.write(record)
            if state.step % tc.eval_every_steps == 0:
                last_eval, eval_step = _evaluate(model, data, precision, classify, state.step, metrics, chunked), state.step
                progress.note(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.metrics().items()))
            if state.step % tc.checkpoint_every_steps == 0:
                _save(run, tc.keep_last, remote, model, optimizer, scaler, data, state, d, log, masters)
                last_saved = state.step
            if stop:
                reason = "signal"
                break
        if state.step != last_saved:
            _save(run, tc.keep_last, remote, model, optimizer, scaler, data, state, d, log, masters)
    if reason == "completed":
        if eval_step != state.step:
            last_eval = _evaluate(model, data, precision, classify, state.step, metrics, chunked)
        final_model = _gather_final(cfg, model, inner, wrapper, data, d)
        if masters is not None:
            final_model = masters.fp32_model(final_model)  # the fp32 masters, not their bf16 copies
        if d.is_main:
            write_final(cfg, run, final_model, log)
    if metrics is not None:
        artifacts = [run.config, run.manifest, run.metrics]
        if trackers is not None and trackers.active and reason == "completed":
            artifacts.append(_report(run, log))
        metrics.close(artifacts, ok=reason == "completed")
    if dp is not None and state.dp:
        log(f"privacy.dp: epsilon {state.dp['epsilon']:.3f} spent at delta {state.dp['delta']:.3g} over {state.step} "
            f"steps (noise multiplier {state.dp['noise_multiplier']:.4g}, sampling rate {state.dp['sample_rate']:.4g})")
    exit_code = (signals.exit_code or 143) if reason == "signal" else 0
    if reason == "signal":
        log(f"stopped by {signals.received.name if signals.received else 'a signal to another rank'} after step "
            f"{state.step}; checkpoint saved; resume with --resume auto")
    return TrainResult(run.root, state.step, reason, exit_code, last_loss, last_eval)


def _save(run: RunDir, keep_last: int, remote: RemoteCheckpoints | None, model: Any, optimizer: Any, scaler: Any,
          data: Any, state: TrainerState, d: Any, log: Log, masters: Any = None) -> None:
    """Commit a checkpoint of the current step: one process writes the flat layout, many the sharded
    one (every rank at once); then rank 0 applies retention and uploads it to ``train.checkpoint_uri``.
    Refuses to save NaN/inf."""
    import torch

    from llmkit.train import distributed as dist_

    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters() if p.requires_grad]
    finite = all(bool(torch.isfinite(t).all()) for t in local)
    if dist_.all_reduce([0.0 if finite else 1.0], "max")[0]:
        raise RunFailure(f"refusing to save step {state.step}: the model holds non-finite values",
                         "a checkpoint with NaN/inf would poison every resume", "resume from the previous checkpoint")
    state.data_position = data.state_dict()
    state.scaler = scaler.state_dict() if scaler is not None else None
    uploaded = False
    if d.enabled:
        state.param_groups = []  # the sharded layout keeps them with the optimizer state
        path, uploaded = ckpt.save_sharded(run.checkpoints, model, optimizer, state, setup.rng_state(), d.rank,
                                           d.local_rank, remote)
    else:
        tensors = masters.tensors() if masters is not None else setup.trainable_tensors(model)
        opt_tensors, state.param_groups = setup.optimizer_tensors(optimizer)
        path = ckpt.save_checkpoint(run.checkpoints, tensors, opt_tensors, state, setup.rng_state())
    if d.local_rank == 0:
        ckpt.apply_retention(run.checkpoints, keep_last)
    if d.is_main and remote is not None:
        if not uploaded:
            remote.upload(path)
        remote.apply_retention(keep_last)
    dist_.barrier(d)
    log(f"checkpoint {path.name} committed" + (f" (and uploaded to {remote.uri})" if remote is not None else ""))


def _gather_final(cfg: RunConfig, model: Any, inner: Any, wrapper: str, data: Any, d: Any) -> Any:
    """The trained model as one plain module on rank 0 (FSDP: the shards gathered into a fresh copy)."""
    if wrapper != "fsdp":
        return inner
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from llmkit.train.build import build_for_training

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not d.is_main:
        return None
    plain = build_for_training(cfg, data, torch.device("cpu"), _quiet)
    result = plain.load_state_dict(full, strict=False)
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    if result.unexpected_keys or trainable & set(result.missing_keys):
        raise RunFailure("the gathered FSDP weights do not fit the model",
                         f"missing {sorted(trainable & set(result.missing_keys))[:3]}, unexpected "
                         f"{result.unexpected_keys[:3]}", "report this as a bug; the checkpoints are intact")
    return plain


def _accumulate_gradients(model: Any, data: Any, accum: int, device: Any, precision: str, classify: bool,
                          scaler: Any, step: int, chunked: bool) -> tuple[float, int]:
    """Forward and backward over this rank's ``accum`` micro-batches. The gradient is that of the
    mean loss over every labelled position of the global batch (all ranks), so it does not depend
    on how the batch is split. Returns (that mean loss, the tokens of the step over all ranks,
    padding excluded)."""
    import torch

    from llmkit.train import distributed as dist_

    batches = [data.next_micro_batch() for _ in range(accum)]
    counts = [loss_weight(b, classify) for b in batches]
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].size) for b in batches)
    total, all_tokens = dist_.all_reduce([float(sum(counts)), float(tokens)])
    world = dist_.world_size()
    loss_sum = 0.0
    for i, np_batch in enumerate(batches):
        batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in np_batch.items()}
        with dist_.no_grad_sync(model, sync=i == accum - 1):
            with autocast(device, precision):
                loss = compute_loss(model, batch, classify, chunked)[0]
            if nan_loss_at(step):
                loss = loss * float("nan")
            # DDP and FSDP average the ranks' gradients: the world size turns that mean into the sum
            scaled = loss * (counts[i] * world / max(total, 1.0))
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += float(loss.detach()) * counts[i]
    return dist_.all_reduce([loss_sum])[0] / max(total, 1.0), int(all_tokens)


def _restore(found: ckpt.Checkpoint, model: Any, inner: Any, optimizer: Any, data: Any, scaler: Any,
             state: TrainerState, d: Any) -> None:
    """Load a checkpoint (either layout, written by any number of ranks) into the model, optimizer,
    data position, RNGs, loss scaler and counters."""
    if found.sharded:
        ckpt.load_sharded(found.path, model, optimizer)
    elif d.enabled:
        ckpt.load_flat_into_wrapped(found, model, inner, optimizer)
    else:
        setup.load_trainable(model, found.tensors)
        setup.load_optimizer(optimizer, found.optimizer_tensors, found.state.param_groups)
    data.load_state_dict(found.state.data_position)
    rng = found.rng
    if isinstance(rng, list):  # one per rank; another world size takes rank 0's
        rng = rng[d.rank] if len(rng) == d.world_size else rng[0]
    setup.set_rng_state(rng)
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


def _evaluate(model: Any, data: Any, precision: str, classify: bool, step: int,
              metrics: MetricsWriter | None, chunked: bool) -> EvalResult:
    """Evaluate on the fixed validation batches (every rank evaluates them all: FSDP needs every
    rank in each forward) and log the result at ``step``."""
    result = evaluate(model, data.eval_batches(), precision, classify, chunked=chunked)
    if metrics is not None:
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


def _find_resume(root: Path, resume: str, log: Log, d: Any) -> ckpt.Checkpoint | None:
    """The checkpoint to resume: rank 0 chooses and verifies it; the other ranks read the same one."""
    from llmkit.train import distributed as dist_

    if d.world_size == 1:
        return _choose_resume(root, resume, log)
    found, message = None, ("ok", None)
    if d.is_main:
        try:
            found = _choose_resume(root, resume, log)
            message = ("ok", str(found.path) if found is not None else None)
        except Exception as exc:
            dist_.broadcast_object(("error", str(exc)))
            raise
    message = dist_.broadcast_object(message)
    if message[0] == "error":
        raise UsageError("rank 0 could not choose a checkpoint to resume", message[1].splitlines()[0])
    if d.is_main or message[1] is None:
        return found
    return ckpt.read_checkpoint(Path(message[1]), check=False)


def _choose_resume(root: Path, resume: str, log: Log) -> ckpt.Checkpoint | None:
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
