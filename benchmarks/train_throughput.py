"""Training throughput: llmkit's loop vs a bare PyTorch loop vs the machine's matmul peak.

Reference model (issue 5): llama, 6 layers, hidden 384, 6 heads, context 256, micro-batch 8,
vocabulary 8192. In one process, interleaved (bare, llmkit, bare, llmkit, ...), for fp32 and
for ``precision: auto`` (bf16 autocast on CPUs with AVX-512 BF16/AMX):

- the matmul peak of this device (best of repeated 1024x1024 matmuls) per dtype;
- a plain GPT: the same shapes written in plain PyTorch (benchmarks/plain_gpt.py), the same
  loop, data, precision and AdamW: the reference llmkit must reach;
- a bare loop: the same HF model, AdamW, random windows of the same token file, autocast,
  forward / backward / step, nothing else;
- `llmkit train` on the same config (its metrics.jsonl, steps after warm-up).

Tokens/s is micro-batch x context / step time; MFU = tokens/s x FLOPs per token (6N + 12·L·H·T)
over the measured peak. Also prints this process's peak RSS.

Usage: python benchmarks/train_throughput.py [--steps 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmkit.config.load import validate_config
from llmkit.data.prepare import prepare
from llmkit.data.shards import open_tokens
from llmkit.device import autocast, resolve_precision, torch_dtype
from llmkit.model.build import build_model, matmul_weights
from llmkit.plan.compute import flops_per_token
from llmkit.plan.measure import matmul_peak_flops
from llmkit.rundir import RunDir
from llmkit.train.loop import train
from llmkit.train.optim import make_optimizer

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)

WARMUP = 2


def reference_config(root: Path, name: str, precision: str, steps: int):  # type: ignore[no-untyped-def]
    return validate_config({
        "name": name, "runs_root": str(root),
        "model": {"architecture": "llama", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "max_position_embeddings": 256},
        "tokenizer": {"vocab_size": 8192},
        "data": {"source": "embedded", "include_stdlib_source": True},
        "train": {"sequence_length_tokens": 256, "global_batch_size": 8, "micro_batch_size": 8,
                  "max_steps": steps, "warmup_steps": 1, "precision": precision, "device": "cpu",
                  "log_every_steps": 1, "eval_every_steps": 10_000, "checkpoint_every_steps": 10_000,
                  "compile": False},
    })


def bare_loop(cfg, data_dir: Path, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per step of the plainest loop that does the same work."""
    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    tokens = open_tokens(data_dir, "train")
    model = build_model(cfg.model, 8192, 0, None, seed=0)
    model.config.use_cache = False
    model.train()
    opt = make_optimizer(model, cfg.train, "cpu")
    rng = np.random.default_rng(0)
    seq, b = 256, 8
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        starts = rng.integers(0, len(tokens) - seq - 1, size=b)
        rows = torch.from_numpy(np.stack([tokens[s : s + seq + 1] for s in starts]).astype(np.int64))
        with autocast(device, precision):
            logits = model(input_ids=rows[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 8192), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[WARMUP:]


def plain_loop(cfg, data_dir: Path, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per step of the plain-PyTorch GPT (benchmarks/plain_gpt.py) on the same data, shapes,
    precision and optimizer: the reference llmkit's loop must match."""
    from plain_gpt import PlainGPT

    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    tokens = open_tokens(data_dir, "train")
    torch.manual_seed(0)
    model = PlainGPT(8192, 384, 6, 6, 1024, 256)
    model.train()
    opt = make_optimizer(model, cfg.train, "cpu")
    rng = np.random.default_rng(0)
    seq, b = 256, 8
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        starts = rng.integers(0, len(tokens) - seq - 1, size=b)
        rows = torch.from_numpy(np.stack([tokens[s : s + seq + 1] for s in starts]).astype(np.int64))
        with autocast(device, precision):
            logits = model(rows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, 8192), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[WARMUP:]


COMPONENTS = (("matmul", ("aten::mm", "aten::addmm", "aten::bmm")), ("attention", ("scaled_dot_product",)),
              ("loss", ("log_softmax", "nll_loss")), ("optimizer", ("_foreach", "addcdiv", "lerp", "_fused_adam")))


def component_ms(cfg, data_dir: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Milliseconds per step by kind of work (torch.profiler self CPU time over 3 bare-loop steps)."""
    from torch.profiler import ProfilerActivity, profile

    bare_loop(cfg, data_dir, WARMUP + 1)  # warm the allocator and kernels the same way
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        bare_loop(cfg, data_dir, WARMUP + 3)
    out = {name: 0.0 for name, _ in COMPONENTS} | {"everything else": 0.0}
    for evt in prof.key_averages():
        kind = next((name for name, keys in COMPONENTS if any(k in evt.key for k in keys)), "everything else")
        out[kind] += evt.self_cpu_time_total / 1000 / (WARMUP + 3)
    return out


def llmkit_loop(cfg, root: Path, base: Path, steps: int, i: int) -> list[float]:  # type: ignore[no-untyped-def]
    run = root / f"{cfg.name}-{i}"
    shutil.copytree(base / "tokenizer", run / "tokenizer")
    shutil.copytree(base / "data", run / "data")
    train(cfg, run_dir=run, log=lambda _: None)
    recs = [r for r in RunDir(run).read_metrics() if r["kind"] == "train"][WARMUP:]
    shutil.rmtree(run)
    return [8 * 256 / r["tokens_per_s"] for r in recs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="llmkit-bench-"))
    try:
        base_cfg = reference_config(root, "base", "fp32", args.steps)
        prepare(base_cfg)
        base = root / "base"
        auto = resolve_precision("auto", torch.device("cpu"))
        reference = build_model(base_cfg.model, 8192, 0, None, 0)
        n = sum(p.numel() for p in reference.parameters())
        fpt = flops_per_token(*matmul_weights(reference), 6, 384, 256)
        print(f"cpu: {cpu_line()}")
        print(f"model: {n / 1e6:.2f} M parameters, {fpt / 1e6:.1f} MFLOP per token; "
              f"precision auto -> {auto}; torch threads {torch.get_num_threads()}")
        rows = []
        peaks_by: dict[str, list[float]] = {}
        for precision in dict.fromkeys(["fp32", auto]):
            dtype = torch_dtype(precision)
            cfg = reference_config(root, f"run-{precision}", precision, args.steps + WARMUP)
            bare: list[float] = []
            plain: list[float] = []
            ours: list[float] = []
            peaks = []
            for i in range(args.repeats):  # interleaved: noise hits all alike
                peaks.append(matmul_peak_flops(torch.device("cpu"), dtype, seconds=0.5))
                plain += plain_loop(cfg, base / "data", args.steps + WARMUP)
                bare += bare_loop(cfg, base / "data", args.steps + WARMUP)
                ours += llmkit_loop(cfg, root, base, args.steps, i)
            peak = max(peaks)
            peaks_by[precision] = peaks
            for label, secs in (("plain GPT", plain), ("bare loop", bare), ("llmkit train", ours)):
                tok_s = 8 * 256 / statistics.median(secs)
                rows.append((precision, label, tok_s, tok_s * fpt / peak, peak))
        print(f"{'precision':10} {'loop':14} {'tokens/s':>10} {'MFU':>7} {'peak GFLOP/s':>13}")
        for precision, label, tok_s, mfu, peak in rows:
            print(f"{precision:10} {label:14} {tok_s:10.0f} {100 * mfu:6.1f}% {peak / 1e9:13.0f}")
        by = {(p, l): t for p, l, t, _, _ in rows}
        for precision in dict.fromkeys(["fp32", auto]):
            print(f"{precision}: llmkit / bare = {by[(precision, 'llmkit train')] / by[(precision, 'bare loop')]:.3f}; "
                  f"llmkit / plain GPT = {by[(precision, 'llmkit train')] / by[(precision, 'plain GPT')]:.3f} "
                  "(target >= 1.0)")
        if auto != "fp32":
            print(f"{auto} / fp32 tokens/s (llmkit): {by[(auto, 'llmkit train')] / by[('fp32', 'llmkit train')]:.2f}x")
        if auto != "fp32":
            # where the bf16 speed-up is lost: the same bare step, by kind of work, in both precisions
            parts = {prec: component_ms(reference_config(root, f"prof-{prec}", prec, 1), base / "data")
                     for prec in ("fp32", auto)}
            print(f"{'work (bare loop, profiled)':28} {'fp32 ms':>8} {auto + ' ms':>8} {'speed-up':>9}")
            for kind in parts["fp32"]:
                a, b = parts["fp32"][kind], parts[auto][kind]
                print(f"{kind:28} {a:8.1f} {b:8.1f} {a / b if b else float('nan'):8.2f}x")
            fp32_total, auto_total = sum(parts["fp32"].values()), sum(parts[auto].values())
            print(f"{'total':28} {fp32_total:8.1f} {auto_total:8.1f} {fp32_total / auto_total:8.2f}x")
            ratio = max(peaks_by[auto]) / max(peaks_by["fp32"])
            bound = fp32_total / (parts["fp32"]["matmul"] / ratio + fp32_total - parts["fp32"]["matmul"])
            print(f"{auto}/fp32 matmul peak ratio {ratio:.2f}x; step speed-up if only the matmuls ran that much "
                  f"faster: {bound:.2f}x")
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        print(json.dumps({"rows": [dict(zip(("precision", "loop", "tokens_per_s", "mfu", "peak_flops"), r)) for r in rows]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
