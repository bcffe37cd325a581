"""What preference tuning costs over SFT on the same tokens, on this machine.

A ~25 M llama-style base (width 512, 8 layers, GQA 8/2 heads, MLP 1408, a 4096-token BPE trained on
the embedded documentation; random weights, seed 0) is saved once. The embedded preference pairs
(``llmkit prepare`` makes them) are trained as:

- ``sft``: every pair's chosen and rejected answer as two SFT examples (the same rendered tokens),
  2 x P sequences a step;
- ``dpo, adapters off`` (LoRA) / ``dpo, frozen copy`` (full): P pairs a step, the reference a forward
  pass per step;
- ``dpo, precomputed``: the reference's log-probabilities computed once before step 1 (the time of
  that pass is printed apart).

Each row is a fresh process running `llmkit train` (fp32, one process) for the same steps; printed:
the median step time over the steps after the first two (and its spread), the ratio to the SFT row
of the same kind, and the process's peak RSS above the loaded base (VmHWM after /proc/self/clear_refs).
Targets (issue 32): LoRA's adapters-off reference adds no copy of the weights (its peak within 10% of
SFT's plus the extra activations), and a precomputed reference keeps a DPO step at most 2.2x an SFT
step on the same tokens.

Usage: python benchmarks/preference_cost.py [--steps 12] [--pairs 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line  # noqa: E402  benchmarks/machine.py

SHAPE = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
         "intermediate_size": 1408, "max_position_embeddings": 256}

WORKER = r'''
import json, sys, time
spec = json.loads(sys.argv[1])
from llmkit.config.load import load_config
from llmkit.training.loop import train
open("/proc/self/clear_refs", "w").write("5")
base = int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) * 1024
lines = []
t0 = time.perf_counter()
result = train(load_config(spec["config"], environ={}), log=lines.append)
hwm = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
recs = [json.loads(l) for l in open(result.run_dir / "metrics.jsonl") if '"kind": "train"' in l]
elapsed = [r["elapsed_s"] for r in recs]
steps = [b - a for a, b in zip(elapsed, elapsed[1:])][1:]
pre = [l for l in lines if "computed in" in l]
print(json.dumps({"steps": steps, "peak": hwm - base, "precompute": pre[0] if pre else None}))
'''


def run_config(root: Path, name: str, base: Path, task: str, steps: int, batch: int, lora: bool,
               extra: dict[str, object] | None = None) -> dict[str, object]:
    train = {"task": task, "sequence_length_tokens": 256, "global_batch_size": batch, "micro_batch_size": batch,
             "max_steps": steps, "eval_every_steps": 10_000, "eval_batches": 1, "log_every_steps": 1,
             "checkpoint_every_steps": 10_000, "learning_rate": 1e-4, "warmup_steps": 2, "seed": 0,
             "precision": "fp32", "device": "cpu", **(extra or {})}
    return {"name": name, "runs_root": str(root / "runs"),
            "model": {"from_pretrained": str(base), **SHAPE, "lora": {"enabled": lora, "r": 16}},
            "tokenizer": {"kind": "pretrained", "path": str(base)},
            "data": {"source": "embedded", "val_fraction": 0.1, "sft_path": str(root / "sft.jsonl")}, "train": train}


def make_base(root: Path) -> Path:
    """A random base with a trained BPE (llmkit's chat template), and the SFT file of the
    preference pairs' answers."""
    from bases import random_llama  # benchmarks/bases.py

    from llmkit.data.preference import embedded_records

    base = random_llama(root, SHAPE)
    train, val = embedded_records(0.1, seed=1337)  # the pairs `prepare` makes for these configs
    with open(root / "sft.jsonl", "w") as out:
        for r in train + val:
            for answer in r.answers:
                out.write(json.dumps({"prompt": r.prompt[0]["content"], "completion": answer[0]["content"]}) + "\n")
    return base


def measure(root: Path, cfg: dict[str, object]) -> dict[str, object]:
    import yaml

    from llmkit.config.load import load_config
    from llmkit.data.prepare import prepare

    path = root / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    if not (root / "runs" / str(cfg["name"]) / "data").exists():
        prepare(load_config(path, environ={}))
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps({"config": str(path)})], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--pairs", type=int, default=8, help="pairs a step (SFT: twice as many sequences)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each row, interleaved")
    args = ap.parse_args()
    print(cpu_line())
    rows = [  # (label, kind, task, lora, extra train settings)
        ("sft", "lora", "sft", True, {}),
        ("dpo, adapters off", "lora", "preference", True, {"preference": {"precompute_reference": False}}),
        ("dpo, precomputed", "lora", "preference", True, {"preference": {"precompute_reference": True}}),
        ("sft", "full", "sft", False, {}),
        ("dpo, frozen copy", "full", "preference", False, {"preference": {"precompute_reference": False}}),
        ("dpo, precomputed", "full", "preference", False, {"preference": {"precompute_reference": True}}),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_base(root)
        results: dict[int, list[dict[str, object]]] = {i: [] for i in range(len(rows))}
        for rep in range(args.repeats):
            for i, (label, kind, task, lora, extra) in enumerate(rows):
                batch = 2 * args.pairs if task == "sft" else args.pairs
                name = f"r{i}-{rep}"
                results[i].append(measure(root, run_config(root, name, base, task, args.steps, batch, lora, extra)))
        print(f"{args.pairs} pairs a step ({2 * args.pairs} sequences of <= 256 tokens), fp32, {args.steps} steps, "
              f"{args.repeats} runs each (median step time over steps 3.., over all runs; spread = min-max of runs)")
        print(f"{'kind':5} {'row':20} {'step s':>8} {'spread':>15} {'x sft':>6} {'peak MB':>9} {'x sft':>6}")
        sft: dict[str, tuple[float, float]] = {}
        for i, (label, kind, _, _, _) in enumerate(rows):
            per_run = [statistics.median(r["steps"]) for r in results[i]]
            step = statistics.median([s for r in results[i] for s in r["steps"]])
            peak = statistics.median([r["peak"] for r in results[i]]) / 1e6
            if label == "sft":
                sft[kind] = (step, peak)
            print(f"{kind:5} {label:20} {step:8.3f} {min(per_run):7.3f}-{max(per_run):<7.3f} {step / sft[kind][0]:6.2f} "
                  f"{peak:9.0f} {peak / sft[kind][1]:6.2f}")
            pre = results[i][0]["precompute"]
            if pre:
                print(f"      ({pre.split('preference: ')[-1]})")


if __name__ == "__main__":
    main()
