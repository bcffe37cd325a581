"""How right is `llmkit plan`? Predicted vs measured peak memory and step time on this CPU.

Each configuration runs in a fresh subprocess: build the model (fp32 weights; bf16 with fp32
masters where the precision policy keeps bf16 weights), give what building freed back to the OS
(glibc's malloc_trim: otherwise the steps partly reuse memory the baseline already counts, and the
measured peak depends on what ran before), reset the process's peak-RSS mark
(/proc/self/clear_refs = 5) and read its RSS as the baseline, run 3 training steps exactly as
llmkit's loop does (autocast, llmkit's chunked loss, its AdamW and param groups, clipping, the
masters' copies; ``torch.compile`` for the compiled rows, compiled in an extra warm-up step),
then read the peak RSS (VmHWM). Measured memory = peak - baseline; predicted =
everything `llmkit.planning.memory` counts above the weights. Step time: predicted by
`llmkit.planning.compute.step_breakdown` from this CPU's primitives as `llmkit plan --this-machine`
measures them (`llmkit.planning.measure`: each GEMM shape, one layer's attention, the loss over the
logits, copy bandwidth; the model itself is not timed for the prediction), printed by component;
measured = the best of steps 2-3. Then ``--rounds`` - 1 more times (5 rounds in all by default) the
plan measures the primitives again and two more steps are timed, in turn, so that prediction and
measurement see the same drift of this machine's speed. The fastest prediction is compared with
the fastest measured step ("err"): a busy or throttled machine only ever slows both down, so the
fastest of each is the pair least disturbed; "med err" compares the medians, and "spread" is how
far the repeated predictions lay apart (their range over their median).

On a GPU (``--device cuda``) memory is measured as torch.cuda.max_memory_allocated above the
allocation after the model is built (the caching allocator's reserve and the CUDA context are
not counted: the plan adds those separately as overhead), and the step-time primitives are
measured on that GPU the same way.

LoRA rows also print the peak with the frozen base's weights (planned at model.lora.base_bits vs
the loaded model's bytes); that total is what their memory error counts.

Usage: python benchmarks/plan_accuracy.py [--device cpu|cuda] [--only LABEL-PART] [--rounds 5]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

CONFIGS = [
    ("llama 4x192 mb8 s256", {}, {"micro": 8}),
    ("llama 4x192 mb16 s256", {}, {"micro": 16}),
    ("llama 4x192 mb8 s128", {"train": {"sequence_length_tokens": 128}}, {"micro": 8}),
    ("llama 8x192 mb8 s256", {"model": {"num_hidden_layers": 8}}, {"micro": 8}),
    ("llama 4x384 mb8 s256", {"model": {"hidden_size": 384}}, {"micro": 8}),
    ("llama 4x384 mb8 ckpt", {"model": {"hidden_size": 384}, "train": {"gradient_checkpointing": True}}, {"micro": 8}),
    ("llama 6x384 mb8 fp32", {"model": {"hidden_size": 384, "num_hidden_layers": 6}, "train": {"precision": "fp32"}}, {"micro": 8}),
    ("gpt2 4x256 mb8 s256", {"model": {"architecture": "gpt2", "hidden_size": 256, "num_attention_heads": 8,
                                       "num_key_value_heads": None}}, {"micro": 8}),
    ("llama 4x192 mb8 bf16 autocast", {"train": {"precision": "bf16"}}, {"micro": 8}),
    ("llama 2x384 V65536 mb8", {"model": {"hidden_size": 384, "num_hidden_layers": 2}}, {"micro": 8, "vocab": 65536}),
    ("llama 6x384 mb8 compiled", {"model": {"hidden_size": 384, "num_hidden_layers": 6}}, {"micro": 8, "compile": True}),
    ("llama 6x384 fp32 compiled", {"model": {"hidden_size": 384, "num_hidden_layers": 6}, "train": {"precision": "fp32"}},
     {"micro": 8, "compile": True}),
    ("llama 4x384 LoRA mb8", {"model": {"hidden_size": 384, "lora": {"enabled": True},
                                       # the worker builds the base from the config's shape; the path only
                                       # satisfies validation (LoRA needs a base) and is never read
                                       "from_pretrained": "random-base"}}, {"micro": 8}),
]
# LoRA on a ~100 M and a ~150 M llama-style base at 32, 16 and 4 bits (model.lora.base_bits: the
# worker saves the built base and loads it back at those bits, as `llmkit train` does)
_SHAPES = {"100M": {"hidden_size": 768, "num_hidden_layers": 14, "num_attention_heads": 12, "num_key_value_heads": 4,
                    "intermediate_size": 2048},
           "150M": {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16, "num_key_value_heads": 4,
                    "intermediate_size": 2816}}
CONFIGS += [(f"LoRA {size} {bits}-bit mb4", {"model": {**shape, "from_pretrained": "random-base",
                                                       "lora": {"enabled": True, "r": 16, "base_bits": bits}}},
             {"micro": 4}) for size, shape in _SHAPES.items() for bits in (32, 16, 4)]

WORKER = r'''
import json, sys, time
import torch
from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.model.build import build_model
from llmkit.model.lora import apply_lora
from llmkit.config.derived import train_precision
from llmkit.device import autocast, resolve_precision
from llmkit.objectives.lm import OBJECTIVE as LM
from llmkit.training.master import MasterWeights, measured_step
from llmkit.training.optim import make_optimizer
from llmkit.planning.compute import step_breakdown
from llmkit.planning.measure import measure_rates

def merge(a, b):
    for k, v in b.items():
        a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else v
    return a

spec = json.loads(sys.argv[1])
vocab = spec.get("vocab", 8192)
data = merge(load_preset("tiny"), spec["overrides"])
data["model"]["max_position_embeddings"] = 512
data["tokenizer"]["vocab_size"] = vocab
data["train"]["compile"] = spec.get("compile", False)
cfg = validate_config(data)
device = torch.device(spec["device"])
cuda = device.type == "cuda"
precision = resolve_precision(cfg.train.precision, device)
def predict():
    rates = measure_rates(precision, spec["device"])
    return step_breakdown(cfg, spec["micro"], rates, precision), rates
breakdown, rates = predict()
model = build_model(cfg.model, vocab, 0, None, seed=0).to(device)
if cfg.model.lora.enabled and cfg.model.lora.base_bits < 32:  # loaded back at its bits, as train loads a base
    import tempfile
    from llmkit.model.build import load_model
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    del model
    model = load_model(folder, False, base_bits=cfg.model.lora.base_bits, device=device)
from llmkit.model.quantize import weight_bytes
weights = weight_bytes(model)
if cfg.train.gradient_checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.config.use_cache = False
if cfg.model.lora.enabled:
    model = apply_lora(model, cfg.model.lora, False)
model.train()
masters = None
if train_precision(cfg, device, compute=precision).bf16_weights:
    masters = MasterWeights(model)
opt = make_optimizer(model, cfg.train, device.type, masters)
step_model = torch.compile(model) if cfg.train.compile else model
mb, seq = spec["micro"], cfg.train.sequence_length_tokens
x = torch.randint(0, vocab, (mb, seq + 1), device=device)
batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
def rss(field):
    return int([l for l in open("/proc/self/status") if l.startswith(field)][0].split()[1]) * 1024
def sync():
    if cuda:
        torch.cuda.synchronize(device)
def step():
    with autocast(device, precision):
        loss = LM.loss(step_model, batch, chunked=True)[0]
    loss.backward()
    measured_step(model, opt, masters)
if cfg.train.compile:
    step()  # the compile, before the baseline (AdamW's moments are made again in step 1)
    opt.state.clear()
import ctypes, gc
gc.collect()  # what building, loading (or compiling) freed goes back to the OS before the baseline, so that
if not cuda:  # the steps' peak shows in full rather than partly reusing memory the baseline already counts
    ctypes.CDLL("libc.so.6").malloc_trim(0)
if cuda:
    sync()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
else:
    open("/proc/self/clear_refs", "w").write("5")
    base = rss("VmRSS")
def timed_steps(n):
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times
measured = [min(timed_steps(3 if not cfg.train.compile else 4)[1:])]  # the first: warm-up
peak = torch.cuda.max_memory_allocated(device) if cuda else rss("VmHWM")
predicted = [breakdown]
for _ in range(spec["rounds"] - 1):  # the plan's measurement, then the steps, in turn: both see the same drift
    predicted.append(predict()[0])
    measured.append(min(timed_steps(2)))
print(json.dumps({"measured_bytes": peak - base, "weight_bytes": weights, "step_s": measured, "breakdown": predicted,
                  "bandwidth": rates.bandwidth_bytes_s, "precision": precision}))
'''


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--only", default="", help="only the configurations whose label contains this")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the plan's measurement and the measured steps, in turn (medians reported)")
    args = parser.parse_args()
    kind = "cpu" if args.device == "cpu" else "gpu"
    from llmkit.config.load import validate_config
    from llmkit.config.presets import load_preset
    from llmkit.planning.memory import training_memory

    print(f"{'configuration':24} {'pred MB':>8} {'meas MB':>8} {'err':>7} {'pred ms':>8} {'meas ms':>8} {'err':>7} "
          f"{'med err':>8} {'spread':>7}   predicted ms by component (the fastest prediction)")
    worst_mem = worst_time = worst_median = 0.0
    for label, overrides, opts in CONFIGS:
        if args.only not in label:
            continue
        out = subprocess.run([sys.executable, "-c", WORKER, json.dumps({"overrides": overrides, "device": args.device,
                                                                        "rounds": args.rounds, **opts})],
                             capture_output=True, text=True, check=True)
        meas = json.loads(out.stdout.strip().splitlines()[-1])
        data = load_preset("tiny")
        for k, v in overrides.items():
            data[k] = {**data.get(k, {}), **v}
        data["model"]["max_position_embeddings"] = 512
        data["tokenizer"]["vocab_size"] = opts.get("vocab", 8192)
        data["train"]["compile"] = opts.get("compile", False)
        cfg = validate_config(data)
        planned = training_memory(cfg, opts["micro"], meas["precision"], device_kind=kind)
        pred = planned.above_weights_bytes
        sums = [sum(b.values()) for b in meas["breakdown"]]
        pred_s, meas_s = min(sums), min(meas["step_s"])
        median_err = statistics.median(sums) / statistics.median(meas["step_s"]) - 1
        fastest = meas["breakdown"][sums.index(pred_s)]  # the fastest prediction's parts
        parts = " ".join(f"{k[:4]} {1000 * v:4.0f}" for k, v in fastest.items())
        spread = (max(sums) - min(sums)) / statistics.median(sums)
        mem_err = pred / meas["measured_bytes"] - 1
        time_err = pred_s / meas_s - 1
        # a LoRA row's peak is its frozen base plus the rest: the error counted is that of the whole
        worst_mem = max(worst_mem, 0.0 if cfg.model.lora.enabled else abs(mem_err))
        worst_time = max(worst_time, abs(time_err))
        worst_median = max(worst_median, abs(median_err))
        print(f"{label:24} {pred / 2**20:8.0f} {meas['measured_bytes'] / 2**20:8.0f} {100 * mem_err:+6.0f}% "
              f"{1000 * pred_s:8.0f} {1000 * meas_s:8.0f} {100 * time_err:+6.0f}% {100 * median_err:+7.0f}% "
              f"{100 * spread:6.0f}%   {parts}")
        if cfg.model.lora.enabled:  # the frozen base too: planned weights vs the loaded model's bytes
            total_pred, total_meas = pred + planned.weights_bytes, meas["measured_bytes"] + meas["weight_bytes"]
            total_err = total_pred / total_meas - 1
            worst_mem = max(worst_mem, abs(total_err))
            print(f"{'  with the weights':24} {total_pred / 2**20:8.0f} {total_meas / 2**20:8.0f} {100 * total_err:+6.0f}%"
                  f"   (weights: planned {planned.weights_bytes / 2**20:.0f} MB, loaded {meas['weight_bytes'] / 2**20:.0f} MB)")
    print(f"worst memory error {100 * worst_mem:.0f}% (target 15%), worst step-time error {100 * worst_time:.0f}% "
          f"(fastest vs fastest; target 25%), {100 * worst_median:.0f}% median vs median")


if __name__ == "__main__":
    main()
