"""LoRA on a frozen base at 32 / 16 / 8 / 4 bits (model.lora.base_bits) on this machine.

A ~150 M llama-style base (width 1024, 12 layers, GQA 16/4 heads, MLP 2816, vocabulary 4096 of a
BPE trained on the embedded documentation; random weights, seed 0) is saved once; then, for each
base_bits, `llmkit train` fine-tunes the same LoRA adapters (r 16, every projection, same seed) on
the embedded documentation for the same steps, each in a fresh process. Printed per row:

- weights: the loaded base's bytes (parameters, buffers, quantization constants), and the ratio
  to the fp32 base (target: 4-bit at most 0.3x);
- peak: the training process's peak RSS (VmHWM) after the base is loaded for the first time
  (/proc/self/clear_refs = 5 before `train`, which loads it again);
- tokens/s: the mean over the logged steps after the first;
- val loss after the last step, and its ratio to the 16-bit row (target: within 2%).

Usage: python benchmarks/qlora.py [--steps 60] [--bits 32 16 8 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_line  # noqa: E402  benchmarks/machine.py

SHAPE = {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16, "num_key_value_heads": 4,
         "intermediate_size": 2816, "max_position_embeddings": 512}

WORKER = r'''
import json, sys, time
spec = json.loads(sys.argv[1])
from llmkit.config.load import load_config
from llmkit.model.build import load_model
from llmkit.model.quantize import weight_bytes
from llmkit.training.loop import train
probe = load_model(spec["base"], False, base_bits=spec["bits"])
weights = weight_bytes(probe)
del probe
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")
t0 = time.perf_counter()
result = train(load_config(spec["config"], environ={}), log=lambda line: None)
wall = time.perf_counter() - t0
hwm = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024
rates = [json.loads(l)["tokens_per_s"] for l in open(result.run_dir / "metrics.jsonl") if '"kind": "train"' in l]
print(json.dumps({"weights": weights, "peak": hwm, "tokens_per_s": sum(rates[1:]) / max(1, len(rates[1:])),
                  "val_loss": result.eval.val_loss, "wall_s": wall}))
'''


def config(root: Path, name: str, steps: int, **model: object) -> dict[str, object]:
    return {"name": name, "runs_root": str(root / "runs"), "model": model,
            "data": {"source": "embedded", "val_fraction": 0.05},
            "train": {"task": "pretrain", "sequence_length_tokens": 128, "global_batch_size": 8, "micro_batch_size": 8,
                      "max_steps": steps, "eval_every_steps": steps, "eval_batches": 8, "log_every_steps": 5,
                      "checkpoint_every_steps": 10_000, "learning_rate": 2e-3, "warmup_steps": 5, "seed": 0,
                      "device": "cpu"}}


def make_base(root: Path) -> Path:
    """Prepare the embedded data with a trained 4096-token BPE; save a random base with it."""
    from bases import random_llama  # benchmarks/bases.py

    return random_llama(root, SHAPE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 16, 8, 4])
    args = parser.parse_args()
    import yaml

    print(cpu_line())
    root = Path(tempfile.mkdtemp(prefix="llmkit-qlora-"))
    base = make_base(root)
    rows = {}
    for bits in args.bits:
        cfg = config(root, f"b{bits}", args.steps, from_pretrained=str(base),
                     lora={"enabled": True, "r": 16, "alpha": 32.0, "base_bits": bits})
        cfg["tokenizer"] = {"kind": "pretrained"}
        path = root / f"b{bits}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        from llmkit.config.load import load_config
        from llmkit.data.prepare import prepare

        prepare(load_config(path, environ={}))
        out = subprocess.run([sys.executable, "-c", WORKER, json.dumps({"config": str(path), "base": str(base), "bits": bits})],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{bits}-bit: failed\n{out.stderr[-2000:]}")
            continue
        rows[bits] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[bits]
        print(f"base {bits:2d}-bit: weights {r['weights'] / 2**20:7.1f} MB, peak RSS {r['peak'] / 2**20:7.0f} MB, "
              f"{r['tokens_per_s']:6.0f} tokens/s, val loss {r['val_loss']:.4f} after {args.steps} steps "
              f"({r['wall_s']:.0f} s)", flush=True)
    if 32 in rows:
        for bits, r in rows.items():
            print(f"  {bits:2d}-bit weights / fp32: {r['weights'] / rows[32]['weights']:.3f}x"
                  + (f"; val loss / 16-bit: {r['val_loss'] / rows[16]['val_loss']:.4f}" if 16 in rows else ""))


if __name__ == "__main__":
    main()
