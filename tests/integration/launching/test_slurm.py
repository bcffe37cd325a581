"""The rendered sbatch script on a real Slurm cluster (two emulated nodes on 127.0.0.1).

One job trains a tiny model on 2 nodes x 1 process (gloo): `llmkit launch --submit` submits it,
`scontrol requeue` interrupts it after its first checkpoints, and the requeued job resumes from
the newest checkpoint (metrics say so) and finishes with final/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from llmkit.training import checkpoint as ckpt

from ..training.helpers import make_run
from . import slurm_cluster

pytestmark = pytest.mark.cluster  # a real two-node Slurm cluster on 127.0.0.1

STEPS = 80


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.Cluster]:
    why = slurm_cluster.missing()
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must run the Slurm test: {why} (.ci/run installs slurm-wlm and munge)")
    if why:
        pytest.skip(why)
    bin_dir = str(Path(sys.executable).parent)  # `llmkit` of this environment, on the jobs' PATH
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    c = slurm_cluster.start(tmp_path_factory.mktemp("slurm"), env)
    yield c
    c.stop()


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_node_job_trains_and_resumes_after_requeue(cluster: slurm_cluster.Cluster, tmp_path: Path) -> None:
    cfg = make_run(tmp_path, name="slurm2", train={"max_steps": STEPS, "checkpoint_every_steps": 10, "keep_last": 3,
                                                   "eval_every_steps": 40},
                   launch={"nodes": 2, "devices_per_node": 1, "max_restarts": 0, "time_limit_s": 1800,
                           "secret_envs": []})
    # runs_root relative to the submit folder, as on a cluster's shared home (an absolute /tmp path is refused)
    cfg.write_text(cfg.read_text().replace(f"runs_root: {tmp_path / 'runs'}", "runs_root: runs"))
    env = {**cluster.env, "LLMKIT_FAULT": "step:sleep=0.15"}  # slow enough to requeue mid-run
    out = subprocess.run([sys.executable, "-m", "llmkit", "launch", "--config", str(cfg), "--target", "slurm",
                          "--out", "launch", "--submit"], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"submitted job (\d+)", out.stdout).group(1)  # type: ignore[union-attr]
    run = tmp_path / "runs" / "slurm2"
    log = tmp_path / f"llmkit-slurm2-{job}.log"

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(ckpt.committed(run / "checkpoints")) < 2:
        time.sleep(0.5)
    assert ckpt.committed(run / "checkpoints"), f"no checkpoint in time:\n{log.read_text() if log.exists() else ''}"
    before = ckpt.committed(run / "checkpoints")[-1][0]
    assert cluster.run("scontrol", "requeue", job).returncode == 0

    deadline = time.monotonic() + 420
    state = ""
    while time.monotonic() < deadline:
        state = cluster.job_state(job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        if state == "PENDING":  # a requeued job waits for its begin time; let it start now
            cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
        time.sleep(1)
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", f"job {job} ended {state}:\n{text[-4000:]}"
    assert "attempt 0" in text and "attempt 1" in text, text[-3000:]  # one log holds both attempts
    assert "rendezvous 127.0.0.1:" in text
    recs = _records(run)
    resumes = [r for r in recs if r["kind"] == "resume"]
    assert resumes and resumes[-1]["step"] >= before and resumes[-1]["world_size"] == 2, resumes
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert max(steps) == STEPS
    assert (run / "final" / "model.safetensors").exists()
    print(f"\nslurm job {job}: checkpoint at step {before} when requeued, resumed at step {resumes[-1]['step']}, "
          f"finished {STEPS} steps on 2 nodes")
