"""Prefix caching: time to first token with a ~1,000-token shared system prompt on a hit and on a
miss, and aggregate tokens/s of 16 streams sharing that prompt with and without the cache.

Runs the server's decoder in-process (``BatchDecoder`` with llmkit's decode step and a
``PrefixCache``, as ``llmkit serve`` runs them), on the ~100M-parameter llama of
benchmarks/serve_load.py (context raised to 2,048) or the tiny one. TTFT is the time of ``add``:
the prefill and the first sampled token. A miss is a prompt whose system prompt differs in its
first token (nothing cached); a hit shares the system prompt with a prompt served before. Each is
measured several times, interleaved; medians and ranges are printed.

Target (issue 34): TTFT on a hit at least 5x lower than on a miss.

Usage: python benchmarks/prefix_cache.py [--model 100m|tiny] [--repeats 5] [--streams 16] [--tokens 64]
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
from serve_load import MODELS, make_model, model_config  # noqa: E402


def ttft(decoder, prompt, params) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    decoder.add([prompt], [params], ["x"])
    elapsed = time.perf_counter() - started
    decoder.cancel("x")
    decoder.step()
    return elapsed


def streams_rate(model, tok, step, cache, prompts, tokens) -> float:  # type: ignore[no-untyped-def]
    """Tokens/s of all prompts decoded together (prefills included), each ``tokens`` long."""
    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.sampling import SamplingParams

    decoder = BatchDecoder(model, tok, fast=step, prefix_cache=cache, namespace="m")
    params = [SamplingParams(max_new_tokens=tokens, temperature=0, ignore_eos=True)] * len(prompts)
    started = time.perf_counter()
    made = sum(ev.token_id is not None for ev in decoder.add(prompts, params, list(range(len(prompts)))))
    while decoder:
        made += sum(ev.token_id is not None for ev in decoder.step())
    return made / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="100m", choices=tuple(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    from llmkit.data.tokenizer import load_tokenizer
    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.prefix import PrefixCache
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference
    from llmkit.serving.engine import decode_step

    MODELS[args.model] = {**MODELS[args.model], "max_position_embeddings": 2048}
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), model_config(args.model))
        model, tok, _ = load_for_inference(Path(tmp), dtype="fp32")
        tok = load_tokenizer(tmp)
    step = decode_step(model, tok, compiled=False, pack="auto")
    system = " ".join(f"Rule {i}: answer questions about the Python language briefly, exactly and politely."
                      for i in range(200))
    base = tok.encode(system)[:1000]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {args.model}; shared prompt "
          f"{len(base)} tokens")
    question = tok.encode(" Question: what does the for statement do?")
    one = SamplingParams(max_new_tokens=1, temperature=0)
    cache = PrefixCache(1 << 30)
    warm = BatchDecoder(model, tok, fast=step, prefix_cache=cache, namespace="m")
    ttft(warm, base + question, one)  # stores the shared prompt's blocks; first calls warm up
    hits, misses = [], []
    for r in range(args.repeats):
        cold = BatchDecoder(model, tok, fast=step, prefix_cache=PrefixCache(1 << 30), namespace="m")
        misses.append(ttft(cold, [base[0] + 1 + r] + base[1:] + question, one))
        hits.append(ttft(warm, base + question[:-1] + [question[-1] + r + 1], one))
    print(f"TTFT miss: median {1000 * statistics.median(misses):.1f} ms ({1000 * min(misses):.1f}-{1000 * max(misses):.1f})")
    print(f"TTFT hit:  median {1000 * statistics.median(hits):.1f} ms ({1000 * min(hits):.1f}-{1000 * max(hits):.1f})")
    print(f"miss / hit: {statistics.median(misses) / statistics.median(hits):.1f}x (target >= 5x); "
          f"{cache.stats.cached_tokens} tokens served from the cache")
    prompts = [base + tok.encode(f" Question {i}: what is a list?") for i in range(args.streams)]
    for r in range(2):
        with_cache = streams_rate(model, tok, step, cache, prompts, args.tokens)
        without = streams_rate(model, tok, step, None, prompts, args.tokens)
        print(f"round {r + 1}: {args.streams} streams sharing the prompt, {args.tokens} tokens each: with the cache "
              f"{with_cache:.1f} tok/s, without {without:.1f} tok/s ({with_cache / without:.2f}x)")


if __name__ == "__main__":
    main()
