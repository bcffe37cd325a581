"""SFT throughput, padded (one example per row) vs packed (data.sft_packing: examples kept apart by
a block-diagonal mask and restarting positions), on examples of mixed lengths.

The data: 600 generated question/answer pairs whose answers run from 3 to ~300 tokens (lengths
drawn log-uniformly, as instruction data is: many short answers, a few long ones). The model: a
llama of width 384, 4 layers, llmkit's BPE of 4096 tokens; sequence 512, 8 rows per micro-batch,
`train.precision: auto`. Each setting runs 20 steps in its own process, twice, interleaved
(padded, packed, padded, packed); printed: real (non-padding) tokens per second over steps 2-20,
and the share of each batch that is padding.

Usage: python benchmarks/sft_packing.py [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line  # noqa: E402  benchmarks/machine.py

WORKER = r'''
import json, sys
import numpy as np
from llmkit.config.load import load_config
from llmkit.training.loop import train
from llmkit.data.batches import task_batches
path = sys.argv[1]
cfg = load_config(path, environ={})
result = train(cfg, log=lambda line: None)
rates = [json.loads(l)["tokens_per_s"] for l in open(result.run_dir / "metrics.jsonl") if '"kind": "train"' in l]
data = task_batches(cfg, result.run_dir, cfg.train.micro_batch_size)
pad = []
for _ in range(10):
    b = data.next_micro_batch()
    real = (b["segments"] != 0).sum() if "segments" in b else b["attention_mask"].sum()
    pad.append(1 - real / b["input_ids"].size)
print(json.dumps({"tokens_per_s": sum(rates[1:]) / max(1, len(rates[1:])), "padding": float(np.mean(pad))}))
'''


def data_file(root: Path) -> Path:
    rng = random.Random(0)
    words = "the a model token example data training loss answer question packing row mask value".split()
    rows = []
    for i in range(600):
        n = int(math.exp(rng.uniform(math.log(3), math.log(300))))
        rows.append({"prompt": f"Question {i}: what does step {i} do?", "completion": " ".join(rng.choice(words) for _ in range(n))})
    path = root / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import yaml

    from llmkit.config.load import load_config
    from llmkit.data.prepare import prepare

    print(cpu_line())
    root = Path(tempfile.mkdtemp(prefix="llmkit-packing-"))
    sft = data_file(root)
    results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for packing in (False, True):
            name = f"{'packed' if packing else 'padded'}{repeat}"
            cfg = {"name": name, "runs_root": str(root / "runs"),
                   "model": {"hidden_size": 384, "num_hidden_layers": 4, "num_attention_heads": 6,
                             "max_position_embeddings": 512},
                   "tokenizer": {"vocab_size": 4096},
                   "data": {"sft_path": str(sft), "val_fraction": 0.05, "sft_packing": packing},
                   "train": {"task": "sft", "sequence_length_tokens": 512, "global_batch_size": 8,
                             "micro_batch_size": 8, "max_steps": args.steps, "eval_every_steps": 10_000,
                             "log_every_steps": 1, "checkpoint_every_steps": 10_000, "device": "cpu", "seed": 0}}
            path = root / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            prepare(load_config(path, environ={}))
            out = subprocess.run([sys.executable, "-c", WORKER, str(path)], capture_output=True, text=True)
            if out.returncode:
                print(f"{name}: failed\n{out.stderr[-2000:]}")
                return
            results[packing].append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = results[packing][-1]
            print(f"{name:8} {r['tokens_per_s']:7.0f} real tokens/s, {100 * r['padding']:4.1f}% padding", flush=True)
    for packing in (False, True):
        rates = [r["tokens_per_s"] for r in results[packing]]
        print(f"{'packed' if packing else 'padded'}: {min(rates):.0f}-{max(rates):.0f} real tokens/s over "
              f"{len(rates)} runs")
    best = {p: max(r["tokens_per_s"] for r in results[p]) for p in results}
    print(f"packed / padded: {best[True] / best[False]:.2f}x (best of each)")


if __name__ == "__main__":
    main()
