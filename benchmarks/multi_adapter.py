"""Several LoRA adapters on one base: aggregate tokens/s of 16 streams spread over 4 adapters
against 16 streams on one adapter, and against the base alone.

The server's decoder (``BatchDecoder`` with llmkit's decode step and an ``AdapterSet``, as
``llmkit serve --adapter ...`` runs them) decodes 16 greedy rows of 128 tokens each. The adapters
are random rank-16 LoRA adapters on every projection (made with peft). Rounds interleave the
three cases; medians of the per-round ratios are printed.

Target (issue 34): 16 streams over 4 adapters at least 0.8x the tokens/s of 16 streams on one.

Usage: python benchmarks/multi_adapter.py [--model 100m|tiny] [--rounds 3] [--streams 16] [--tokens 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_line  # noqa: E402
from serve_load import MODELS, make_model, model_config  # noqa: E402


def rate(model, tok, step, adapters, slots, tokens) -> float:  # type: ignore[no-untyped-def]
    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.sampling import SamplingParams

    decoder = BatchDecoder(model, tok, fast=step, adapters=adapters)
    prompts = [tok.encode(f"Request {i}: the for statement") for i in range(len(slots))]
    params = [SamplingParams(max_new_tokens=tokens, temperature=0, ignore_eos=True, adapter=s) for s in slots]
    started = time.perf_counter()
    made = sum(ev.token_id is not None for ev in decoder.add(prompts, params, list(range(len(prompts)))))
    while decoder:
        made += sum(ev.token_id is not None for ev in decoder.step())
    return made / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="100m", choices=tuple(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    import peft
    import torch

    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.generate.fastpath import DecodeStep
    from llmkit.model.load import load_for_inference
    from llmkit.model.multilora import AdapterSet

    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), model_config(args.model))
        model, tok, _ = load_for_inference(Path(tmp), dtype="fp32")
        tok = load_tokenizer(tmp)
        plain = copy.deepcopy(model)
        for i in range(4):
            torch.manual_seed(i)
            peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                target_modules="all-linear")).save_pretrained(f"{tmp}/a{i}")
        adapters = AdapterSet(model)
        slots = [adapters.load(f"a{i}", f"{tmp}/a{i}") for i in range(4)]
    step, base_step = DecodeStep(model), DecodeStep(plain)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; 4 adapters of rank 16 on "
          f"every projection; {args.streams} streams x {args.tokens} tokens")
    one = [slots[0]] * args.streams
    spread = [slots[i % 4] for i in range(args.streams)]
    rate(model, tok, step, adapters, one[:2], 8)  # warm-up
    mixed_ratio, base_ratio = [], []
    for r in range(args.rounds):
        on_one = rate(model, tok, step, adapters, one, args.tokens)
        over_four = rate(model, tok, step, adapters, spread, args.tokens)
        base = rate(plain, tok, base_step, None, [0] * args.streams, args.tokens)
        mixed_ratio.append(over_four / on_one)
        base_ratio.append(on_one / base)
        print(f"round {r + 1}: one adapter {on_one:.1f} tok/s | four adapters {over_four:.1f} tok/s "
              f"({over_four / on_one:.2f}x) | base without adapters {base:.1f} tok/s")
    print(f"four adapters / one: median {statistics.median(mixed_ratio):.2f}x (target >= 0.8); one adapter / bare base: "
          f"median {statistics.median(base_ratio):.2f}x")


if __name__ == "__main__":
    main()
