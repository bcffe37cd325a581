"""Many processes, one run: torch.distributed set-up, DDP / FSDP2 wrapping, and the checks that
what runs is what the config asked for.

llmkit has no engine of its own here. ``llmkit train --nproc-per-node N`` starts torchrun's
elastic agent (``torch.distributed.run``), which starts N copies of ``llmkit train``; each calls
:func:`init` and finds its rank in the environment torchrun sets. ``train.distributed`` picks the
wrapper: DDP (every rank holds the whole model, gradients are all-reduced) or FSDP2
(``fully_shard`` per transformer block, then the root: parameters, gradients and optimizer
state are sharded). Without torchrun, ``ddp`` and ``fsdp`` still wrap the model, in a
one-process group, so the config means the same thing everywhere; ``auto`` without torchrun is
today's plain single-process loop.

The global batch, the learning-rate schedule and the order of the examples do not depend on the
world size: each rank takes its own share of every global batch (``llmkit.data.batches``), and
the loss of a step is the mean over every labelled position of the global batch, whichever rank
computed it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError, RunFailure, UsageError

Wrapper = Literal["none", "ddp", "fsdp"]

COLLECTIVE_TIMEOUT_S = float(os.environ.get("LLMKIT_COLLECTIVE_TIMEOUT_S", "600"))
"""A rank that waits this long in a collective fails (instead of hanging when another rank died)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    """'gloo' or 'nccl' when a process group is up; None for plain single-process training."""
    restart: int = 0
    """How often torchrun's agent has restarted the workers (TORCHELASTIC_RESTART_COUNT)."""

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets the same variables) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init(cfg: RunConfig, device: Any) -> Dist:
    """Join the process group torchrun describes (or a one-process group when the config asks for a
    wrapper outside torchrun); plain single-process training returns ``Dist()``.

    On a CPU each rank takes cores / ranks-on-this-node threads; on GPUs rank r uses cuda:<local rank>.
    """
    import torch
    import torch.distributed as dist

    wanted = cfg.train.distributed
    if not under_torchrun():
        if wanted == "auto":
            return Dist()
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        return Dist(backend=dist.get_backend())
    env = os.environ
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"rank {env.get('RANK')} wants GPU {local_rank} but this node has "
                             f"{torch.cuda.device_count()}", "torchrun starts one process per GPU",
                             f"use --nproc-per-node {torch.cuda.device_count()} or less")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    restart = int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if not dist.is_initialized():
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
        # a restarted group shares the agent's store with the attempt before it: without a prefix of
        # its own, gloo can read a dead worker's address from the last attempt and hang
        store = dist.PrefixStore(f"llmkit/attempt-{restart}/", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=timeout)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                local_world_size=local_world, backend=dist.get_backend(), restart=restart)


def rank_device(device: Any, d: Dist) -> Any:
    """The device this rank trains on."""
    import torch

    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.enabled else device


def close(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def choose_wrapper(cfg: RunConfig, d: Dist, budget_bytes: int, precision: str, device_kind: str) -> Wrapper:
    """The wrapper ``train.distributed`` asks for: under ``auto``, FSDP when the plan's memory model
    says one device cannot hold the whole training state (``llmkit.planning.memory.shards``), else DDP."""
    from llmkit.planning.memory import shards

    if not d.enabled:
        return "none"
    return "fsdp" if shards(cfg, d.world_size, budget_bytes, precision, device_kind) else "ddp"


def transformer_blocks(model: Any) -> list[Any]:
    """The model's repeated blocks (the classes Hugging Face lists in ``_no_split_modules``)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def wrap(model: Any, wrapper: Wrapper, d: Dist, precision: str, device: Any) -> Any:
    """DDP or FSDP2 around ``model`` (already on its device); 'none' returns it as it is."""
    import torch

    if wrapper == "none":
        return model
    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [d.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision == "fp16":
        raise ConfigError("train.distributed: fsdp with fp16 is not supported",
                          "FSDP2 needs a sharded loss scaler for fp16, which llmkit does not build",
                          "use train.precision: bf16 (or fp32), or train.distributed: ddp")
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"train.distributed: fsdp cannot shard {type(model).__name__}",
                          "it names no repeated transformer block (_no_split_modules) to shard one by one",
                          "use train.distributed: ddp")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16" else MixedPrecisionPolicy()
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def wrapper_of(model: Any) -> Wrapper:
    """What actually wraps ``model``: checked after set-up, never assumed."""
    from torch.distributed.fsdp import FSDPModule

    if type(model).__name__ == "DistributedDataParallel":
        return "ddp"
    if isinstance(model, FSDPModule):
        return "fsdp"
    return "none"


def config_hash(cfg: RunConfig) -> str:
    """What every rank must agree on: the whole config but ``runs_root`` (each node may keep its run
    directory on its own disk when checkpoints go to a bucket)."""
    dump = cfg.model_dump(mode="json")
    dump.pop("runs_root")
    return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]


def check_setup(cfg: RunConfig, d: Dist, model: Any, wanted: Wrapper) -> None:
    """Refuse to start unless every rank runs the same config, world size, backend and wrapper, and
    the wrapper is the one asked for (no silent fall-back to N independent runs or to DDP)."""
    import torch.distributed as dist

    from llmkit.version import __version__

    actual = wrapper_of(model)
    if actual != wanted:
        raise RunFailure(f"the model is wrapped in {actual}, not {wanted} as train.distributed asks",
                         "a wrapper was lost during set-up", "report this as a bug")
    if not d.enabled:
        return
    mine = {"config": config_hash(cfg), "world_size": dist.get_world_size(), "backend": dist.get_backend(),
            "wrapper": actual, "llmkit": __version__}
    everyone: list[Any] = [None] * d.world_size
    dist.all_gather_object(everyone, mine)
    for key in mine:
        values = {r: e[key] for r, e in enumerate(everyone)}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"rank {r}: {v}" for r, v in values.items())
            raise UsageError(f"the ranks disagree on {key}; refusing to start", listing,
                                  "start every rank with the same config file and --set values, and the "
                                  "same llmkit version")


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """Sum (or max) ``values`` over the ranks; the values themselves when not distributed."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return [float(v) for v in t.cpu()]


def no_grad_sync(model: Any, sync: bool) -> Any:
    """A context in which backward does not all-reduce / reduce-scatter (all micro-batches of a step
    but the last): the gradients are the same, with one exchange per step instead of one per micro-batch."""
    kind = wrapper_of(model)
    if sync or kind == "none":
        return contextlib.nullcontext()
    if kind == "ddp":
        return model.no_sync()

    @contextlib.contextmanager
    def fsdp_no_sync() -> Any:
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)

    return fsdp_no_sync()


def local_value(x: Any) -> Any:
    """A full tensor from a DTensor (FSDP2's gradient norm), or ``x`` itself."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def world_size() -> int:
    """Ranks in the process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled and dist.is_initialized() and d.world_size > 1:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
