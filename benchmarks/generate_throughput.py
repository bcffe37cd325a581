"""Generation throughput: llmkit's decode loop vs Hugging Face `model.generate`, same model.

The `tiny` preset's shape (4 layers, hidden 192, vocabulary 4096) with 512 positions, random
weights, fp32 on the CPU. Greedy, 128 new tokens (end-of-text ignored on both sides so every
run makes exactly 128), batch 1 and batch 8, interleaved repeats. Then time to first token for a
200-token prompt (llmkit: until the first streamed event) vs one bare forward pass over it.

Rows: llmkit through the model's own forward (``--no-fast``'s path, what any architecture gets),
llmkit's decode step (Llama-family models: llmkit.generate.fastpath), the same step compiled
(``serve.compile: true``; its compile time printed), and HF generate.

Usage: python benchmarks/generate_throughput.py [--repeats 3] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from llmkit.config.schema import DataConfig, ModelConfig, TokenizerConfig
from llmkit.data.corpus import iter_documents
from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap
from llmkit.generate.batch import BatchDecoder
from llmkit.generate.decode import stream
from llmkit.generate.fastpath import DecodeStep
from llmkit.generate.sampling import SamplingParams
from llmkit.model.build import build_model

NEW = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled step's row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TokenizerConfig(vocab_size=4096)
        wrap(train_bpe(iter_documents(DataConfig()), cfg), cfg, 512).save_pretrained(tmp)
        tok = load_tokenizer(tmp)
    model = build_model(ModelConfig(max_position_embeddings=512), 4096, tok.eos_token_id, tok.pad_token_id, seed=0)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    docs = list(iter_documents(DataConfig()))
    prompt = tok.encode(docs[5], add_special_tokens=False)[:32]
    long_prompt = tok.encode(docs[7], add_special_tokens=False)[:200]
    params = SamplingParams(max_new_tokens=NEW, temperature=0, ignore_eos=True)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, fp32, "
          f"{torch.get_num_threads()} threads; prompt {len(prompt)} tokens, {NEW} new tokens")

    def decode(batch: int, fast: DecodeStep | bool) -> float:
        t0 = time.perf_counter()
        decoder = BatchDecoder(model, tok, fast=fast)
        events = decoder.add([prompt] * batch, [params] * batch, list(range(batch)))
        while decoder:
            events += decoder.step()
        assert sum(ev.token_id is not None for ev in events) == NEW * batch
        return NEW * batch / (time.perf_counter() - t0)

    def ours(batch: int) -> float:  # what `llmkit generate` runs (stream: the decode step where the model has one)
        t0 = time.perf_counter()
        n = sum(1 for ev in stream(model, tok, [prompt] * batch, [params] * batch) if ev.token_id is not None)
        assert n == NEW * batch, n
        return NEW * batch / (time.perf_counter() - t0)

    modes = {"llmkit forward": lambda b: decode(b, False), "llmkit step": ours}
    if not args.no_compile:
        compiled = DecodeStep(model)
        compiled.compile()
        t0 = time.perf_counter()
        decode(1, compiled), decode(2, compiled)
        print(f"compiled decode step: compiled in {time.perf_counter() - t0:.0f} s (batch of one, dynamic batch)")
        modes["llmkit compiled"] = lambda b: decode(b, compiled)

    def hf(batch: int) -> float:
        ids = torch.tensor([prompt] * batch)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                                 do_sample=False, eos_token_id=None)
        assert out.shape[1] - ids.shape[1] == NEW
        return NEW * batch / (time.perf_counter() - t0)

    for batch in (1, 8, 16):
        hf(batch)  # warm-up
        rates: dict[str, list[float]] = {"HF generate": [], **{m: [] for m in modes}}
        for m, fn in modes.items():
            fn(batch)
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every row alike
            rates["HF generate"].append(hf(batch))
            for m, fn in modes.items():
                rates[m].append(fn(batch))
        h = statistics.median(rates["HF generate"])
        print(f"batch {batch:2d}: " + " | ".join(f"{m} {statistics.median(r):7.1f} tok/s ({statistics.median(r) / h:.2f}x)"
                                             for m, r in rates.items()))
    print("target: batch-1 decode >= 1.3x HF generate (issue #18)")

    def ttft() -> float:
        t0 = time.perf_counter()
        next(iter(stream(model, tok, [long_prompt], [params])))
        return time.perf_counter() - t0

    def forward() -> float:
        ids = torch.tensor([long_prompt])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids)
        return time.perf_counter() - t0

    ttft(), forward()
    t_first = statistics.median(ttft() for _ in range(args.repeats * 3))
    t_fwd = statistics.median(forward() for _ in range(args.repeats * 3))
    print(f"time to first token, {len(long_prompt)}-token prompt: llmkit {1000 * t_first:.1f} ms | bare forward "
          f"{1000 * t_fwd:.1f} ms | ratio {t_first / t_fwd:.2f}x")


if __name__ == "__main__":
    main()
