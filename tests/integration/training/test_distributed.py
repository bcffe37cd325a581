"""T10-T12 of RELIABILITY.md: many processes under torchrun (gloo, CPU), real processes and real
rendezvous on 127.0.0.1, against the same run in one process.

Every comparison prints the largest difference it saw (run with -s to read them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llmkit.config.load import load_config
from llmkit.training import checkpoint as ckpt
from llmkit.training.loop import train

from .helpers import llmkit, losses, make_run, tensors

pytestmark = pytest.mark.slow  # several processes under torchrun

STEPS = 20
TRAIN = {"max_steps": STEPS, "checkpoint_every_steps": 5, "eval_every_steps": 10, "keep_last": 5}
TOL = 1e-4


def one_process(root: Path, name: str = "one", **sections: Any) -> Path:
    cfg = make_run(root, name=name, train=TRAIN, **sections)
    result = train(load_config(cfg, environ={}), log=lambda _line: None)
    assert result.reason == "completed"
    return result.run_dir


def torchrun(cfg: Path, nproc: int, *extra: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return llmkit("train", "--config", str(cfg), "--nproc-per-node", str(nproc), *extra, env=env, timeout=timeout)


def max_diff(a: Path, b: Path, first_step: int = 1) -> tuple[float, float]:
    """(largest loss difference over the steps from ``first_step``, largest final-weight difference)."""
    la, lb = losses(a), losses(b)
    assert set(range(first_step, STEPS + 1)) <= set(la) & set(lb)
    loss = max(abs(la[s] - lb[s]) for s in range(first_step, STEPS + 1))
    wa, wb = tensors(a / "final" / "model.safetensors"), tensors(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    weights = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return loss, weights


def records(run: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-process run every multi-process run is compared with."""
    return one_process(tmp_path_factory.mktemp("one"))


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_t10_two_processes_match_one(tmp_path: Path, reference: Path, wrapper: str) -> None:
    cfg = make_run(tmp_path, name="two", train={**TRAIN, "distributed": wrapper})
    out = torchrun(cfg, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"on 2 process(es) (gloo, {wrapper})" in out.stdout and "micro-batch 2 x 1 accumulation steps" in out.stdout
    loss, weights = max_diff(tmp_path / "runs" / "two", reference)
    print(f"\n{wrapper}, 2 processes vs 1: largest loss difference {loss:.2e}, largest weight difference {weights:.2e}")
    assert loss < TOL and weights < TOL
    step_dir = ckpt.committed(tmp_path / "runs" / "two" / "checkpoints")[-1][1]
    assert sorted(p.name for p in (step_dir / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    ckpt.verify(step_dir)
    # only rank 0 speaks: one progress line per step, not two
    assert sum(line.startswith(f"step {STEPS}/{STEPS}") for line in out.stdout.splitlines()) == 1


def test_t10_lora_under_ddp_and_fsdp_matches_one_process(tmp_path: Path, reference: Path) -> None:
    base = {"model": {"from_pretrained": str(reference / "final"), "lora": {"enabled": True, "r": 4}}}
    one = one_process(tmp_path, name="lora1", **base)
    for wrapper in ("ddp", "fsdp"):
        cfg = make_run(tmp_path, name=f"lora-{wrapper}", train={**TRAIN, "distributed": wrapper}, **base)
        out = torchrun(cfg, 2)
        assert out.returncode == 0, out.stderr[-3000:]
        loss, weights = max_diff(tmp_path / "runs" / f"lora-{wrapper}", one)
        print(f"\nLoRA {wrapper}, 2 processes vs 1: largest loss difference {loss:.2e}, weights {weights:.2e}")
        assert loss < TOL and weights < TOL
        adapter = tensors(tmp_path / "runs" / f"lora-{wrapper}" / "final" / "adapter" / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter)


def test_t11_sharded_checkpoint_resumes_in_one_process(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "fsdp"})
    out = torchrun(cfg, 2, "--stop-at-step", "10")
    assert out.returncode == 0 and "stopped at step 10" in out.stdout, out.stderr[-3000:]
    # the same config, one plain process: DCP reshards the two ranks' shards into one model
    resumed = train(load_config(cfg, ["train.distributed=auto"], environ={}), log=lambda _line: None)
    assert resumed.step == STEPS
    loss, weights = max_diff(resumed.run_dir, reference, first_step=11)
    print(f"\n2 processes -> 1: largest loss difference {loss:.2e}, weights {weights:.2e}")
    assert loss < TOL and weights < TOL
    assert records(resumed.run_dir, "resume") == [{"kind": "resume", "step": 10, "world_size": 1, "restart": 0}]


def test_t11_one_process_checkpoint_resumes_in_two(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train=TRAIN)
    first = train(load_config(cfg, environ={}), stop_at_step=10, log=lambda _line: None)
    assert first.step == 10 and (ckpt.step_dir(first.run_dir / "checkpoints", 10) / "model.safetensors").exists()
    for wrapper in ("fsdp", "ddp"):
        run = tmp_path / "runs" / "t"
        out = torchrun(cfg, 2, "--set", f"train.distributed={wrapper}",
                       "--resume", str(ckpt.step_dir(run / "checkpoints", 10)))
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resumed from" in out.stdout and "step 10" in out.stdout
        loss, weights = max_diff(run, reference, first_step=11)
        print(f"\n1 process -> 2 ({wrapper}): largest loss difference {loss:.2e}, weights {weights:.2e}")
        assert loss < TOL and weights < TOL


def test_t12_killed_worker_restarts_from_the_last_checkpoint(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "ddp"})
    out = torchrun(cfg, 2, "--max-restarts", "1", env={"LLMKIT_FAULT": "step:kill@13", "LLMKIT_FAULT_RANK": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    assert records(run, "resume") == [{"kind": "resume", "step": 10, "world_size": 2, "restart": 1}]
    loss, weights = max_diff(run, reference)
    print(f"\nkilled at step 13, restarted from 10: largest loss difference {loss:.2e}, weights {weights:.2e}")
    assert loss < TOL and weights < TOL
    # without restarts the same kill ends the job, with a message naming the rank
    cfg2 = make_run(tmp_path, name="norestart", train={**TRAIN, "distributed": "ddp"})
    out = torchrun(cfg2, 2, env={"LLMKIT_FAULT": "step:kill@3", "LLMKIT_FAULT_RANK": "1"})
    assert out.returncode == 1 and "rank 1 was killed by SIGKILL" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(cfg: Path, *extra_per_node: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Two torchrun agents on this machine, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for node in range(2):
        args = [sys.executable, "-m", "llmkit", "train", "--config", str(cfg), "--nproc-per-node", "1",
                "--nnodes", "2", "--node-rank", str(node), "--rdzv-endpoint", endpoint, *extra_per_node[node]]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONWARNINGS": "ignore"}))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


def test_two_agents_form_a_two_node_job(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "ddp"})
    a, b = two_nodes(cfg, [], [])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-6000:])
    assert "on 2 process(es) (gloo, ddp)" in a.stdout + b.stdout
    loss, weights = max_diff(tmp_path / "runs" / "t", reference)
    print(f"\n2 nodes x 1 process vs 1 process: largest loss difference {loss:.2e}, weights {weights:.2e}")
    assert loss < TOL and weights < TOL


def test_ranks_with_different_configs_are_refused_before_step_1(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "ddp"})
    a, b = two_nodes(cfg, [], ["--set", "train.learning_rate=0.01"])
    both = a.stderr + b.stderr
    assert a.returncode == 2, both[-3000:]
    # rank 0 reports the refusal once, with both ranks' config hashes
    assert a.stderr.count("error: the ranks disagree on config") == 1 and "rank 0:" in a.stderr and "rank 1:" in a.stderr
    # node 1 reports its own rank's refusal, or, when node 0 (which hosts the rendezvous) has already
    # gone, that it lost the rendezvous: either way one message and a non-zero exit
    assert (b.returncode == 2 and b.stderr.count("[rank 1] error: the ranks disagree on config") == 1) or \
        (b.returncode == 1 and "lost the rendezvous at 127.0.0.1" in b.stderr), b.stderr[-3000:]
    assert not (tmp_path / "runs" / "t" / "metrics.jsonl").exists()  # no step was taken
    assert "Traceback" not in both


def test_sigterm_to_the_agent_checkpoints_every_rank_and_exits_143(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "fsdp"})
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "train", "--config", str(cfg), "--nproc-per-node", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LLMKIT_FAULT": "step:sleep=0.5", "PYTHONWARNINGS": "ignore"})
    run = tmp_path / "runs" / "t"
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() or not losses(run).get(7):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    stopped = ckpt.committed(run / "checkpoints")[-1][0]
    assert 7 <= stopped < STEPS and f"step-{stopped:06d} committed" in stdout
    out = torchrun(cfg, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    loss, weights = max_diff(run, reference, first_step=stopped + 1)
    print(f"\nSIGTERM after step {stopped}, resumed: largest loss difference {loss:.2e}, weights {weights:.2e}")
    assert loss < TOL and weights < TOL


def test_bad_launcher_input(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, prepared=False)
    out = llmkit("train", "--config", str(cfg), "--nproc-per-node", "0")
    assert out.returncode == 2 and "--nproc-per-node" in out.stderr and "greater than or equal to 1" in out.stderr
    out = llmkit("train", "--config", str(cfg), "--max-restarts", "2")
    assert out.returncode == 2 and "need --nproc-per-node" in out.stderr
    out = llmkit("train", "--config", str(cfg), "--nproc-per-node", "1", "--nnodes", "2")
    assert out.returncode == 2 and "--rdzv-endpoint" in out.stderr
    # micro-batch 2 x 3 processes does not divide the global batch of 4
    out = torchrun(make_run(tmp_path, name="odd", train={"distributed": "ddp"}), 3)
    assert out.returncode == 2 and "not a multiple of micro-batch 2 x 3 processes" in out.stderr, out.stderr[-2000:]
    assert out.stderr.count("error: global_batch_size 4") == 1 and "Traceback" not in out.stderr, out.stderr


def test_more_processes_than_cores_warns(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    n = cores + 1
    cfg = make_run(tmp_path, train={"global_batch_size": 2 * n, "micro_batch_size": 2, "max_steps": 2,
                                    "distributed": "ddp", "checkpoint_every_steps": 2, "eval_every_steps": 2})
    out = torchrun(cfg, n)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"warning: {n} processes on {cores} CPU cores" in out.stdout


def test_fsdp_refuses_what_it_cannot_shard() -> None:
    import torch

    from llmkit.errors import ConfigError
    from llmkit.training.distributed import Dist, wrap

    class NoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    with pytest.raises(ConfigError, match="cannot shard NoBlocks"):
        wrap(NoBlocks(), "fsdp", Dist(backend="gloo"), "fp32", torch.device("cpu"))
    with pytest.raises(ConfigError, match="fsdp with fp16"):
        wrap(NoBlocks(), "fsdp", Dist(backend="gloo"), "fp16", torch.device("cpu"))


def test_torchrun_itself_starts_llmkit(tmp_path: Path, reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "distributed": "ddp"})
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "llmkit", "train", "--config", str(cfg)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "on 2 process(es) (gloo, ddp)" in out.stdout and f"done at step {STEPS}" in out.stdout
    loss, weights = max_diff(tmp_path / "runs" / "t", reference)
    assert loss < TOL and weights < TOL


def test_fsdp_mixed_precision_trains_and_exports(tmp_path: Path) -> None:
    """FSDP2 with bf16 parameters and compute, fp32 gradient reduction: it learns, and final/ is a
    plain fp32 HF directory that transformers loads."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = make_run(tmp_path, train={**TRAIN, "max_steps": 30, "distributed": "fsdp", "precision": "bf16"})
    out = torchrun(cfg, 2)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(gloo, fsdp), bf16" in out.stdout
    curve = losses(tmp_path / "runs" / "t")
    assert sum(curve[s] for s in range(26, 31)) / 5 < curve[1] - 0.3
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "runs" / "t" / "final"))
    assert next(model.parameters()).dtype == torch.float32
