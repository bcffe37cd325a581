"""The one training loop: pretraining, SFT, LoRA and classification differ only in their objective
(llmkit.objectives: batches, loss, metrics) and model (training/build.py); the loop below is the
same for all, top to bottom.

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

from llmkit.config.load import dump_config
from llmkit.config.schema import RunConfig, TrainConfig
from llmkit.config.derived import run_context, train_precision
from llmkit.device import autocast, resolve_device, torch_dtype
from llmkit.errors import ConfigError, RunFailure
from llmkit.eval.evaluator import evaluate
from llmkit.objectives import EvalResult, Objective, for_task
from llmkit.faults import fault_point, nan_loss_at
from llmkit.fsutil import atomic_write_text
from llmkit.privacy.context import RunContext
from llmkit.rundir import RunDir
from llmkit.training import checkpoint as ckpt
from llmkit.training import master as master_
from llmkit.training import setup
from llmkit.training.checkpoint import TrainerState
from llmkit.training.final import write_final
from llmkit.training.metrics import MetricsWriter
from llmkit.training.optim import check_optimizer, lr_at, make_optimizer
from llmkit.training.progress import Progress
from llmkit.training.remote import RemoteCheckpoints, remote_for
from llmkit.training.resume import resume_state
from llmkit.training.signals import StopSignals

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
          bar: bool | None = None, ctx: RunContext | None = None) -> TrainResult:
    """Train ``cfg`` in its run directory; resumes from the newest committed checkpoint by default.
    ``ctx``: the run context (default: the config's, where a configured key that is not set stops
    here).

    Under torchrun every rank calls this; rank 0 logs, writes metrics and the final model.
    """
    from llmkit.training import distributed as dist_

    ctx = ctx if ctx is not None else run_context(cfg, strict=True)
    device = resolve_device(cfg.train.device)
    d = dist_.init(cfg, device)
    try:
        if ctx.encrypted and d.enabled:
            raise ConfigError("privacy.encryption_key_env is set, but this run has several processes",
                              "sharded checkpoints (torch.distributed.checkpoint) are not encrypted yet",
                              "train on one device, or turn encryption off for distributed runs")
        run = RunDir.of(cfg, run_dir)
        with ctx.open_run(run.root, log) if d.is_main else ctx.active():
            if ctx.key is not None:
                log(f"encryption: on (AES-256-GCM, key id {ctx.key.id_hex} from ${ctx.key.env})")
            return _train(cfg, d, dist_.rank_device(device, d), run, resume, allow_config_change, stop_at_step,
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


@dataclass
class _Setup:
    """What the loop trains with: decided once at the start of a run (or a resume)."""

    objective: Objective
    precision: str
    wrapper: str
    micro: int
    accum: int
    data: Any
    inner: Any
    model: Any
    masters: Any
    chunked: bool
    optimizer: Any
    scaler: Any
    total_steps: int | None
    dp: Any


def _train(cfg: RunConfig, d: Any, device: Any, run: RunDir, resume: str, allow_config_change: bool,
           stop_at_step: int | None, log: Log, bar: bool | None = None) -> TrainResult:
    s = _set_up(cfg, d, device, run, log)
    state, found = resume_state(cfg, s, run, resume, allow_config_change, d, log)
    if d.is_main:
        from llmkit.doctor.manifest import write_manifest

        run.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.config, dump_config(cfg))
        write_manifest(run.root, cfg, [p for p in run.data.rglob("meta.json")])
    trackers = None
    if d.is_main and cfg.train.trackers:
        from llmkit.training.trackers import Trackers

        trackers = Trackers(cfg, run.root, log)
    metrics = MetricsWriter(run.metrics, state.step, trackers) if d.is_main else None
    if metrics is not None and found is not None:
        metrics.write({"kind": "resume", "step": state.step, "world_size": d.world_size, "restart": d.restart})
    flops_tok, peak = _announce(cfg, s, d, device, log)
    s.model.train()
    step_model = _step_model(cfg, s, state, d, device, log)
    reason, last_loss, last_eval, exit_code = _loop(cfg, s, step_model, state, run, metrics, d, device, flops_tok,
                                                    peak, stop_at_step, bar, log)
    if reason == "completed":
        final_model = _gather_final(cfg, s.model, s.inner, s.wrapper, s.data, d)
        if s.masters is not None:
            final_model = s.masters.fp32_model(final_model)  # the fp32 masters, not their bf16 copies
        if d.is_main:
            check = s.objective.standalone()
            write_final(cfg, run, final_model, log, held_out=lambda m: evaluate(
                m, s.data.eval_batches(), check, check.metrics(s.data), "fp32", False))
    if metrics is not None:
        artifacts = [run.config, run.manifest, run.metrics]
        if trackers is not None and trackers.active and reason == "completed":
            artifacts.append(_report(run, log))
        metrics.close(artifacts, ok=reason == "completed")
    if s.dp is not None and state.dp:
        log(f"privacy.dp: epsilon {state.dp['epsilon']:.3f} spent at delta {state.dp['delta']:.3g} over {state.step} "
            f"steps (noise multiplier {state.dp['noise_multiplier']:.4g}, sampling rate {state.dp['sample_rate']:.4g})")
    return TrainResult(run.root, state.step, reason, exit_code, last_loss, last_eval)


def _set_up(cfg: RunConfig, d: Any, device: Any, run: RunDir, log: Log) -> _Setup:
    """Device, data, model, wrapper, optimizer (and the DP trainer) for this run."""
    import torch

    from llmkit.device import memory_budget_bytes
    from llmkit.planning.pretrained import with_pretrained_shape
    from llmkit.training import distributed as dist_
    from llmkit.training.build import build_for_training

    tc = cfg.train
    private = cfg.privacy.dp.enabled
    policy = train_precision(cfg, device, d.world_size)
    precision = policy.compute
    if private:
        from llmkit.training.dp import check_supported

        check_supported(cfg, d.enabled, precision)
    check_optimizer(tc, device.type, d.enabled, private)
    if cfg.model.lora.enabled and cfg.model.lora.base_bits < 32 and d.enabled:
        raise ConfigError(f"model.lora.base_bits: {cfg.model.lora.base_bits} is one process only for now",
                          "DDP/FSDP wrap and checkpoint the model's own fp32 parameters",
                          "train in one process, or set model.lora.base_bits: 32")
    objective = for_task(tc.task)
    objective.check(cfg)
    device_kind = "cpu" if device.type == "cpu" else "gpu"
    shaped = with_pretrained_shape(cfg)  # the memory plan of a pretrained base is that of its own shape
    wrapper = dist_.choose_wrapper(shaped, d, memory_budget_bytes(device), precision, device_kind)
    micro = setup.micro_batch(shaped, device, precision, log, d.world_size, sharded=wrapper == "fsdp")
    accum = tc.global_batch_size // (micro * d.world_size)
    data = objective.batches(cfg, run.root, micro, d.rank, d.world_size)
    inner = build_for_training(cfg, data, device, log)
    masters = None  # train.precision bf16-weights (or auto where it applies): llmkit.training.master
    if policy.bf16_weights:
        master_.check_supported(cfg.model.lora.enabled, d.enabled, private, device.type)
        masters = master_.MasterWeights(inner)
    # the objective's own needs (a preference run's reference) from the starting weights, as trained
    objective = objective.for_run(cfg, run.root, inner, data, device, precision, log, True, d.is_main)
    model = dist_.wrap(inner, wrapper, d, precision, device)
    # the loss over the vocabulary in chunks of tokens (llmkit.objectives.head_loss), except where
    # the wrapper must see the head's weight used inside the forward (FSDP gathers it there; Opacus
    # hooks the head for per-example gradients)
    chunked = wrapper != "fsdp" and not private
    dist_.check_setup(cfg, d, model, wrapper)
    optimizer = make_optimizer(model, tc, device.type, masters)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    total_steps = setup.total_steps(tc)
    dp = None
    if private:  # per-example gradients, clipping, noise and the accountant (llmkit.training.dp)
        from llmkit.training.dp import DpTrainer

        dp = DpTrainer(cfg, model, optimizer, data, micro, total_steps, objective, log)
    return _Setup(objective, precision, wrapper, micro, accum, data, inner, model, masters, chunked, optimizer,
                  scaler, total_steps, dp)


def _announce(cfg: RunConfig, s: _Setup, d: Any, device: Any, log: Log) -> tuple[float, float]:
    """Log what is trained where; return the FLOPs per token and the peak FLOP/s (for MFU)."""
    from llmkit.model.build import matmul_weights
    from llmkit.planning.compute import flops_per_token
    from llmkit.planning.measure import matmul_peak_flops

    from llmkit.model.quantize import logical_numel

    n_params = sum(logical_numel(p) for p in s.inner.parameters())
    trainable = sum(p.numel() for p in s.inner.parameters() if p.requires_grad)
    hf = s.inner.config  # a pretrained base's own shape, not the config's model.* numbers
    layers = getattr(hf, "num_hidden_layers", None) or cfg.model.num_hidden_layers
    width = getattr(hf, "hidden_size", None) or cfg.model.hidden_size
    flops_tok = flops_per_token(*matmul_weights(s.inner), layers, width, cfg.train.sequence_length_tokens)
    peak = matmul_peak_flops(device, torch_dtype(s.precision)) * d.world_size
    where = f"{d.world_size} process(es) ({d.backend}, {s.wrapper})" if d.enabled else device.type
    shown = f"{s.precision} weights, fp32 master weights" if s.masters is not None else s.precision
    lora = cfg.model.lora
    if lora.enabled and lora.base_bits < 32:
        shown += {16: ", a bf16 base", 8: ", an LLM.int8 base", 4: ", an NF4 base"}[lora.base_bits]
    if cfg.train.optimizer != "adamw":
        shown += f", {cfg.train.optimizer}"
    log(f"training {n_params:,} parameters ({trainable:,} trainable) on {where}, {shown}, "
        f"micro-batch {s.micro} x {s.accum} accumulation steps" + (f" x {d.world_size} ranks" if d.enabled else ""))
    return flops_tok, peak


def _step_model(cfg: RunConfig, s: _Setup, state: TrainerState, d: Any, device: Any, log: Log) -> Any:
    """train.compile: the module the step calls (the model, or its compiled wrapper)."""
    import torch

    tc = cfg.train
    if tc.compile is False or s.dp is not None or not s.objective.compiles:
        if tc.compile == "auto" and s.dp is not None:
            log("compile: auto -> eager (privacy.dp's per-example gradient hooks)")
        elif tc.compile == "auto" and not s.objective.compiles:
            log(f"compile: auto -> eager (the {s.objective.name} objective trains eager)")
        return s.model
    if d.enabled and tc.compile is True:
        raise ConfigError("train.compile: true runs in one process here",
                          "compiling the DDP / FSDP-wrapped model is not supported yet",
                          "set train.compile: false (or auto, which trains such runs eager)")
    if d.enabled:
        log("compile: auto -> eager (several processes)")
        return s.model
    from llmkit.training.compiled import prepare as prepare_compile

    first = {k: torch.from_numpy(v).to(device) for k, v in s.data.eval_batches()[0].items()}

    def dry_loss(m: Any, b: dict[str, Any]) -> Any:
        with autocast(device, s.precision):
            return s.objective.loss(m, b, s.chunked)[0]

    remaining = None if s.total_steps is None else s.total_steps - state.step
    return prepare_compile(tc.compile, s.model, first, dry_loss, remaining, s.accum, log)


def _loop(cfg: RunConfig, s: _Setup, step_model: Any, state: TrainerState, run: RunDir,
          metrics: MetricsWriter | None, d: Any, device: Any, flops_tok: float, peak: float,
          stop_at_step: int | None, bar: bool | None, log: Log) -> tuple[EndReason, float | None, Any, int]:
    """Optimizer steps until the budget is spent, a stop step or a signal; evaluations and
    checkpoints on their schedules. Returns (why it ended, last loss, last evaluation, exit code)."""
    from llmkit.training import distributed as dist_

    tc = cfg.train
    remote = remote_for(tc.checkpoint_uri)
    last_saved, last_loss, last_eval, eval_step = state.step, None, None, -1
    reason: EndReason = "completed"
    progress = Progress(s.total_steps, state.step, log, every=tc.log_every_steps,
                        interactive=bar if d.is_main else False)
    with StopSignals() as signals, progress:
        if tc.eval_at_start and state.step == 0:
            last_eval, eval_step = _evaluate(s, 0, metrics), 0
            progress.note("step 0: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.metrics().items()))
        while not _budget_spent(tc, state, s.total_steps):
            if stop_at_step is not None and state.step >= stop_at_step:
                reason = "stop_at_step"
                break
            t0 = time.perf_counter()
            lr = lr_at(state.step, tc, s.total_steps)
            for group in s.optimizer.param_groups:
                group["lr"] = lr
            step_loss, step_tokens, grad_norm, stats = _step(s, step_model, tc, state, last_saved, device, log)
            state.step += 1
            state.tokens_seen += step_tokens
            # every rank stops after the same step and counts the same time (the slowest rank's)
            dt, stop = dist_.all_reduce([time.perf_counter() - t0, float(signals.received is not None)], "max")
            state.train_time_s += dt
            last_loss = step_loss
            record = {**_train_record(s, state, step_loss, lr, grad_norm, step_tokens / dt, flops_tok, peak), **stats}
            progress.update(state.step, record)
            if metrics is not None and state.step % tc.log_every_steps == 0:
                metrics.write(record)
            if state.step % tc.eval_every_steps == 0:
                last_eval, eval_step = _evaluate(s, state.step, metrics), state.step
                progress.note(f"step {state.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in last_eval.metrics().items()))
            if state.step % tc.checkpoint_every_steps == 0:
                _save(run, tc.keep_last, remote, s.model, s.optimizer, s.scaler, s.data, state, d, log, s.masters)
                last_saved = state.step
            if stop:
                reason = "signal"
                break
        if state.step != last_saved:
            _save(run, tc.keep_last, remote, s.model, s.optimizer, s.scaler, s.data, state, d, log, s.masters)
    if reason == "completed" and eval_step != state.step:
        last_eval = _evaluate(s, state.step, metrics)
    exit_code = (signals.exit_code or 143) if reason == "signal" else 0
    if reason == "signal":
        log(f"stopped by {signals.received.name if signals.received else 'a signal to another rank'} after step "
            f"{state.step}; checkpoint saved; resume with --resume auto")
    return reason, last_loss, last_eval, exit_code


def _step(s: _Setup, step_model: Any, tc: TrainConfig, state: TrainerState, last_saved: int, device: Any,
          log: Log) -> tuple[float, int, float, dict[str, float]]:
    """One optimizer step: (its mean loss, its tokens, the gradient norm, the objective's step metrics)."""
    import torch

    from llmkit.training import distributed as dist_

    if s.dp is not None:
        step_loss, step_tokens, _ = s.dp.accumulate(state.step + 1)
        fault_point("step")
        if not math.isfinite(step_loss):
            s.dp.discard()
        _apply_update(s.dp.optimizer, None, step_loss, 0.0, tc, state, last_saved, log)  # noise, then AdamW
        state.dp = s.dp.state_dict()
        return step_loss, step_tokens, s.dp.last_grad_norm, {}  # of the clipped, noised, averaged gradient
    step_loss, step_tokens, stats = _accumulate_gradients(step_model, s, device, state.step + 1)
    fault_point("step")
    if s.scaler is not None:
        s.scaler.unscale_(s.optimizer)
    if s.masters is not None:
        s.masters.grads_to_masters()
    updated = s.masters.masters if s.masters is not None else [p for p in s.model.parameters() if p.requires_grad]
    grad_norm = float(dist_.local_value(torch.nn.utils.clip_grad_norm_(updated, tc.grad_clip_norm or float("inf"))))
    _apply_update(s.optimizer, s.scaler, step_loss, grad_norm, tc, state, last_saved, log)
    if s.masters is not None:
        s.masters.masters_to_model()
    return step_loss, step_tokens, grad_norm, stats


def _train_record(s: _Setup, state: TrainerState, loss: float, lr: float, grad_norm: float, tok_s: float,
                  flops_tok: float, peak: float) -> dict[str, Any]:
    """The metrics.jsonl record of a training step."""
    record = {"kind": "train", "step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
              "tokens": state.tokens_seen, "tokens_per_s": tok_s, "mfu": tok_s * flops_tok / peak,
              "elapsed_s": state.train_time_s}
    if s.dp is not None:
        record["epsilon"] = state.dp["epsilon"] if state.dp else 0.0
        record["delta"] = s.dp.setup.delta
    return record


def _save(run: RunDir, keep_last: int, remote: RemoteCheckpoints | None, model: Any, optimizer: Any, scaler: Any,
          data: Any, state: TrainerState, d: Any, log: Log, masters: Any = None) -> None:
    """Commit a checkpoint of the current step: one process writes the flat layout, many the sharded
    one (every rank at once); then rank 0 applies retention and uploads it to ``train.checkpoint_uri``.
    Refuses to save NaN/inf."""
    import torch

    from llmkit.training import distributed as dist_

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


def _real_tokens(batch: dict[str, Any]) -> int:
    """Tokens of a micro-batch that are not padding (packed rows: those in an example)."""
    if "segments" in batch:
        return int((batch["segments"] != 0).sum())
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].size)


def _gather_final(cfg: RunConfig, model: Any, inner: Any, wrapper: str, data: Any, d: Any) -> Any:
    """The trained model as one plain module on rank 0 (FSDP: the shards gathered into a fresh copy)."""
    if wrapper != "fsdp":
        return inner
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from llmkit.training.build import build_for_training

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


def _accumulate_gradients(model: Any, s: _Setup, device: Any, step: int) -> tuple[float, int, dict[str, float]]:
    """Forward and backward over this rank's ``s.accum`` micro-batches. The gradient is that of the
    mean loss over every term of the global batch (all ranks: the objective's ``loss_weight``), so
    it does not depend on how the batch is split. Returns (that mean loss, the tokens of the step
    over all ranks, padding excluded, the objective's step metrics over all ranks)."""
    import torch

    from llmkit.training import distributed as dist_

    batches = [s.data.next_micro_batch() for _ in range(s.accum)]
    counts = [s.objective.loss_weight(b) for b in batches]
    tokens = sum(_real_tokens(b) for b in batches)
    total, all_tokens = dist_.all_reduce([float(sum(counts)), float(tokens)])
    world = dist_.world_size()
    loss_sum = 0.0
    sums: dict[str, list[float]] = {}
    for i, np_batch in enumerate(batches):
        batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in np_batch.items()}
        with dist_.no_grad_sync(model, sync=i == s.accum - 1):
            with autocast(device, s.precision):
                loss, _, out = s.objective.loss(model, batch, s.chunked)
            for name, (num, den) in s.objective.step_metrics(out).items():
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + num, acc[1] + den
            del out
            if nan_loss_at(step):
                loss = loss * float("nan")
            # DDP and FSDP average the ranks' gradients: the world size turns that mean into the sum
            scaled = loss * (counts[i] * world / max(total, 1.0))
            (s.scaler.scale(scaled) if s.scaler is not None else scaled).backward()
        loss_sum += float(loss.detach()) * counts[i]
    names = sorted(sums)
    reduced = dist_.all_reduce([loss_sum, *(v for n in names for v in sums[n])])
    stats = {n: reduced[1 + 2 * k] / reduced[2 + 2 * k] for k, n in enumerate(names) if reduced[2 + 2 * k]}
    return reduced[0] / max(total, 1.0), int(all_tokens), stats


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


def _evaluate(s: _Setup, step: int, metrics: MetricsWriter | None) -> EvalResult:
    """Evaluate on the fixed validation batches (every rank evaluates them all: FSDP needs every
    rank in each forward) and log the result at ``step``."""
    result = evaluate(s.model, s.data.eval_batches(), s.objective, s.objective.metrics(s.data), s.precision,
                      chunked=s.chunked)
    if metrics is not None:
        metrics.write({"kind": "eval", "step": step, **result.metrics()})
    return result
