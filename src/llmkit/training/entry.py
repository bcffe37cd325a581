"""`llmkit train`'s entry points: one process (:func:`train`, the loop itself), or N processes
on this node under torchrun's elastic agent (:func:`train_with_agent`), whose workers each run
`llmkit train` again and so :func:`train`."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from llmkit.config.schema import RunConfig
from llmkit.errors import UsageError
from llmkit.training import distributed
from llmkit.training.loop import TrainResult, train

__all__ = ["TrainResult", "train", "train_with_agent", "check_agent_options", "reports"]


def check_agent_options(nproc_per_node: int | None, agent_options: bool) -> None:
    """Refuse agent options without ``--nproc-per-node``, and an agent inside a torchrun worker."""
    if nproc_per_node is None and agent_options:
        raise UsageError("--nnodes, --node-rank, --rdzv-endpoint, --max-restarts and --stop-timeout need "
                         "--nproc-per-node",
                         "they configure torchrun's agent, which --nproc-per-node starts",
                         "add --nproc-per-node N (processes on this node)")
    if nproc_per_node is not None and distributed.under_torchrun():
        raise UsageError("--nproc-per-node was given to a process that torchrun started",
                         "the processes would each start N more", "drop --nproc-per-node when you use torchrun")


def train_with_agent(cfg: RunConfig, worker: Sequence[str], nproc_per_node: int, nnodes: int = 1,
                     node_rank: int | None = None, rdzv_endpoint: str | None = None, max_restarts: int = 0,
                     stop_timeout: int = 300, log: Callable[[str], None] = print) -> int:
    """Run ``llmkit <worker...>`` in ``nproc_per_node`` processes under torchrun's elastic agent;
    returns the agent's exit code. The global batch must split over every rank (checked first)."""
    from llmkit.device import resolve_device
    from llmkit.training.elastic import run_agent, torchrun_args
    from llmkit.training.setup import check_split

    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's store chatter when a peer leaves
    if isinstance(cfg.train.micro_batch_size, int):  # fail here, before starting any worker
        check_split(cfg.train.global_batch_size, cfg.train.micro_batch_size, nproc_per_node * nnodes)
    args = torchrun_args(nproc_per_node, nnodes, node_rank, rdzv_endpoint, max_restarts, stop_timeout, cfg.name,
                         list(worker))
    return run_agent(args, resolve_device(cfg.train.device).type == "cpu", nproc_per_node, log)


def reports() -> bool:
    """Whether this process reports the run's outcome: one process, or rank 0 of torchrun's."""
    return not distributed.under_torchrun() or os.environ.get("RANK", "0") == "0"
