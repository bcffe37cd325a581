"""JSON-schema constrained decoding against free decoding: aggregate tokens/s of 16 streams.

The server's decoder (``BatchDecoder`` with llmkit's decode step, as ``llmkit serve`` runs it)
decodes 16 rows of 128 new tokens each, free (``ignore_eos``) or each row under a JSON schema's
grammar (llguidance). The schema is an array of at least 100 integers (0-9999), so no row can close
it within 128 tokens and both runs decode the same number of tokens per row, while every token is
masked by the grammar's structure (digits, separators), not just "anything but a quote". Rounds alternate free / constrained and
repeat; the ratio is taken within each round (this machine's speed drifts between processes).
Also printed: the time the grammar's masks take per step (llguidance computing 16 bitmasks and
their expansion over the vocabulary), the part of the difference that is not model time.

Target (issue 34): constrained at least 0.9x free at 16 streams on the ~100M model.

Usage: python benchmarks/structured_decode.py [--model 100m|tiny] [--rounds 3] [--streams 16] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_line  # noqa: E402
from serve_load import make_model, model_config  # noqa: E402

SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9999}, "minItems": 100}


def run(model, tok, step, prompts, params) -> tuple[int, float, float]:  # type: ignore[no-untyped-def]
    """(tokens made, seconds, seconds spent in the grammar's masks)."""
    from llmkit.generate import batch as batch_module
    from llmkit.generate.batch import BatchDecoder

    spent = [0.0]
    real = batch_module.mask_logits

    def timed(logits, constraints):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        out = real(logits, constraints)
        spent[0] += time.perf_counter() - t
        return out

    batch_module.mask_logits = timed
    try:
        decoder = BatchDecoder(model, tok, fast=step)
        started = time.perf_counter()
        made = sum(ev.token_id is not None for ev in decoder.add(prompts, params, list(range(len(prompts)))))
        while decoder:
            made += sum(ev.token_id is not None for ev in decoder.step())
        return made, time.perf_counter() - started, spent[0]
    finally:
        batch_module.mask_logits = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="100m", choices=("100m", "tiny"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    import torch

    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.generate.constrain import json_schema_grammar
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference
    from llmkit.serving.engine import decode_step

    print(cpu_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}, {args.streams} streams x "
          f"{args.tokens} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), model_config(args.model))
        model, tok, _ = load_for_inference(Path(tmp), dtype="fp32")
        tok = load_tokenizer(tmp)
    step = decode_step(model, tok, compiled=False, pack="auto")
    grammar = json_schema_grammar(SCHEMA)
    prompts = [tok.encode(f"Write record {i} as JSON:") for i in range(args.streams)]
    free = [SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=i, ignore_eos=True)
            for i in range(args.streams)]
    constrained = [SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=i, grammar=grammar)
                   for i in range(args.streams)]
    run(model, tok, step, prompts[:2], free[:2])  # warm-up: first calls, packing
    run(model, tok, step, prompts[:2], constrained[:2])
    ratios = []
    for r in range(args.rounds):
        n_free, s_free, _ = run(model, tok, step, prompts, free)
        n_con, s_con, masks = run(model, tok, step, prompts, constrained)
        ratio = (n_con / s_con) / (n_free / s_free)
        ratios.append(ratio)
        steps = max(1, args.tokens)
        print(f"round {r + 1}: free {n_free / s_free:7.1f} tok/s ({n_free} tokens) | constrained {n_con / s_con:7.1f} tok/s "
              f"({n_con} tokens) | ratio {ratio:.3f} | masks {1000 * masks / steps:.2f} ms a step "
              f"({100 * masks / s_con:.1f}% of the constrained run)")
    print(f"constrained / free: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f} "
          f"(target >= 0.9)")


if __name__ == "__main__":
    main()
