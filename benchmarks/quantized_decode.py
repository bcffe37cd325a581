"""llmkit's engine and llama.cpp side by side, in pairs at the same precision: fp32 / f32,
bf16 / bf16, int8 / q8_0, int4 / q4_0.

Models: the ~100M-parameter llama of benchmarks/serve_load.py (16 layers, hidden 768; random
weights: speed only) and llmkit's `tiny` (4 x 192). llmkit decodes as `llmkit serve` does: the
model loaded at that serve.dtype (``llmkit.wquant`` for int8 / int4), ``BatchDecoder`` with the
decode step packed as serve.pack_weights auto packs it. llama.cpp runs the GGUF ``llmkit export``
writes at the paired type, through llama-cpp-python (``create_completion``), with the same thread
count. Greedy, ``--tokens`` new tokens from the same 32-token prompt, end tokens banned on both
sides (llmkit: ignore_eos; llama.cpp: a -inf logit bias), repeats interleaved; medians and ranges.

Rows: batch-1 decode tokens/s (time to first token taken out: (n - 1) / (t_last - t_first)),
time to first token for a 200-token prompt, llmkit's aggregate tokens/s at 16 streams, file size.
Targets (issue 35): llmkit int8 batch-1 at least 1.6x its fp32; llmkit at 16 streams at least 4x
llama.cpp's single sequence; batch-1 at least 0.8x llama.cpp at the same precision on the ~100M
model and 0.5x on `tiny`.

With ``--compile``, llmkit's frozen compiled step (serve.compile: true) is measured too, at fp32
and bf16, on the same weights (rows "fp32 compiled", "bf16 compiled").

Usage: python benchmarks/quantized_decode.py [--models 100m,tiny] [--repeats 3] [--tokens 128] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_line  # noqa: E402
from serve_load import make_model, model_config  # noqa: E402

PAIRS = (("fp32", "f32"), ("bf16", "bf16"), ("int8", "q8_0"), ("int4", "q4_0"))


def llmkit_model(directory: Path, dtype: str, compiled: bool = False) -> tuple[Any, Any, Any]:
    """The model at ``dtype`` and its decode step as `llmkit serve` builds it (serve.compile: true
    when ``compiled``: the frozen compiled step, warmed up)."""
    from llmkit.model.load import load_for_inference
    from llmkit.serving.engine import decode_step

    model, tok, _ = load_for_inference(directory, device="cpu", dtype=dtype)
    return model, tok, decode_step(model, tok, compiled=compiled, pack="auto", frozen=True)


def llmkit_decode(model: Any, tok: Any, step: Any, prompts: list[list[int]], tokens: int) -> tuple[float, float]:
    """(tokens/s after the first token, summed over rows; seconds to the first token)."""
    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=tokens, temperature=0, ignore_eos=True)
    started = time.perf_counter()
    decoder = BatchDecoder(model, tok, fast=step)
    decoder.add(prompts, [params] * len(prompts), list(range(len(prompts))))
    first = time.perf_counter()
    made = 0
    while decoder:
        made += sum(ev.token_id is not None for ev in decoder.step())
    return made / (time.perf_counter() - first), first - started


def llama_cpp_decode(llm: Any, prompt: list[int], tokens: int, banned: dict[int, float]) -> tuple[float, float]:
    started = time.perf_counter()
    stamps = []
    for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0.0, top_k=1, logit_bias=banned,
                                   stream=True):
        stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), stamps[0] - started


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


COMPILED = ("fp32", "bf16", "int8", "int4")  # serve.compile: true beside the eager step (--compile)


def bench_model(name: str, root: Path, repeats: int, tokens: int, compile: bool = False) -> None:
    import llama_cpp
    import torch

    from llmkit.exporting.gguf import export_gguf

    directory = root / name
    directory.mkdir()
    make_model(directory, model_config(name))
    threads = torch.get_num_threads()
    files = {q: export_gguf(directory, root / f"{name}.{q}.gguf", q) for _, q in PAIRS}
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for dtype, quant in PAIRS:
        model, tok, step = llmkit_model(directory, dtype)
        compiled = llmkit_model(directory, dtype, compiled=True) if compile and dtype in COMPILED else None
        docs = tok.encode("The for statement repeats a block for each item of a sequence. " * 40,
                          add_special_tokens=False)
        prompt, long_prompt = docs[:32], docs[:200]
        llm = llama_cpp.Llama(model_path=str(files[quant]), n_ctx=512, n_threads=threads, n_batch=512,
                              verbose=False)
        banned = {i: float("-inf") for i in {tok.eos_token_id, llm.token_eos()} if i is not None}
        ours, theirs = rows.setdefault(("llmkit", dtype), {}), rows.setdefault(("llama.cpp", quant), {})
        llmkit_decode(model, tok, step, [prompt], 8)  # warm both: first calls allocate and pick kernels
        llama_cpp_decode(llm, prompt, 8, banned)
        if dtype in ("int8", "int4"):
            from llmkit.wquant import describe

            print(f"{name} {dtype}: {describe(model.quantized_linear)}; {step.pack_note}")
        for _ in range(repeats):  # interleaved: llmkit, llama.cpp, llmkit 16 streams
            rate, _ = llmkit_decode(model, tok, step, [prompt], tokens)
            ours.setdefault("b1", []).append(rate)
            rate, _ = llama_cpp_decode(llm, prompt, tokens, banned)
            theirs.setdefault("b1", []).append(rate)
            _, ttft = llmkit_decode(model, tok, step, [long_prompt], 1)
            ours.setdefault("ttft", []).append(ttft * 1000)
            _, ttft = llama_cpp_decode(llm, long_prompt, 1, banned)
            theirs.setdefault("ttft", []).append(ttft * 1000)
            rate, _ = llmkit_decode(model, tok, step, [prompt] * 16, tokens)
            ours.setdefault("b16", []).append(rate)
            if compiled is not None:  # the same weights loaded again, the frozen compiled step
                mine, (cmodel, _, cstep) = rows.setdefault(("llmkit compiled", dtype), {}), compiled
                mine.setdefault("b1", []).append(llmkit_decode(cmodel, tok, cstep, [prompt], tokens)[0])
                mine.setdefault("b16", []).append(llmkit_decode(cmodel, tok, cstep, [prompt] * 16, tokens)[0])
        theirs["bytes"] = [files[quant].stat().st_size / 2**20]
        del llm, model, compiled
    print(f"\n{name}: {threads} threads, {tokens} new tokens, {repeats} repeats (median (min-max))")
    print(f"{'pair':12} {'llmkit b1 tok/s':>24} {'llama.cpp b1 tok/s':>24} {'ratio':>6} {'llmkit 16 streams':>24} "
          f"{'/ llama.cpp b1':>14} {'TTFT ms llmkit':>22} {'TTFT ms llama.cpp':>22} {'GGUF MiB':>9}")
    for dtype, quant in PAIRS:
        a, b = rows[("llmkit", dtype)], rows[("llama.cpp", quant)]
        ratio = statistics.median(a["b1"]) / statistics.median(b["b1"])
        many = statistics.median(a["b16"]) / statistics.median(b["b1"])
        print(f"{dtype + '/' + quant:12} {spread(a['b1']):>24} {spread(b['b1']):>24} {ratio:6.2f} {spread(a['b16']):>24} "
              f"{many:14.2f} {spread(a['ttft']):>22} {spread(b['ttft']):>22} {b['bytes'][0]:9.1f}")
    for dtype, quant in PAIRS:
        if ("llmkit compiled", dtype) in rows:
            a, b = rows[("llmkit compiled", dtype)], rows[("llama.cpp", quant)]
            print(f"{dtype + ' compiled':12} {spread(a['b1']):>24} {spread(b['b1']):>24} "
                  f"{statistics.median(a['b1']) / statistics.median(b['b1']):6.2f} {spread(a['b16']):>24} "
                  f"{statistics.median(a['b16']) / statistics.median(b['b1']):14.2f}")
    base = statistics.median(rows[("llmkit", "fp32")]["b1"])
    print("llmkit batch-1 vs its fp32: " + ", ".join(
        f"{d} {statistics.median(rows[('llmkit', d)]['b1']) / base:.2f}x" for d in ("bf16", "int8", "int4")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="100m,tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true",
                        help="also llmkit's frozen compiled step (serve.compile: true) at fp32 and bf16")
    args = parser.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            bench_model(name, Path(tmp), args.repeats, args.tokens, args.compile)


if __name__ == "__main__":
    main()
