"""`llmkit train --nproc-per-node N`: torchrun's elastic agent, started in this process.

The agent (``torch.distributed.run``) starts N workers (``python -m llmkit train ...``), restarts
the whole group up to ``--max-restarts`` times when one dies (each restart resumes from the newest
committed checkpoint), and on SIGTERM passes the signal to the workers, which checkpoint and exit
143. One node: a private c10d rendezvous on a free local port. Several: c10d at ``--rdzv-endpoint``
on every node.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from llmkit.errors import RunFailure, UsageError


def torchrun_args(nproc_per_node: int, nnodes: int, node_rank: int | None, rdzv_endpoint: str | None,
                  max_restarts: int, stop_timeout_s: int, run_id: str, worker_args: list[str]) -> list[str]:
    """The torchrun command line (without ``torchrun``) for these options."""
    if nnodes > 1 and not rdzv_endpoint:
        raise UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT",
                         "the nodes meet at one rendezvous address", "pass the first node's address, e.g. "
                         "--rdzv-endpoint node0:29400, on every node")
    if node_rank is not None and not 0 <= node_rank < nnodes:
        raise UsageError(f"--node-rank {node_rank} is outside 0..{nnodes - 1}", "", "number the nodes from 0")
    args = [f"--nproc-per-node={nproc_per_node}", f"--nnodes={nnodes}", f"--max-restarts={max_restarts}",
            f"--shutdown-timeout={stop_timeout_s}"]
    if rdzv_endpoint:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={run_id}"]
        if node_rank is not None:
            args.append(f"--node-rank={node_rank}")
    else:
        args.append("--standalone")
    return [*args, "-m", "llmkit", *worker_args]


def threads_per_rank(nproc_per_node: int, log: Callable[[str], None]) -> int:
    """CPU threads each worker gets (cores / workers on this node); warns when workers outnumber cores."""
    cores = os.cpu_count() or 1
    if nproc_per_node > cores:
        log(f"warning: {nproc_per_node} processes on {cores} CPU cores: they will share cores and run slower "
            f"than {cores}; use --nproc-per-node {cores} or less on a CPU")
    return max(1, cores // nproc_per_node)


def run_agent(args: list[str], uses_cpu: bool, nproc_per_node: int, log: Callable[[str], None]) -> int:
    """Run torchrun's agent with ``args``; returns the exit code (143 after SIGTERM).

    A failure is reported once: rank 0 prints its own errors; another rank's error (which it wrote
    to the error file torchrun gives each worker) is printed here, with its rank, when rank 0 did
    not fail itself.
    """
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # the agent's own logging repeats what we print
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import get_args_parser, run

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if uses_cpu:
        os.environ["OMP_NUM_THREADS"] = str(threads_per_rank(nproc_per_node, log))
    try:
        run(get_args_parser().parse_args(args))
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items(), key=_root_cause_first)
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if code in (143, 130):  # the workers were told to stop and saved a checkpoint
            return code
        if rank == 0 and code in (1, 2, 3):
            return code  # rank 0 printed its own error
        if failure.exitcode < 0:
            raise RunFailure(f"rank {rank} was killed by {signal.Signals(-failure.exitcode).name}",
                             "the other ranks were stopped; committed checkpoints are intact",
                             "find what killed it (out of memory?), then run the same command: training "
                             "resumes from the newest checkpoint; --max-restarts N restarts by itself") from None
        recorded = isinstance(failure.message, str) and not failure.message.startswith("To ")
        if recorded and code in (1, 2, 3):  # an llmkit error this rank recorded instead of printing
            sys.stderr.write(f"[rank {rank}] error: {failure.message}\n")
            return code
        raise RunFailure(f"rank {rank} exited with code {code}", "its output is above; the other ranks were "
                         "stopped", "fix the cause, then run the same command: training resumes from the newest "
                         "checkpoint") from None
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except RendezvousError as exc:
        endpoint = next((a.split("=", 1)[1] for a in args if a.startswith("--rdzv-endpoint=")), "this node")
        raise RunFailure(f"lost the rendezvous at {endpoint}", f"{type(exc).__name__}: the node that hosts it "
                         "stopped (see its output: a failed rank ends the whole job) or cannot be reached",
                         "fix what the first node reports, then start every node again") from None
    return 0


LOST_PEER = "lost contact with another rank"


def _root_cause_first(item: tuple[int, Any]) -> tuple[int, int]:
    """Sort key of (rank, failure): a rank killed by a signal, then one that failed on its own, then
    ranks that only stopped because of another (told to stop, or a peer went away); lowest rank first."""
    rank, failure = item
    code, message = failure.exitcode, failure.message if isinstance(failure.message, str) else ""
    if code < 0 and -code not in (signal.SIGTERM, signal.SIGINT):
        return (0, rank)
    if code not in (-signal.SIGTERM, -signal.SIGINT, 130, 143) and LOST_PEER not in message:
        return (1, rank)
    return (2, rank)


def report_worker_error(rendered: str) -> bool:
    """In a torchrun worker: record ``rendered`` in the error file torchrun reads back, and say whether
    this rank should print it too (rank 0 only: the agent prints the others')."""
    import json
    import time

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump({"message": rendered.removeprefix("error: "), "timestamp": int(time.time())}, fh)
        except OSError:
            return True
    if path and os.environ.get("RANK", "0") != "0":
        # when every rank fails alike, rank 0's own report must reach the agent first
        time.sleep(2.0)
        return False
    return True
