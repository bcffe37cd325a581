"""What each GGUF quantization type costs: file size and perplexity, measured in llama.cpp.

1. Trains a llama-style 4 x 256 model (MLP 768, vocabulary 4,096: every row a multiple of 256, so
   the k-quants apply to every matrix) on the embedded corpus through the CLI (``prepare``,
   ``train``), for ``--steps`` steps (a few minutes on 2 cores).
2. Exports it at every type (``llmkit export --format gguf --quant ...``) and runs each file in
   llama.cpp (llama-cpp-python) on the run's held-out text (``exporting.gguf_check``): perplexity
   beside the fp32 model's and beside the f16 file's, size, and greedy agreement on the run's prompts.
3. ``--families``: the same for each open family's tiny model (tests/families.py, 2 x 64, trained a
   few steps on a small SFT set): rows narrower than 256 take llama.cpp's fallback types there, so
   those ratios say the conversion is right, not what a k-quant costs a real model.

Targets (issue 35): on the trained 4 x 256 model, q4_k_m perplexity within 10% of f16 and q8_0
within 1%.

Usage: python benchmarks/gguf_quality.py [--steps 400] [--families] [--keep DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import cpu_line  # noqa: E402

TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")

CONFIG = """name: q256
runs_root: {root}
model: {{architecture: llama, hidden_size: 256, num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 4,
        intermediate_size: 768, max_position_embeddings: 256, tie_word_embeddings: false}}
tokenizer: {{kind: bpe, vocab_size: 4096}}
data: {{source: embedded}}
train: {{sequence_length_tokens: 256, global_batch_size: 16, micro_batch_size: 16, max_steps: {steps},
        learning_rate: 0.002, min_learning_rate: 0.0002, warmup_steps: 30, eval_every_steps: {steps},
        checkpoint_every_steps: {steps}, device: cpu}}
"""


def cli(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "llmkit", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"llmkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def measure(run: Path, work: Path, label: str) -> list[dict[str, object]]:
    """Every type of ``run``'s final/ as GGUF, checked in llama.cpp."""
    from llmkit.exporting.gguf import export_gguf
    from llmkit.exporting.verify import verify

    rows = []
    for quant in TYPES:
        path = export_gguf(run / "final", work / f"{label}.{quant}.gguf", quant, overwrite=True)
        report = verify(run, run / "final", gguf=path)
        g = report.gguf
        assert g is not None and g.ppl_gguf is not None
        rows.append({"label": label, "quant": quant, "bytes": path.stat().st_size, "ppl": g.ppl_gguf,
                     "ppl_fp32": g.ppl_model, "ratio_fp32": g.ppl_ratio, "greedy": (g.greedy_same, g.greedy_total),
                     "ok": g.ok, "tokens": g.ppl_tokens})
        path.unlink()
    f16 = next(r["ppl"] for r in rows if r["quant"] == "f16")
    for r in rows:
        r["ratio_f16"] = float(r["ppl"]) / float(f16)  # type: ignore[arg-type]
    return rows


def table(rows: list[dict[str, object]]) -> None:
    print(f"{'model':10} {'type':7} {'size':>10} {'ppl':>9} {'/fp32':>7} {'/f16':>7} {'greedy':>9} verdict")
    for r in rows:
        same, total = r["greedy"]  # type: ignore[misc]
        print(f"{r['label']:10} {r['quant']:7} {r['bytes'] / 2**20:8.2f}Mi {r['ppl']:9.3f} {r['ratio_fp32']:7.4f} "
              f"{r['ratio_f16']:7.4f} {same:>4}/{total:<4} {'PASS' if r['ok'] else 'FAIL'}")


def trained(root: Path, steps: int) -> Path:
    (root / "q256.yaml").write_text(CONFIG.format(root=root / "runs", steps=steps))
    for stage in ("prepare", "train"):
        cli(stage, "--config", str(root / "q256.yaml"), cwd=root)
    return root / "runs" / "q256"


def families(root: Path) -> list[dict[str, object]]:
    from tests.families import FAMILIES
    from tests.integration.training.test_families import family_run

    rows = []
    for family in FAMILIES:
        where = root / family
        where.mkdir()
        config = family_run(where, family, 32, steps=40)
        for stage in ("prepare", "train"):
            cli(stage, "--config", str(config), cwd=where)
        rows += measure(where / "runs" / family.replace(".", ""), where, family)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--families", action="store_true", help="also each family's tiny model")
    parser.add_argument("--keep", type=Path, help="work here and keep the runs (default: a temporary directory)")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        run = trained(root, args.steps)
        rows = measure(run, root, "4x256")
        table(rows)
        by = {r["quant"]: r for r in rows}
        print(f"targets: q4_k_m / f16 = {by['q4_k_m']['ratio_f16']:.4f} (at most 1.10), "
              f"q8_0 / f16 = {by['q8_0']['ratio_f16']:.4f} (at most 1.01)")
        if args.families:
            table(families(root))


if __name__ == "__main__":
    main()
