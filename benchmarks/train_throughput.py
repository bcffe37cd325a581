"""Training throughput: llmkit's loop vs a plain GPT vs a bare loop vs the machine's matmul peak.

Reference model (issue 5): llama, 6 layers, hidden 384, 6 heads, context 256, micro-batch 8,
vocabulary 8192. In one process, interleaved (plain, bare, llmkit, plain, ...), in every mode:
fp32, and on CPUs with fast bf16 (AVX-512 BF16 / AMX) bf16 autocast and bf16-weights (bf16
weights and activations, fp32 masters: what ``precision: auto`` picks in one process); each
eager and under ``torch.compile`` (``--no-compile`` skips those rows):

- the matmul peak of this device (best of repeated 1024x1024 matmuls) per dtype;
- a plain GPT: the same shapes written in plain PyTorch (benchmarks/plain_gpt.py), the same
  loop, data, precision (bf16: autocast) and AdamW: the reference llmkit must reach;
- a bare loop (eager): the same HF model, AdamW, random windows of the same token file,
  autocast, forward / backward / step, nothing else;
- `llmkit train` on the same config (its metrics.jsonl, steps after warm-up).

Then where the bf16 time goes (profile by kind of work), and the loss over the vocabulary with
full logits vs in chunks (llmkit.objectives.head_loss): step time and peak RSS, fresh process each.

Tokens/s is micro-batch x context / step time; MFU = tokens/s x FLOPs per token (6N + 12·L·H·T)
over the measured peak. Prints which of issue 18's targets apply to the CPU it saw.

The loops run interleaved, the order reversed every other repeat; llmkit / plain GPT is also
given per repeat (the two measured back to back), whose spread is this machine's noise.

Usage: python benchmarks/train_throughput.py [--steps 8] [--repeats 4] [--no-compile] [--loss-only]
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
from llmkit.planning.compute import flops_per_token
from llmkit.planning.measure import matmul_peak_flops
from llmkit.rundir import RunDir
from llmkit.training.loop import train
from llmkit.training.optim import make_optimizer

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)

WARMUP = 2


def reference_config(root: Path, name: str, precision: str, steps: int, compiled: bool = False):  # type: ignore[no-untyped-def]
    return validate_config({
        "name": name, "runs_root": str(root),
        "model": {"architecture": "llama", "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "max_position_embeddings": 256},
        "tokenizer": {"vocab_size": 8192},
        "data": {"source": "embedded", "include_stdlib_source": True},
        "train": {"sequence_length_tokens": 256, "global_batch_size": 8, "micro_batch_size": 8,
                  "max_steps": steps, "warmup_steps": 1, "precision": precision, "device": "cpu",
                  "log_every_steps": 1, "eval_every_steps": 10_000, "checkpoint_every_steps": 10_000,
                  "compile": compiled},
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


def plain_loop(cfg, data_dir: Path, steps: int, compiled: bool = False) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per step of the plain-PyTorch GPT (benchmarks/plain_gpt.py) on the same data, shapes,
    precision (bf16: autocast) and optimizer: the reference llmkit's loop must match. ``compiled``:
    the model under torch.compile (the compile itself happens in the warm-up steps)."""
    from plain_gpt import PlainGPT

    device = torch.device("cpu")
    precision = resolve_precision(cfg.train.precision, device)
    tokens = open_tokens(data_dir, "train")
    torch.manual_seed(0)
    model = PlainGPT(8192, 384, 6, 6, 1024, 256)
    model.train()
    opt = make_optimizer(model, cfg.train, "cpu")
    if compiled:
        model = torch.compile(model)
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
              ("loss", ("log_softmax", "nll_loss", "LinearCrossEntropy", "logsumexp", "exp_", "sub_", "gather")), ("optimizer", ("_foreach", "addcdiv", "lerp", "_fused_adam", "vector_norm")))


def llmkit_step_ms(precision: str) -> dict[str, float]:
    """Milliseconds per step by kind of work (torch.profiler self CPU time over 3 steps) of the
    step llmkit's loop takes on the reference model in ``precision``: the chunked loss, bf16
    weights with fp32 masters for bf16-weights, fused AdamW, clipping."""
    from torch.profiler import ProfilerActivity, profile

    from llmkit.objectives.lm import OBJECTIVE as LM
    from llmkit.training.master import MasterWeights, measured_step

    cfg = reference_config(Path(tempfile.gettempdir()), "prof", precision, 1)
    model = build_model(cfg.model, 8192, 0, None, 0)
    model.config.use_cache = False
    model.train()
    masters = MasterWeights(model) if precision == "bf16-weights" else None
    opt = make_optimizer(model, cfg.train, "cpu", masters)
    x = torch.randint(0, 8192, (8, 257))
    batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
    compute = resolve_precision(precision, torch.device("cpu"))

    def step() -> None:
        with autocast(torch.device("cpu"), compute):
            loss = LM.loss(model, batch, chunked=True)[0]
        loss.backward()
        measured_step(model, opt, masters)

    for _ in range(WARMUP):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    out = {name: 0.0 for name, _ in COMPONENTS} | {"everything else": 0.0}
    for evt in prof.key_averages():
        kind = next((name for name, keys in COMPONENTS if any(k in evt.key for k in keys)), "everything else")
        out[kind] += evt.self_cpu_time_total / 1000 / 3
    return out


def llmkit_loop(cfg, root: Path, base: Path, steps: int, i: int) -> list[float]:  # type: ignore[no-untyped-def]
    run = root / f"{cfg.name}-{i}"
    shutil.copytree(base / "tokenizer", run / "tokenizer")
    shutil.copytree(base / "data", run / "data")
    train(cfg, run_dir=run, log=lambda _: None)
    recs = [r for r in RunDir(run).read_metrics() if r["kind"] == "train"][WARMUP:]
    shutil.rmtree(run)
    return [8 * 256 / r["tokens_per_s"] for r in recs]


def targets(line: str) -> str:
    """Which of issue 18's targets apply to this CPU."""
    if "amx_bf16" in line:
        return "AMX: bf16 >= 2.5x fp32 and >= 35% of the bf16 matmul peak; fp32 MFU >= 70%; llmkit >= plain GPT"
    if "avx512_bf16" in line:
        return "AVX512-BF16 without AMX: bf16 >= 1.8x fp32; fp32 MFU >= 70%; llmkit >= plain GPT"
    return "no fast bf16: fp32 MFU >= 70%; llmkit >= plain GPT"


LOSS_CHILD = """
import json, resource, sys, time, torch
from llmkit.config.load import validate_config
from llmkit.objectives.lm import OBJECTIVE as LM
from llmkit.model.build import build_model
vocab, hidden, layers, chunked, bf16 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5] == "1"
cfg = validate_config({"name": "x", "model": {"architecture": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
                       "num_attention_heads": 6, "max_position_embeddings": 256}, "tokenizer": {"vocab_size": vocab}})
model = build_model(cfg.model, vocab, 0, None, seed=0)
model.train()
x = torch.randint(0, vocab, (8, 257))
batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
def rss(field):  # ru_maxrss would be inherited from the parent through fork: read VmHWM after a reset
    return int([l for l in open("/proc/self/status") if l.startswith(field)][0].split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
base = rss("VmRSS")
times = []
for _ in range(4):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = LM.loss(model, batch, chunked)[0]
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
print(json.dumps({"s": min(times[1:]), "rss_mb": rss("VmHWM") - base}))
"""


def loss_section() -> None:
    """Forward + backward with the loss over full (tokens x V) logits vs in chunks of tokens
    (llmkit.objectives.head_loss), each in a fresh process: best step time, and peak RSS above the
    built model (activations, logits, gradients)."""
    import subprocess
    import sys

    print("loss over the vocabulary, forward + backward of a micro-batch of 8 x 256 tokens (fresh process each):")
    print(f"{'model':34} {'precision':9} {'full s':>7} {'chunked s':>9} {'full MB':>8} {'chunked MB':>10}  (MB: peak above the model)")
    for vocab, hidden, layers in ((8192, 384, 6), (65536, 384, 2)):
        for bf16 in ("0", "1"):
            got = {}
            for chunked in ("0", "1", "0", "1"):  # interleaved, best of two
                out = subprocess.run([sys.executable, "-c", LOSS_CHILD, str(vocab), str(hidden), str(layers), chunked, bf16],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                prev = got.get(chunked)
                got[chunked] = r if prev is None else {"s": min(prev["s"], r["s"]), "rss_mb": min(prev["rss_mb"], r["rss_mb"])}
            print(f"{f'llama {layers}x{hidden}, vocabulary {vocab}':34} {'bf16' if bf16 == '1' else 'fp32':9} "
                  f"{got['0']['s']:7.3f} {got['1']['s']:9.3f} {got['0']['rss_mb']:8.0f} {got['1']['rss_mb']:10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the compiled rows (each compile takes about a minute on 2 cores)")
    parser.add_argument("--loss-only", action="store_true", help="only the loss section (full logits vs chunked)")
    args = parser.parse_args()
    if args.loss_only:
        loss_section()
        return
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
        plain_by_repeat: dict[str, list[list[float]]] = {}  # step times of each repeat, by mode
        ours_by_repeat: dict[str, list[list[float]]] = {}
        # llmkit's precisions: fp32, and on fast-bf16 CPUs bf16 autocast and bf16-weights (what auto
        # picks for one process); the plain GPT runs fp32 or bf16 autocast
        modes = ["fp32"] + (["bf16", "bf16-weights"] if auto != "fp32" else [])
        for compiled in [False] + ([True] if args.compile else []):
            for precision in modes:
                dtype = torch_dtype(resolve_precision(precision, torch.device("cpu")))
                cfg = reference_config(root, f"run-{precision}", precision, args.steps + WARMUP, compiled)
                bare: list[float] = []
                plain: list[float] = []
                ours: list[float] = []
                peaks = []
                mode = precision + (" compiled" if compiled else "")
                for i in range(args.repeats):  # interleaved, the order reversed every other repeat:
                    # drift within a repeat hits plain and llmkit alike
                    peaks.append(matmul_peak_flops(torch.device("cpu"), dtype, seconds=0.5))
                    for loop in (("plain", "bare", "llmkit") if i % 2 == 0 else ("llmkit", "bare", "plain")):
                        if loop == "plain" and precision != "bf16-weights":
                            plain_i = plain_loop(cfg, base / "data", args.steps + WARMUP + (3 if compiled else 0), compiled)
                            plain_by_repeat.setdefault(mode, []).append(plain_i)
                            plain += plain_i
                        elif loop == "bare" and precision != "bf16-weights" and not compiled:
                            bare += bare_loop(cfg, base / "data", args.steps + WARMUP)
                        elif loop == "llmkit":
                            ours_i = llmkit_loop(cfg, root, base, args.steps, i)
                            ours_by_repeat.setdefault(mode, []).append(ours_i)
                            ours += ours_i
                peak = max(peaks)
                peaks_by[precision] = peaks
                for label, secs in (("plain GPT", plain), ("bare loop", bare), ("llmkit train", ours)):
                    if secs:
                        tok_s = 8 * 256 / statistics.median(secs)
                        rows.append((mode, label, tok_s, tok_s * fpt / peak, peak))
        print(f"{'mode':22} {'loop':14} {'tokens/s':>10} {'MFU':>7} {'peak GFLOP/s':>13}")
        for mode, label, tok_s, mfu, peak in rows:
            print(f"{mode:22} {label:14} {tok_s:10.0f} {100 * mfu:6.1f}% {peak / 1e9:13.0f}")
        by = {(p, l): t for p, l, t, _, _ in rows}
        for mode in dict.fromkeys(p for p, _, _, _, _ in rows):
            ours_tok = by[(mode, "llmkit train")]
            plain_mode = mode.replace("bf16-weights", "bf16")
            line = f"{mode}: llmkit / plain GPT ({plain_mode}) = {ours_tok / by[(plain_mode, 'plain GPT')]:.3f} (target >= 1.0)"
            if (mode, "bare loop") in by:
                line += f"; llmkit / bare = {ours_tok / by[(mode, 'bare loop')]:.3f}"
            # the same ratio within each repeat (plain and llmkit back to back): the spread is this
            # machine's noise
            each = [statistics.median(p) / statistics.median(o)
                    for p, o in zip(plain_by_repeat[plain_mode], ours_by_repeat[mode])]
            line += f"; per repeat {', '.join(f'{r:.3f}' for r in each)} (median {statistics.median(each):.3f})"
            print(line)
        fp32 = by[("fp32", "llmkit train")]
        for mode in dict.fromkeys(p for p, _, _, _, _ in rows):
            if mode != "fp32":
                print(f"{mode} / fp32 eager tokens/s (llmkit): {by[(mode, 'llmkit train')] / fp32:.2f}x")
        print(f"targets on this CPU: {targets(cpu_line())}")
        if auto != "fp32":
            # where the bf16 speed-up is lost: llmkit's step, by kind of work, fp32 vs bf16 weights
            parts = {prec: llmkit_step_ms(prec) for prec in ("fp32", "bf16-weights")}
            print(f"{'work (llmkit step, profiled)':28} {'fp32 ms':>8} {'bf16w ms':>8} {'speed-up':>9}")
            for kind in parts["fp32"]:
                a, b = parts["fp32"][kind], parts["bf16-weights"][kind]
                print(f"{kind:28} {a:8.1f} {b:8.1f} {a / b if b else float('nan'):8.2f}x")
            fp32_total, bf16_total = sum(parts["fp32"].values()), sum(parts["bf16-weights"].values())
            print(f"{'total':28} {fp32_total:8.1f} {bf16_total:8.1f} {fp32_total / bf16_total:8.2f}x")
            ratio = max(peaks_by["bf16-weights"]) / max(peaks_by["fp32"])
            matmul = parts["fp32"]["matmul"]
            bound = fp32_total / (matmul / ratio + fp32_total - matmul)
            print(f"bf16/fp32 matmul peak ratio {ratio:.2f}x; step speed-up if only the matmuls ran that much "
                  f"faster: {bound:.2f}x; if everything else also ran 2x faster: "
                  f"{fp32_total / (matmul / ratio + (fp32_total - matmul) / 2):.2f}x")
        loss_section()
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        print(json.dumps({"rows": [dict(zip(("precision", "loop", "tokens_per_s", "mfu", "peak_flops"), r)) for r in rows]}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
