"""What differential privacy (privacy.dp) costs: step time and utility, DP-SGD vs the normal loop.

Task: a generated classification set (``--examples`` texts whose label follows a word rule, as in
the test suite's classification test, with filler words so the model must find the rule), a
llama of 2 layers x 64 trained from scratch for ``--steps`` steps at the same learning rate and
expected batch, once normally and once with ``privacy.dp`` at ``--epsilon`` (delta 1 / (10 N)).
Also an SFT run of the same model size for the step-time ratio on a language-modelling loss.

Prints: median step time of each (after 3 warm-up steps) and their ratio, validation accuracy
(classification) and loss (SFT) of each, and the epsilon spent. The CPU it ran on comes first.

    python benchmarks/dp_cost.py [--examples 2000] [--steps 150] [--epsilon 8]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from llmkit.config.load import load_config
from llmkit.data.prepare import prepare
from llmkit.training.loop import train

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)

WORDS = ["apple", "river", "stone", "cloud", "glass", "paper", "tiger", "maple", "ocean", "amber"]


def write_sets(root: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    cls, sft = root / "cls.jsonl", root / "sft.jsonl"
    rows = []
    for i in range(n):
        good = rng.random() < 0.5
        words = [rng.choice(WORDS) for _ in range(6)]
        words.insert(rng.randrange(7), "good" if good else "bad")
        rows.append({"text": " ".join(words), "label": "pos" if good else "neg"})
    cls.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "completion": f"{i} plus one is {i + 1}."})
                           + "\n" for i in range(n)))
    return cls, sft


def run(root: Path, name: str, task: str, path: Path, steps: int, dp: dict | None) -> dict:  # type: ignore[type-arg]
    data = {"name": name, "runs_root": str(root / "runs"),
            "model": {"architecture": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "max_position_embeddings": 64},
            "tokenizer": {"vocab_size": 512},
            "data": {"classify_path" if task == "classify" else "sft_path": str(path), "val_fraction": 0.1},
            "train": {"task": task, "sequence_length_tokens": 32, "global_batch_size": 32, "micro_batch_size": 32,
                      "max_steps": steps, "learning_rate": 0.003, "min_learning_rate": 0.0003, "warmup_steps": 10,
                      "precision": "fp32", "eval_every_steps": steps, "eval_batches": 8, "log_every_steps": 1,
                      "checkpoint_every_steps": steps, "device": "cpu"},
            "privacy": {"dp": dp or {"enabled": False}}}
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path, environ={})
    prepare(cfg)
    result = train(cfg, log=lambda _: None)
    recs = [json.loads(x) for x in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    times = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(train_recs, train_recs[1:])][3:]
    return {"step_s": statistics.median(times), "eval": result.eval.metrics() if result.eval else {},
            "epsilon": train_recs[-1].get("epsilon")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--epsilon", type=float, default=8.0)
    args = parser.parse_args()
    print(f"cpu: {cpu_line()}")
    root = Path(tempfile.mkdtemp(prefix="llmkit-bench-dp-"))
    try:
        cls, sft = write_sets(root, args.examples)
        dp = {"enabled": True, "target_epsilon": args.epsilon, "max_grad_norm": 1.0}
        rows = {}
        for task, path in (("classify", cls), ("sft", sft)):
            rows[(task, "normal")] = run(root, f"{task}-normal", task, path, args.steps, None)
            rows[(task, "dp")] = run(root, f"{task}-dp", task, path, args.steps, dp)
        print(f"{'task':9} {'loop':7} {'step ms':>8} {'val loss':>9} {'val acc':>8} {'epsilon':>8}")
        for (task, loop), r in rows.items():
            acc = r["eval"].get("val_accuracy")
            eps = r["epsilon"]
            print(f"{task:9} {loop:7} {1000 * r['step_s']:8.1f} {r['eval'].get('val_loss', float('nan')):9.4f} "
                  f"{acc if acc is not None else float('nan'):8.3f} {eps if eps is not None else float('nan'):8.3f}")
        for task in ("classify", "sft"):
            ratio = rows[(task, "dp")]["step_s"] / rows[(task, "normal")]["step_s"]
            print(f"{task}: DP step / normal step = {ratio:.2f}x")
        print(f"utility: classification accuracy {rows[('classify', 'normal')]['eval'].get('val_accuracy'):.3f} -> "
              f"{rows[('classify', 'dp')]['eval'].get('val_accuracy'):.3f} at epsilon {args.epsilon} "
              f"({args.examples} examples, {args.steps} steps)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
