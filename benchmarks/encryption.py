"""Encryption at rest: what it costs training and checkpoints, plain vs sealed, in one process.

- training: the reference model of issue #5 (llama 6 x 384, context 256, micro-batch 8, vocabulary
  8192) trained by `llmkit.train` on the same prepared data, once plain and once with
  ``privacy.encryption_key_env``, interleaved (plain, sealed, plain, sealed, ...); tokens/s is the
  median of the steps after warm-up in metrics.jsonl (checkpoints excluded: they are measured
  apart). Target (issue #17): sealed >= 0.97 x plain.
- checkpoints: ``save_checkpoint`` / ``read_checkpoint`` of that model's state (weights + AdamW
  moments) and of a larger synthetic one, plain and sealed, in MB/s (best of a few; the page cache
  is warm, so this is the CPU cost of sealing, not the disk's speed).
- the sealed sampler's reads: windows of ``train.bin`` per second through ``SealedArray`` vs the
  memory map.

    python benchmarks/encryption.py [--steps 8] [--repeats 2] [--synthetic-mb 256]

Prints the CPU and whether it has AES instructions (aes, vaes, pclmulqdq flags).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llmkit.config.load import validate_config
from llmkit.data.prepare import prepare
from llmkit.privacy import crypto
from llmkit.training import checkpoint as ckpt
from llmkit.training.loop import train

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)
from train_throughput import reference_config

WARMUP = 2


def config(root: Path, name: str, steps: int, sealed: bool):  # type: ignore[no-untyped-def]
    """The reference run of benchmarks/train_throughput.py, in fp32, encrypted or not."""
    data = reference_config(root, name, "fp32", steps).model_dump(mode="json")
    data["privacy"]["encryption_key_env"] = "BENCH_KEY" if sealed else None
    return validate_config(data)


def train_tokens_per_s(root: Path, prepared: Path, name: str, steps: int, sealed: bool) -> float:
    run = root / name
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(prepared, run)
    cfg = config(root, name, steps + WARMUP, sealed)
    crypto.activate(cfg.privacy.encryption_key_env)
    train(cfg, log=lambda _: None)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in recs if r.get("kind") == "train" and r["step"] > WARMUP]
    shutil.rmtree(run, ignore_errors=True)
    return statistics.median(rates)


def checkpoint_mb_s(root: Path, tensors: dict[str, torch.Tensor], opt: dict[str, torch.Tensor],
                    sealed: bool, tries: int = 3) -> tuple[float, float, float]:
    """(save MB/s, load MB/s, MB) of one flat checkpoint, best of ``tries``."""
    crypto.activate("BENCH_KEY" if sealed else None)
    size = sum(t.numel() * t.element_size() for t in [*tensors.values(), *opt.values()]) / 1e6
    state = ckpt.TrainerState(step=1, tokens_seen=0, train_time_s=0.0, nonfinite_skipped=0, config={}, data="x",
                              data_position={}, param_groups=[], scaler=None, llmkit_version="bench")
    saves, loads = [], []
    for i in range(tries):
        where = root / f"ck-{'sealed' if sealed else 'plain'}-{i}"
        t0 = time.perf_counter()
        path = ckpt.save_checkpoint(where, tensors, opt, state, {})
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        back = ckpt.read_checkpoint(path)
        loads.append(time.perf_counter() - t0)
        assert back.tensors is not None and set(back.tensors) == set(tensors)
        shutil.rmtree(where)
    return size / min(saves), size / min(loads), size


def sampler_windows_per_s(data: Path, sealed_data: Path, seconds: float = 1.0) -> tuple[float, float]:
    from llmkit.data.shards import open_tokens

    out = []
    for d, key in ((data, None), (sealed_data, "BENCH_KEY")):
        crypto.activate(key)
        arr = open_tokens(d, "train")
        rng = np.random.default_rng(0)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for s in rng.integers(0, len(arr) - 257, 64):
                np.asarray(arr[s : s + 257]).astype(np.int64)
            n += 64
        out.append(n / (time.perf_counter() - t0))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synthetic-mb", type=int, default=256)
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = base64.b64encode(os.urandom(32)).decode()
    print(f"cpu: {cpu_line()}; torch threads {torch.get_num_threads()}")
    root = Path(tempfile.mkdtemp(prefix="llmkit-bench-enc-"))
    try:
        prepared, sealed_prepared = root / "prep-plain", root / "prep-sealed"
        for path, sealed in ((prepared, False), (sealed_prepared, True)):
            cfg = config(root, path.name, 1, sealed)
            crypto.activate(cfg.privacy.encryption_key_env)
            prepare(cfg)
        assert crypto.is_sealed(sealed_prepared / "data" / "train.bin")

        plain_w, sealed_w = sampler_windows_per_s(prepared / "data", sealed_prepared / "data")
        print(f"sampler: {plain_w:,.0f} windows/s from the memory map, {sealed_w:,.0f} from the sealed file "
              f"({sealed_w / plain_w:.2f}x); a training step reads 8")

        rates: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeats):  # interleaved: noise hits both alike
            for sealed in (False, True):
                rates[sealed].append(train_tokens_per_s(root, sealed_prepared if sealed else prepared,
                                                        f"t-{int(sealed)}-{i}", args.steps, sealed))
        plain, sealed_rate = statistics.median(rates[False]), statistics.median(rates[True])
        ratio = sealed_rate / plain
        print(f"training tokens/s: plain {plain:,.0f}, encrypted {sealed_rate:,.0f}: {ratio:.3f}x "
              f"(target >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}); runs {rates}")

        from llmkit.model.build import build_model

        model = build_model(config(root, "m", 1, False).model, 8192, 0, None, 0)
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        opt = {f"{k}.exp_avg": torch.randn_like(v) for k, v in tensors.items()}
        opt |= {f"{k}.exp_avg_sq": torch.rand_like(v) for k, v in tensors.items()}
        n = args.synthetic_mb * 1_000_000 // 4 // 8
        synthetic = {f"w{i}": torch.randn(n) for i in range(4)}
        synthetic_opt = {f"w{i}.m": torch.randn(n) for i in range(4)}
        print(f"{'checkpoint':28} {'MB':>7} {'save MB/s':>10} {'load MB/s':>10}")
        for label, t, o in (("reference model + AdamW", tensors, opt), ("synthetic", synthetic, synthetic_opt)):
            results = {}
            for sealed in (False, True):
                save, load, size = checkpoint_mb_s(root, t, o, sealed)
                results[sealed] = (save, load)
                print(f"{label + (' sealed' if sealed else ' plain'):28} {size:7.0f} {save:10.0f} {load:10.0f}")
            print(f"{label}: sealed/plain save {results[True][0] / results[False][0]:.2f}x, "
                  f"load {results[True][1] / results[False][1]:.2f}x")
        crypto.activate(None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
