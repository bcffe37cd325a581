"""Checkpoints in object storage: a real S3 server (moto's, on 127.0.0.1) and s3fs, through the real CLI.

Kill during an upload, lose the local disk, resume: the run continues from the newest checkpoint the
bucket holds committed, and ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.config.load import load_config
from llmkit.training.loop import train

from .helpers import llmkit, losses, make_run, same_tensors, tensors

pytestmark = pytest.mark.slow  # S3 server and several processes

pytest.importorskip("s3fs")
pytest.importorskip("moto")

TRAIN = {"max_steps": 20, "checkpoint_every_steps": 5, "eval_every_steps": 10, "keep_last": 5}


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free 127.0.0.1 port, with a bucket; yields the environment to reach it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto server did not start"
                time.sleep(0.2)
        bucket().mkdir("ckpt")
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bucket():  # type: ignore[no-untyped-def]
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem()


def remote_steps(prefix: str) -> dict[str, bool]:
    """step folder -> whether its COMMITTED object exists."""
    fs = bucket()
    return {p.rsplit("/", 1)[-1]: fs.exists(f"{p}/COMMITTED") for p in fs.ls(prefix, refresh=True)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = make_run(tmp_path_factory.mktemp("ref"), train=TRAIN)
    return train(load_config(cfg, environ={}), log=lambda _line: None).run_dir


def test_s3_round_trip_kill_during_upload_and_resume_on_a_new_disk(tmp_path: Path, s3: dict[str, str],
                                                                   reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "checkpoint_uri": "s3://ckpt/flat"})
    # save fault points: 7 for the local commit, then one per uploaded file (5): step 5 takes 1-12,
    # step 10's local commit 13-19, its upload 20-24: die after its third file is in the bucket
    out = llmkit("train", "--config", str(cfg), env={**s3, "LLMKIT_FAULT": "save:kill@22"})
    assert out.returncode == -9, out.stderr[-2000:]
    assert remote_steps("ckpt/flat") == {"step-000005": True, "step-000010": False}
    shutil.rmtree(tmp_path / "runs" / "t" / "checkpoints")  # a new machine: only the bucket is left
    out = llmkit("train", "--config", str(cfg), env=s3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "removed the partial upload of step 10" in out.stdout
    assert "downloading step-000005 from s3://ckpt/flat" in out.stdout and "(step 5)" in out.stdout
    run = tmp_path / "runs" / "t"
    assert {s: losses(run)[s] for s in range(6, 21)} == {s: losses(reference)[s] for s in range(6, 21)}
    assert same_tensors(tensors(run / "final" / "model.safetensors"), tensors(reference / "final" / "model.safetensors"))
    assert remote_steps("ckpt/flat") == {f"step-{s:06d}": True for s in (5, 10, 15, 20)}


def test_s3_sharded_checkpoint_from_two_processes_resumes_in_one(tmp_path: Path, s3: dict[str, str],
                                                                reference: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "checkpoint_uri": "s3://ckpt/dcp", "distributed": "fsdp"})
    out = llmkit("train", "--config", str(cfg), "--nproc-per-node", "2", "--stop-at-step", "10", env=s3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert remote_steps("ckpt/dcp") == {"step-000005": True, "step-000010": True}
    assert bucket().exists("ckpt/dcp/step-000010/dcp/.metadata")
    shutil.rmtree(tmp_path / "runs" / "t" / "checkpoints")
    out = llmkit("train", "--config", str(cfg), "--set", "train.distributed=auto", env=s3)
    assert out.returncode == 0 and "downloading step-000010" in out.stdout, out.stderr[-3000:]
    run = tmp_path / "runs" / "t"
    worst = max(abs(losses(run)[s] - losses(reference)[s]) for s in range(11, 21))
    print(f"\n2 processes -> s3 -> 1 process: largest loss difference {worst:.2e}")
    assert worst < 1e-4


def test_unknown_scheme_is_a_clear_error(tmp_path: Path) -> None:
    cfg = make_run(tmp_path, train={**TRAIN, "checkpoint_uri": "nosuchscheme://x/y"})
    out = llmkit("train", "--config", str(cfg))
    assert out.returncode == 3 and "cannot open train.checkpoint_uri" in out.stderr and "Traceback" not in out.stderr


def test_runs_root_as_a_url_is_refused_with_the_key_that_does_it(tmp_path: Path) -> None:
    from llmkit.config.load import ConfigProblems, validate_config

    with pytest.raises(ConfigProblems, match="train.checkpoint_uri"):
        validate_config({"name": "t", "runs_root": "s3://bucket/runs"})


def test_two_nodes_with_node_local_disks_commit_to_the_bucket_and_resume(tmp_path: Path, s3: dict[str, str],
                                                                        reference: Path) -> None:
    """Each node has its own runs_root (nothing shared but the bucket): every rank uploads its own
    shards, rank 0 commits; a restarted job downloads the checkpoint on every node."""
    train_cfg = {**TRAIN, "checkpoint_uri": "s3://ckpt/nodes", "distributed": "fsdp"}
    for i in range(2):
        (tmp_path / f"node{i}").mkdir()
    node_cfgs = [make_run(tmp_path / f"node{i}", train=train_cfg) for i in range(2)]
    for i in range(2):
        assert (tmp_path / f"node{i}" / "runs" / "t" / "data").is_dir()
    a, b = two_nodes_per_config(node_cfgs, ["--stop-at-step", "10"])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    assert remote_steps("ckpt/nodes") == {"step-000005": True, "step-000010": True}
    for i in range(2):  # never committed on a node's own disk: half of the shards are elsewhere
        assert not list((tmp_path / f"node{i}" / "runs" / "t" / "checkpoints").glob("step-*/COMMITTED"))
    a, b = two_nodes_per_config(node_cfgs, [])
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    assert "downloading step-000010" in a.stdout and "(step 10)" in a.stdout
    run = tmp_path / "node0" / "runs" / "t"
    worst = max(abs(losses(run)[s] - losses(reference)[s]) for s in range(11, 21))
    print(f"\n2 nodes, node-local disks, s3: largest loss difference after the resume {worst:.2e}")
    assert worst < 1e-4 and (run / "final" / "model.safetensors").exists()


def two_nodes_per_config(cfgs: list[Path], extra: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Two torchrun agents, one process each, node i with its own config (its own runs_root)."""
    from .test_distributed import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "llmkit", "train", "--config", str(cfg), "--nproc-per-node", "1",
                               "--nnodes", "2", "--node-rank", str(i), "--rdzv-endpoint", endpoint, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for i, cfg in enumerate(cfgs)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results
