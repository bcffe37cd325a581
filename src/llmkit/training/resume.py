"""Where a run starts: the newest committed checkpoint that verifies, restored into the model,
optimizer, data position, RNGs, loss scaler and counters (either layout, written by any number
of ranks), or a fresh state; a checkpoint made with another config or other data is refused
unless allowed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.rundir import RunDir
from llmkit.training import checkpoint as ckpt
from llmkit.training import setup
from llmkit.training.checkpoint import TrainerState
from llmkit.training.remote import remote_for, sync_for_resume
from llmkit.version import __version__

Log = Callable[[str], None]


def _quiet(_line: str) -> None:
    """The log of ranks other than 0."""


def resume_state(cfg: RunConfig, s: Any, run: RunDir, resume: str, allow_config_change: bool, d: Any,
            log: Log) -> tuple[TrainerState, ckpt.Checkpoint | None]:
    """The newest committed checkpoint that verifies, restored; or a fresh state."""
    import torch

    from llmkit.training import distributed as dist_

    if d.local_rank == 0:
        for partial in ckpt.remove_partial(run.checkpoints):
            log(f"removed partial checkpoint {partial.name} (left by an interrupted save)")
    dist_.barrier(d)
    state = TrainerState(step=0, tokens_seen=0, train_time_s=0.0, nonfinite_skipped=0,
                         config=cfg.model_dump(mode="json"), data=s.data.fingerprint, data_position={},
                         param_groups=[], scaler=None, llmkit_version=__version__)
    remote = remote_for(cfg.train.checkpoint_uri)
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
        _restore(found, s.model, s.inner, s.optimizer, s.data, s.scaler, state, d)
        if s.masters is not None:
            s.masters.load(found.tensors)
        if s.dp is not None:
            s.dp.load_state_dict(found.state.dp)
            state.dp = found.state.dp
        log(f"resumed from {found.path} (step {state.step})")
    else:
        torch.manual_seed(cfg.train.seed + d.rank)  # dropout: its own stream per rank
    return state, found


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
    from llmkit.training import distributed as dist_

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
