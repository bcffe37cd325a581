"""What RL's sampling costs, on this machine: llmkit's batched decoder against transformers'
``generate``, and the share of a GRPO step spent sampling.

Part 1, rollout throughput: a llama of the ``tiny`` preset's shape and a ~25 M one (random weights,
seed 0, a 4096-token BPE trained on the embedded documentation) answer P prompts G times each
(the prompts are the embedded RL questions, chat-rendered), exactly N new tokens every answer (end
tokens ignored, so both decode the same work), sampled at temperature 1: through
``llmkit.generate.batch.BatchDecoder`` (the decoder of ``serve`` and of RL's rollouts) and through
``model.generate(num_return_sequences=G, do_sample=True)``. Printed: tokens/s of each (median of
``--repeats``, with the spread) and the ratio. Target (issue 33): at least 2x.

Part 2, a GRPO step: `llmkit train` of the ``grpo/tiny`` recipe's settings on the tiny random base
for ``--steps`` steps (fp32); printed from its metrics.jsonl: the median step time, the median
sampling time per step and their ratio (the share of a step spent sampling).

Usage: python benchmarks/rl_cost.py [--prompts 8] [--group 8] [--tokens 48] [--repeats 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bases import random_llama  # noqa: E402
from machine import cpu_line  # noqa: E402

SHAPES = {
    "tiny (2.4 M)": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2,
                     "intermediate_size": 512, "max_position_embeddings": 256},
    "25 M": {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
             "intermediate_size": 1408, "max_position_embeddings": 256},
}


def prompts(tok, count: int) -> list[list[int]]:
    from llmkit.data.prompts import embedded_prompts, render

    train, _ = embedded_prompts(0.2, seed=0)
    return [render(tok, p)[0] for p in train[:count]]


def llmkit_decode(model, tok, batch: list[list[int]], group: int, tokens: int, seed: int) -> float:
    """Seconds to sample ``group`` answers of ``tokens`` tokens to each prompt with BatchDecoder."""
    import torch

    from llmkit.generate.batch import BatchDecoder
    from llmkit.generate.sampling import SamplingParams

    rows = [p for p in batch for _ in range(group)]
    params = [SamplingParams(max_new_tokens=tokens, temperature=1.0, seed=seed + i, ignore_eos=True, logprobs=0)
              for i in range(len(rows))]
    start = time.perf_counter()
    with torch.no_grad():
        decoder = BatchDecoder(model, tok, stream=False)  # as RL's rollouts decode
        decoder.add(rows, params, list(range(len(rows))))
        while len(decoder):
            decoder.step()
    return time.perf_counter() - start


def hf_generate(model, tok, batch: list[list[int]], group: int, tokens: int, seed: int) -> float:
    """The same with transformers' generate (left-padded batch, num_return_sequences)."""
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), tok.pad_token_id or 0)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch):
        ids[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                       max_new_tokens=tokens, min_new_tokens=tokens, num_return_sequences=group,
                       pad_token_id=tok.pad_token_id)
    return time.perf_counter() - start


def throughput(root: Path, args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    from llmkit.data.tokenizer import load_tokenizer

    print(f"part 1: {args.prompts} prompts x {args.group} answers x {args.tokens} tokens, fp32, sampled")
    for name, shape in SHAPES.items():
        folder = root / name.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        base = random_llama(folder, shape)
        tok = load_tokenizer(base)
        model = AutoModelForCausalLM.from_pretrained(str(base)).eval()
        batch = prompts(tok, args.prompts)
        work = args.prompts * args.group * args.tokens
        ours, theirs = [], []
        for r in range(args.repeats):  # interleaved: this machine's speed drifts
            ours.append(work / llmkit_decode(model, tok, batch, args.group, args.tokens, r))
            theirs.append(work / hf_generate(model, tok, batch, args.group, args.tokens, r))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"  {name:12} llmkit BatchDecoder {a:8.0f} tok/s ({min(ours):.0f}-{max(ours):.0f})   transformers "
              f"generate {b:8.0f} tok/s ({min(theirs):.0f}-{max(theirs):.0f})   ratio {a / b:.2f}x")


def step_share(root: Path, args: argparse.Namespace) -> None:
    import yaml

    from llmkit.config.load import load_config
    from llmkit.config.presets import load_preset
    from llmkit.data.prepare import prepare
    from llmkit.training.loop import train

    base = root / "tiny" / "base"
    cfg = load_preset("grpo/tiny")
    cfg.update({"name": "grpo", "runs_root": str(root / "runs")})
    cfg["model"] = {**cfg["model"], "from_pretrained": str(base)}
    cfg["tokenizer"] = {**cfg["tokenizer"], "path": str(base)}
    cfg["train"] = {**cfg["train"], "max_steps": args.steps, "eval_every_steps": 10_000, "eval_at_start": False,
                    "log_every_steps": 1, "checkpoint_every_steps": 10_000, "precision": "fp32"}
    path = root / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    prepare(load_config(path, environ={}))
    train(load_config(path, environ={}), log=lambda _: None)
    recs = [json.loads(x) for x in (root / "runs" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["kind"] == "train"][1:]  # the first step also warms up
    steps = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(recs, recs[1:])]
    sampling = [r["generation_s"] for r in recs[1:]]
    step, gen = statistics.median(steps), statistics.median(sampling)
    rl = cfg["train"]["rl"]
    print(f"part 2: grpo/tiny settings ({cfg['train']['global_batch_size']} answers a step, group {rl['group_size']}, "
          f"up to {rl['max_new_tokens']} tokens), {len(steps)} steps: step {step:.2f} s "
          f"({min(steps):.2f}-{max(steps):.2f}), sampling {gen:.2f} s ({min(sampling):.2f}-{max(sampling):.2f}): "
          f"{100 * gen / step:.0f}% of a step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        throughput(Path(tmp), args)
        step_share(Path(tmp), args)


if __name__ == "__main__":
    main()
