"""Data-parallel scaling on this machine: 1 process vs N processes (torchrun, gloo), DDP and FSDP2.

Reference model (issue 5): llama, 6 layers, hidden 384, 6 heads, context 256, vocabulary 8192,
global batch 16, micro-batch 8 per process with one process and 16/N per process with N, fp32.
For each mode the real `llmkit train` runs (``--nproc-per-node N``) and its metrics.jsonl gives
tokens/s (median of the steps after warm-up). Where the time goes: a second torchrun job times
the collectives each mode issues per step on tensors of the model's size (DDP: one all-reduce of
the gradients; FSDP2: an all-gather of each block's parameters in the forward and again in the
backward, and a reduce-scatter of the gradients), so step time = compute + communication.

The prediction is `llmkit.planning.compute.data_parallel_step_seconds`: the one-process step's
compute split over the ranks (on one CPU the ranks share the cores, so the compute does not
shrink) plus the measured communication, not overlapped (gloo). The benchmark prints measured
and predicted scaling efficiency (tokens/s of N processes over N x one process's, or over one
process's when the ranks share one CPU).

Usage: python benchmarks/ddp_scaling.py [--steps 12] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

WARMUP = 3

COMM_WORKER = r'''
import json, sys, time
import torch, torch.distributed as dist
dist.init_process_group("gloo")
groups = json.loads(sys.argv[1]); mode = sys.argv[2]; repeats = int(sys.argv[3])
n, rank = dist.get_world_size(), dist.get_rank()
def once():
    if mode == "ddp":  # one all-reduce of every gradient (DDP buckets them; the bytes are the same)
        dist.all_reduce(flat)
    else:  # per FSDP group: all-gather the parameters in forward and again in backward, reduce-scatter the grads
        for full, shard in buffers:
            for _ in range(2):
                dist.all_gather_into_tensor(full, shard)
            dist.reduce_scatter_tensor(shard, full)
flat = torch.randn(sum(groups))
buffers = [(torch.randn(-(-g // n) * n), torch.randn(-(-g // n))) for g in groups]
once()
dist.barrier()
t = []
for _ in range(repeats):
    t0 = time.perf_counter(); once(); dist.barrier(); t.append(time.perf_counter() - t0)
if rank == 0:
    print(json.dumps({"seconds": sorted(t)[len(t) // 2]}))
dist.destroy_process_group()
'''


def reference(root: Path, name: str, steps: int, mode: str) -> Path:
    cfg = {
        "name": name, "runs_root": str(root / "runs"),
        "model": {"architecture": "llama", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "max_position_embeddings": 256},
        "tokenizer": {"vocab_size": 8192},
        "data": {"source": "embedded", "include_stdlib_source": True},
        "train": {"sequence_length_tokens": 256, "global_batch_size": 16, "micro_batch_size": 8, "max_steps": steps,
                  "precision": "fp32", "log_every_steps": 1, "eval_every_steps": 10_000, "eval_batches": 1,
                  "checkpoint_every_steps": 10_000, "device": "cpu", "distributed": mode},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tokens_per_s(run: Path) -> float:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["step"] > WARMUP]
    return statistics.median(speeds)


def run_llmkit(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"llmkit {' '.join(args)} failed:\n{out.stderr[-3000:]}")


def comm_seconds(groups: list[int], mode: str, nproc: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(COMM_WORKER)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                          fh.name, json.dumps(groups), mode, "10"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.unlink(fh.name)
    if out.returncode:
        sys.exit(f"collective timing failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()

    from llmkit.config.load import load_config
    from llmkit.device import cpu_flags
    from llmkit.planning.compute import data_parallel_step_seconds

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?")
    flags = sorted(f for f in cpu_flags(cpuinfo) if f.startswith(("avx512", "amx")))
    cores = os.cpu_count() or 1
    print(f"CPU: {model}, {cores} cores; features: {' '.join(flags) or 'no AVX-512/AMX'}")
    n = args.nproc
    tokens_step = 16 * 256
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg_one = reference(root, "one", args.steps, "auto")
        run_llmkit("prepare", "--config", str(cfg_one))
        run_llmkit("train", "--config", str(cfg_one))
        one = tokens_per_s(root / "runs" / "one")
        step_one = tokens_step / one
        results = {}
        for mode in ("ddp", "fsdp"):
            cfg = reference(root, mode, args.steps, mode)
            for part in ("data", "tokenizer"):  # the same prepared data, tokenized once
                shutil.copytree(root / "runs" / "one" / part, root / "runs" / mode / part)
            run_llmkit("train", "--config", str(cfg), "--nproc-per-node", str(n),
                       "--set", f"train.micro_batch_size={16 // n}")
            results[mode] = tokens_per_s(root / "runs" / mode)
        c = load_config(cfg_one)
        from llmkit.model.build import build_model
        from llmkit.training.distributed import transformer_blocks

        model = build_model(c.model, 8192, 0, None, 0)
        blocks = [sum(p.numel() for p in b.parameters()) for b in transformer_blocks(model)]
        params = sum(p.numel() for p in model.parameters())
        groups = [*blocks, params - sum(blocks)]  # FSDP2: one group per block, then the root's own
    print(f"reference: llama 6x384, context 256, vocabulary 8192, {params / 1e6:.1f} M parameters, global batch 16, "
          f"fp32; tokens/s = median of steps {WARMUP + 1}-{args.steps}")
    print(f"1 process ({cores} threads): {one:,.0f} tokens/s, {step_one:.3f} s/step")
    shares_cores = True  # every rank of this benchmark runs on this one CPU
    print(f"{'mode':6} {'tok/s':>8} {'s/step':>7} {'comm s':>7} {'compute s':>9} {'efficiency':>10} {'predicted':>9}")
    for mode, tok_s in results.items():
        step = tokens_step / tok_s
        comm = comm_seconds(groups, mode, n)
        predicted_step = data_parallel_step_seconds(step_one, n, comm, shares_cores)
        # efficiency: against one process (the ranks share this CPU's cores, so perfect is 1.0x, not n x)
        print(f"{mode:6} {tok_s:8,.0f} {step:7.3f} {comm:7.3f} {step - comm:9.3f} {tok_s / one:10.2f} "
              f"{step_one / predicted_step:9.2f}")
    print(f"efficiency = tokens/s of {n} processes / tokens/s of 1 process on the same {cores} cores; "
          "predicted = llmkit.planning.compute.data_parallel_step_seconds from the 1-process step and the timed collectives")


if __name__ == "__main__":
    main()
