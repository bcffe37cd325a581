"""AdamW step time on this device: the for-loop, foreach and fused implementations of the installed
torch, on the parameters of the reference model (llama 6 x 384, vocabulary 8192), interleaved.

    python benchmarks/optimizer_step.py [--repeats 20]

Prints the CPU, each implementation's median step time, and checks they give the same weights
(fused and foreach are exact re-orderings of the same arithmetic: max difference shown).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmkit.config.load import validate_config
from llmkit.model.build import build_model
from llmkit.training.optim import param_groups

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"cpu: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    cfg = validate_config({"name": "opt", "model": {"architecture": "llama", "hidden_size": 384, "num_hidden_layers": 6,
                                                    "num_attention_heads": 6, "max_position_embeddings": 256},
                           "tokenizer": {"vocab_size": 8192}})
    kinds = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    models = {k: build_model(cfg.model, 8192, 0, None, 0) for k in kinds}
    opts = {}
    for kind, flags in kinds.items():
        try:
            opts[kind] = torch.optim.AdamW(param_groups(models[kind], 0.1), lr=1e-3, **flags)
        except (RuntimeError, ValueError) as exc:
            print(f"{kind}: not available ({exc})")
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in models["for-loop"].parameters()]
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(args.repeats):
        for kind, opt in opts.items():
            for p, g in zip(models[kind].parameters(), grads):
                p.grad = g.clone()
            t0 = time.perf_counter()
            opt.step()
            times[kind].append(time.perf_counter() - t0)
    n = sum(p.numel() for p in models["for-loop"].parameters())
    base = statistics.median(times["for-loop"])
    for kind, ts in times.items():
        with torch.no_grad():
            diff = max(float((a - b).abs().max()) for a, b in zip(models[kind].parameters(), models["for-loop"].parameters()))
        print(f"{kind:9} {1000 * statistics.median(ts):8.2f} ms/step ({n / 1e6:.1f} M parameters) "
              f"{base / statistics.median(ts):5.2f}x the for-loop; max weight difference {diff:.2e}")


if __name__ == "__main__":
    main()
