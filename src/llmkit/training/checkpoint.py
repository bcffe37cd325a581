"""Checkpoints that survive kills, full disks and bit rot.

Two layouts of ``checkpoints/step-000200/``, one set of commit rules:

- one process: ``model.safetensors`` (trainable parameters), ``optimizer.safetensors`` (AdamW
  moments), ``trainer_state.json``, ``rng.json`` and ``checksums.json`` (sha256 of each);
- many processes (torchrun): ``dcp/``, the model and optimizer state as
  ``torch.distributed.checkpoint`` writes it (every rank writes its own shards; a load with another
  world size reshards), with ``trainer_state.json``, ``rng.json`` (one state per rank) and
  ``checksums.json`` (every file, ``dcp/`` included).

A save writes into ``checkpoints/.tmp-step-...``, fsyncs every file, renames the folder into
place, and only then writes the ``COMMITTED`` marker (also fsynced); with many ranks, every rank
writes, then rank 0 checks that every shard is there, and commits. Anything without
``COMMITTED`` is partial: never loaded, removed at the next start. Retention deletes old
checkpoints only after a newer one has committed. Either layout resumes in one process or many.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import RunFailure, UsageError
from llmkit.fsutil import fsync_dir, sha256_file
from llmkit.faults import fault_point
from llmkit.privacy import crypto

COMMITTED = "COMMITTED"
_STEP_DIR = re.compile(r"^step-(\d+)$")
FILES = ("model.safetensors", "optimizer.safetensors", "trainer_state.json", "rng.json")


class ChecksumError(UsageError):
    """A committed checkpoint's file does not match its recorded sha256."""


@dataclass
class TrainerState:
    """Everything besides tensors and RNG that a resumed run needs (trainer_state.json)."""

    step: int
    """Optimizer steps done."""
    tokens_seen: int
    """Training tokens consumed (padding excluded)."""
    train_time_s: float
    """Seconds spent in training steps, over every session of the run."""
    nonfinite_skipped: int
    """Steps whose update was skipped for a NaN/inf (train.nonfinite: skip)."""
    config: dict[str, Any]
    """The resolved config the run trained with (compared on resume)."""
    data: dict[str, Any]
    """Fingerprint of the prepared data (compared on resume)."""
    data_position: dict[str, Any]
    """The batch provider's position, so no example is skipped or repeated."""
    param_groups: list[dict[str, Any]]
    """AdamW's param groups (hyper-parameters and parameter indices)."""
    scaler: dict[str, Any] | None
    """fp16 loss-scaler state (None unless train.precision is fp16)."""
    llmkit_version: str
    """The llmkit that wrote the checkpoint."""
    dp: dict[str, Any] | None = None
    """privacy.dp's accountant (its history of noise and sampling rate per step) and epsilon spent."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any, path: Path) -> TrainerState:
        """The state of ``trainer_state.json``; a missing or unknown key is a clear error, not a default."""
        names = {f.name for f in dataclasses.fields(cls)}
        keys = set(obj) if isinstance(obj, dict) else set()
        if keys | {"dp"} == names and "dp" not in keys:  # written before privacy.dp existed
            obj, keys = {**obj, "dp": None}, keys | {"dp"}
        if keys != names:
            raise ChecksumError(f"{path} is not a trainer state this llmkit can resume",
                                f"missing: {', '.join(sorted(names - keys)) or '-'}; "
                                f"unknown: {', '.join(sorted(keys - names)) or '-'}",
                                "resume with the llmkit version that wrote it, or start a new run")
        return cls(**obj)


@dataclass
class Checkpoint:
    """One verified checkpoint as read back."""

    path: Path
    tensors: dict[str, Any] | None
    """The trainable parameters (one-process layout; None for a sharded one: see load_sharded)."""
    optimizer_tensors: dict[str, Any] | None
    state: TrainerState
    rng: dict[str, Any] | list[dict[str, Any]]
    """The RNG state, or one per rank (sharded layout)."""

    @property
    def sharded(self) -> bool:
        return self.tensors is None


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def committed(root: Path) -> list[tuple[int, Path]]:
    """Committed checkpoints, oldest first (numeric sort: step-9 < step-10 < step-100)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / COMMITTED).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def remove_partial(root: Path) -> list[Path]:
    """Delete temp folders and step folders without COMMITTED (left by a crash mid-save)."""
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            partial = p.name.startswith(".tmp-") or (_STEP_DIR.match(p.name) and not (p / COMMITTED).exists())
            if partial and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def apply_retention(root: Path, keep_last: int) -> list[Path]:
    """Keep the newest ``keep_last`` committed checkpoints; delete older ones."""
    ckpts = committed(root)
    doomed = [p for _, p in ckpts[: max(0, len(ckpts) - keep_last)]]
    for p in doomed:
        fault_point("save")
        (p / COMMITTED).unlink(missing_ok=True)  # uncommit first: a half-deleted dir is partial
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def _write(path: Path, writer: Callable[[Path], None]) -> None:
    writer(path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    fault_point("save")


def _write_json(path: Path, obj: Any) -> None:
    _write(path, lambda p: p.write_text(json.dumps(obj, indent=2), encoding="utf-8"))


def _commit(tmp: Path, final: Path, step: int) -> None:
    """Rename the fully written (and fsynced) ``tmp`` into place, then write COMMITTED."""
    if final.exists():  # an uncommitted leftover of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    fault_point("save")
    _write(final / COMMITTED, lambda p: p.write_text(f"{step}\n"))
    fsync_dir(final)


def save_checkpoint(root: Path, tensors: dict[str, Any], optimizer_tensors: dict[str, Any],
                    trainer_state: TrainerState, rng: dict[str, Any]) -> Path:
    """Write one checkpoint of ``trainer_state.step`` atomically; returns its committed folder."""
    from safetensors.torch import save_file

    step = trainer_state.step
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    needed = sum(t.numel() * t.element_size() for t in [*tensors.values(), *optimizer_tensors.values()])
    try:
        tmp.mkdir()
        if crypto.active() is not None:  # privacy.encryption_key_env: both tensor files sealed
            from safetensors.torch import save

            _write(tmp / "model.safetensors", lambda p: crypto.write_bytes(p, save(tensors)))
            _write(tmp / "optimizer.safetensors", lambda p: crypto.write_bytes(p, save(optimizer_tensors)))
        else:
            _write(tmp / "model.safetensors", lambda p: save_file(tensors, str(p)))
            _write(tmp / "optimizer.safetensors", lambda p: save_file(optimizer_tensors, str(p)))
        _write_json(tmp / "trainer_state.json", trainer_state.to_json())
        _write_json(tmp / "rng.json", rng)
        _write_json(tmp / "checksums.json", {name: sha256_file(tmp / name) for name in FILES})
        fsync_dir(tmp)
        _commit(tmp, final, step)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists() and not (final / COMMITTED).exists():
            shutil.rmtree(final, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise RunFailure(
                f"disk full while saving the step-{step} checkpoint in {root}",
                f"a checkpoint needs about {needed / 2**20:.1f} MiB; earlier checkpoints are untouched",
                "free disk space (or lower train.keep_last), then resume with --resume auto",
            ) from None
        raise RunFailure(f"cannot save the step-{step} checkpoint in {root}: {exc.strerror or exc}",
                         "earlier checkpoints are untouched", "fix the problem, then resume") from None
    return final


def verify(path: Path) -> None:
    """Raise ChecksumError unless every file matches checksums.json."""
    try:
        sums = json.loads((path / "checksums.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ChecksumError(f"{path / 'checksums.json'} is unreadable", str(exc)[:200],
                            "this checkpoint is damaged; an older one will be used") from None
    names = list(sums) if (path / "dcp").is_dir() else list(FILES)
    if (path / "dcp").is_dir() and not {"dcp/.metadata", "trainer_state.json", "rng.json"} <= set(names):
        raise ChecksumError(f"{path / 'checksums.json'} does not list the checkpoint's files",
                            "it was written incompletely", "this checkpoint is damaged; an older one will be used")
    for name in names:
        f = path / name
        if not f.exists() or sha256_file(f) != sums.get(name):
            raise ChecksumError(f"checksum mismatch in {f}", "the file changed after it was committed "
                                "(disk error, truncation or an edit)", "this checkpoint is damaged; an older "
                                "one will be used")


def read_checkpoint(path: Path, check: bool = True) -> Checkpoint:
    """One checkpoint, verified against its checksums (``check=False``: another rank verified it)."""
    if check:
        verify(path)
    state_file = path / "trainer_state.json"
    state = TrainerState.from_json(json.loads(state_file.read_text(encoding="utf-8")), state_file)
    rng = json.loads((path / "rng.json").read_text(encoding="utf-8"))
    if (path / "dcp").is_dir():
        return Checkpoint(path, None, None, state, rng)
    return Checkpoint(path, _load_tensors(path / "model.safetensors"), _load_tensors(path / "optimizer.safetensors"),
                      state, rng)


def _load_tensors(path: Path) -> dict[str, Any]:
    """A safetensors file, decrypted first when sealed (a wrong or missing key raises SealError, which
    is not damage: `newest_valid` does not fall back past it)."""
    from safetensors.torch import load_file

    if crypto.is_sealed(path):
        return crypto.load_safetensors(path)
    return load_file(str(path))


def newest_valid(root: Path, log: Callable[[str], None]) -> Checkpoint | None:
    """The newest committed checkpoint that verifies, falling back (and saying so) past damaged ones."""
    for step, path in reversed(committed(root)):
        try:
            return read_checkpoint(path)
        except ChecksumError as exc:
            log(f"warning: checkpoint step {step} is damaged ({exc.summary}); falling back to an older one")
    return None


# --- the sharded layout (torch.distributed.checkpoint) -------------------------------------------


def _state_dicts(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimizer state keyed by parameter name, whatever wraps the model (frozen
    parameters left out: a LoRA checkpoint holds the adapters)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))


def _agree(error: BaseException | None) -> None:
    """Rank 0 tells every rank whether its part of a save failed; all raise together (none waits
    forever on a rank that gave up)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if error is not None:
            raise error
        return
    box = [None if error is None else str(error)]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is not None:
        raise RunFailure("rank 0 could not commit the checkpoint", box[0].splitlines()[0],
                         "see rank 0's message")


def _shard_files(dcp_dir: Path) -> list[str]:
    """The shard files the checkpoint's metadata refers to."""
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(str(dcp_dir)).read_metadata()
    return sorted({getattr(v, "relative_path", "") for v in (meta.storage_data or {}).values()} - {""})


def save_sharded(root: Path, model: Any, optimizer: Any, trainer_state: TrainerState, rng: dict[str, Any],
                 rank: int, local_rank: int = 0, remote: Any = None) -> tuple[Path, bool]:
    """Every rank writes its shards into the temp folder (on each node: ``local_rank`` 0 prepares it).
    Then, when rank 0 sees every shard file the metadata names (one node, or a shared file system),
    it writes the state, checksums and COMMITTED as ``save_checkpoint`` does. When it does not
    (node-local disks), the checkpoint can only be committed in object storage: each rank uploads its
    own shards to ``remote`` (``llmkit.training.remote``), and rank 0 the rest and COMMITTED last, after
    checking that every file is there. Returns (the step folder, whether it was committed remotely
    instead of locally). Call on every rank at once."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    step = trainer_state.step
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    distributed = dist.is_initialized()
    error: BaseException | None = None
    if local_rank == 0:  # on a shared file system several nodes do this at once: no step may fail on that
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    if distributed:
        dist.barrier()
    model_sd, optim_sd = _state_dicts(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    except Exception as exc:  # noqa: BLE001 - DCP gathers every rank's failure into one exception
        raise RunFailure(f"cannot save the step-{step} checkpoint in {root}", str(exc).splitlines()[0][:300],
                         "earlier checkpoints are untouched; fix the problem (disk space?), then resume") from None
    fault_point("save")
    mine = sorted(f for f in (tmp / "dcp").iterdir()
                  if f.name.startswith(f"__{rank}_") or (rank == 0 and f.name == ".metadata"))
    sums = {f"dcp/{f.name}": sha256_file(f) for f in mine}
    gathered = _everyone((sums, rng))
    all_sums = {k: v for ranks_sums, _ in gathered for k, v in ranks_sums.items()}
    rngs = [r for _, r in gathered]
    shared = _everyone(all((tmp / "dcp" / f).exists() for f in _shard_files(tmp / "dcp")) if rank == 0 else None)[0]
    if not shared:
        if remote is None:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            _agree(RunFailure(f"the step-{step} checkpoint is missing shards on rank 0's disk",
                              "the ranks do not share this checkpoint folder (node-local disks)",
                              "put runs_root on storage every node sees, or set train.checkpoint_uri to a "
                              "bucket: each rank then uploads its own shards") if rank == 0 else None)
        _commit_remotely(remote, tmp, final.name, mine, trainer_state, rngs, all_sums, rank, local_rank)
        return final, True
    if rank == 0:
        try:
            # every rank hashed its own shards (in parallel); rank 0 hashes anything else DCP wrote
            unhashed = {f"dcp/{f.name}": sha256_file(f) for f in (tmp / "dcp").iterdir()
                        if f"dcp/{f.name}" not in all_sums}
            _write_state_files(tmp, trainer_state, rngs, {**all_sums, **unhashed})
            for sub in (tmp / "dcp", tmp):
                fsync_dir(sub)
            _commit(tmp, final, step)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            error = RunFailure(f"cannot commit the step-{step} checkpoint in {root}: {exc.strerror or exc}",
                               "earlier checkpoints are untouched", "fix the problem (disk space?), then resume")
    _agree(error)
    return final, False


def _write_state_files(tmp: Path, trainer_state: TrainerState, rngs: list[Any],
                       shard_sums: dict[str, str]) -> dict[str, str]:
    """trainer_state.json, rng.json and checksums.json (the shards' sums and theirs); returns the sums."""
    _write_json(tmp / "trainer_state.json", trainer_state.to_json())
    _write_json(tmp / "rng.json", rngs)
    sums = {**shard_sums, **{n: sha256_file(tmp / n) for n in ("trainer_state.json", "rng.json")}}
    _write_json(tmp / "checksums.json", sums)
    return sums


def _everyone(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _commit_remotely(remote: Any, tmp: Path, name: str, mine: list[Path], trainer_state: TrainerState,
                     rngs: list[Any], all_sums: dict[str, str], rank: int, local_rank: int) -> None:
    """Node-local disks: every rank uploads its shards; rank 0 the state and checksums, checks that
    every file is in the bucket, and writes COMMITTED last. Nothing is committed locally."""
    failed: str | None = None
    try:
        for f in mine:
            remote.put(f, f"{name}/dcp/{f.name}")
    except (OSError, RunFailure) as exc:
        failed = f"rank {rank}: {exc}"
    failures = [f for f in _everyone(failed) if f]
    error: BaseException | None = None
    if rank == 0:
        try:
            if failures:
                raise RunFailure(f"cannot upload {name}", failures[0].splitlines()[0], "check the bucket and the "
                                 "credentials on every node, then resume")
            sums = _write_state_files(tmp, trainer_state, rngs, all_sums)
            for n in ("trainer_state.json", "rng.json", "checksums.json"):
                remote.put(tmp / n, f"{name}/{n}")
            remote.commit(name, sorted(sums))
        except (OSError, RunFailure) as exc:
            error = exc if isinstance(exc, RunFailure) else RunFailure(f"cannot commit {name} remotely: {exc}")
    if local_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _agree(error)


def load_sharded(path: Path, model: Any, optimizer: Any) -> None:
    """Load a sharded checkpoint into the model and optimizer as they are wrapped now (any world
    size, or one process without a process group: DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    model_sd, optim_sd = _state_dicts(model, optimizer)
    try:
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path / "dcp"))
    except Exception as exc:  # noqa: BLE001 - a shape or key mismatch surfaces as a CheckpointException
        raise UsageError(f"{path.name} does not fit this model", str(exc).splitlines()[0][:300],
                         "resume with the model config the checkpoint was made with, or start a new run") from None
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(ignore_frozen_params=True))


def load_flat_into_wrapped(found: Checkpoint, model: Any, inner: Any, optimizer: Any) -> None:
    """A one-process checkpoint into a DDP- or FSDP-wrapped model (its first multi-process resume):
    the full tensors, keyed by name, are handed to DCP's state-dict API, which shards them."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    if found.tensors is None or found.optimizer_tensors is None:  # read_checkpoint(check=True) loads both
        raise RunFailure(f"{found.path} was read without its tensors", "a flat checkpoint resumes from its files",
                         "report this as a bug; the checkpoint is intact")
    full = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, found.tensors, options=full)
    names = {id(p): n for n, p in inner.named_parameters()}
    index_to_name: dict[int, str] = {}
    groups = []
    for saved, now in zip(found.state.param_groups, optimizer.param_groups):
        for idx, param in zip(saved["params"], now["params"]):
            index_to_name[int(idx)] = names[id(param)]
        groups.append({**saved, "params": [index_to_name[int(i)] for i in saved["params"]]})
    state: dict[str, dict[str, Any]] = {}
    for key, value in found.optimizer_tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(index_to_name[int(idx)], {})[name] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
