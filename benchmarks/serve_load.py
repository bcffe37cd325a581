"""Serving load: time to first token, inter-token latency, aggregate tokens/s, errors.

1. `llmkit serve` (a subprocess, 127.0.0.1 only) on the `tiny` preset's model (random weights,
   BPE tokenizer trained on the embedded corpus; 512 positions). At concurrency 1, 4, 16 and 64,
   each client streams completions of 64 tokens (end-of-text ignored) for a bounded number of
   requests; then 256-token completions at concurrency 1 and 16, where requests joining a running
   batch (and its longer KV caches) cost more.
2. The HTTP layer alone: the same app with a dummy engine that emits tokens instantly; one
   stream of 4,000 tokens shows what the server adds per token.

With --compile the server compiles its decode step first (serve.compile: true). --model 100m
serves a ~100M-parameter Llama (16 layers, hidden 768) instead of `tiny`. --pack-weights sets
serve.pack_weights (default auto, as the server's default).

Each row also shows what `llmkit plan --serve` predicts for it on this machine
(``llmkit.planning.measure.measure_cpu_serving``: the server's own decode step and forward, timed on a model
of the same shapes with a few layers)
and the ratio measured / predicted; the issue's bound is within +-30% at concurrency 1 and 16.

Usage: python benchmarks/serve_load.py [--requests-per-client 3] [--compile] [--model tiny|100m]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from llmkit.config.load import validate_config
from llmkit.config.presets import load_preset
from llmkit.config.schema import DataConfig, GenerateConfig, RunConfig, ServeConfig
from llmkit.data.corpus import iter_documents
from llmkit.data.tokenizer import load_tokenizer, train_bpe, wrap
from llmkit.generate.batch import Event
from llmkit.model.build import build_model
from llmkit.planning.measure import measure_cpu_serving
from llmkit.planning.serving import request_rates

from machine import cpu_line  # benchmarks/machine.py (scripts run from this folder)

MAX_TOKENS = 64
LONG_TOKENS = 256
PROMPT = "The for statement"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MODELS = {"tiny": {"max_position_embeddings": 512},
          "100m": {"max_position_embeddings": 512, "num_hidden_layers": 16, "hidden_size": 768,
                   "num_attention_heads": 12, "intermediate_size": 2048}}


def model_config(name: str) -> RunConfig:
    preset = load_preset("tiny")
    return validate_config({**preset, "model": {**preset["model"], **MODELS[name]}})


def make_model(directory: Path, cfg: RunConfig) -> None:
    tcfg = cfg.tokenizer
    wrap(train_bpe(iter_documents(DataConfig()), tcfg), tcfg, 512).save_pretrained(str(directory))
    tok = load_tokenizer(directory)
    model = build_model(cfg.model, len(tok), tok.eos_token_id, tok.pad_token_id, seed=0)
    model.save_pretrained(str(directory))


def predict(cfg: RunConfig, rows: list[dict[str, float]], prompt_tokens: int) -> tuple[dict[tuple[int, int], float], float]:
    """What `llmkit plan --serve` predicts for each (concurrency, completion tokens) row: aggregate
    tokens/s (greedy requests, fp32), and how long measuring this CPU took."""
    t0 = time.perf_counter()
    speed = measure_cpu_serving(cfg, "fp32", sampled=False)
    out = {(int(r["concurrency"]), int(r["max_tokens"])): request_rates(speed, int(r["concurrency"]), prompt_tokens,
                                                                        int(r["max_tokens"]))[1] for r in rows}
    return out, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def client(http: httpx.AsyncClient, n: int, stats: dict[str, list[float]], max_tokens: int) -> None:
    body = {"model": "m", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "ignore_eos": True}
    for _ in range(n):
        t0 = time.perf_counter()
        last = None
        tokens = 0
        try:
            async with http.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    stats["errors"].append(1)
                    continue
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    now = time.perf_counter()
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        stats["errors"].append(1)
                        break
                    if last is None:
                        stats["ttft"].append(now - t0)
                    else:
                        stats["itl"].append(now - last)
                    last = now
                    tokens += 1
            stats["tokens"].append(tokens)
        except httpx.HTTPError:
            stats["errors"].append(1)


async def level(url: str, concurrency: int, per_client: int, max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    stats: dict[str, list[float]] = {"ttft": [], "itl": [], "tokens": [], "errors": []}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, per_client, stats, max_tokens) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "max_tokens": max_tokens, "ttft_p50_ms": 1000 * pct(stats["ttft"], 0.5),
            "ttft_p99_ms": 1000 * pct(stats["ttft"], 0.99), "itl_p50_ms": 1000 * pct(stats["itl"], 0.5),
            "itl_p99_ms": 1000 * pct(stats["itl"], 0.99), "tokens_per_s": sum(stats["tokens"]) / wall,
            "errors": len(stats["errors"])}


class InstantEngine:
    """Emits tokens as fast as the HTTP layer can take them (no model)."""

    window, batch_size, active, queued = 100_000, 1, 0, 0

    def submit(self, prompt: list[int], params: list) -> object:  # type: ignore[type-arg]
        from llmkit.serving.engine import Handle

        handle = Handle(1, prompt, params, asyncio.get_running_loop())
        n = params[0].max_new_tokens
        for i in range(n):
            handle.queue.put_nowait(Event((1, 0), 5, "x", "length" if i == n - 1 else None))
        return handle

    def cancel(self, handle: object) -> None:
        return None


def http_layer_rate(tokenizer_dir: Path, tokens: int = 4000) -> float:
    import uvicorn

    from llmkit.serving.app import Guard, State, create_app

    tok = load_tokenizer(tokenizer_dir)
    state = State(InstantEngine(), tok, "m", GenerateConfig(), ServeConfig())  # type: ignore[arg-type]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Guard(create_app(state), state), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    body = {"model": "m", "prompt": "x", "max_tokens": tokens, "stream": True}
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        n = 0
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as resp:
            for line in resp.iter_lines():
                n += line.startswith("data: {")
        best = max(best, n / (time.perf_counter() - t0))
    server.should_exit = True
    thread.join(timeout=10)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="serve with the compiled decode step")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--pack-weights", choices=("auto", "true", "false"), default="auto",
                        help="serve.pack_weights for the server (and the plan's prediction)")
    args = parser.parse_args()
    cfg = model_config(args.model)
    pack = {"auto": "auto", "true": True, "false": False}[args.pack_weights]
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"pack_weights": pack})})
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "m"
        make_model(model_dir, cfg)
        prompt_tokens = len(load_tokenizer(model_dir).encode(PROMPT))
        first, _ = predict(cfg, [{"concurrency": c, "max_tokens": t} for c in (1, 4, 16, 64) for t in (MAX_TOKENS,)]
                           + [{"concurrency": c, "max_tokens": LONG_TOKENS} for c in (1, 16)], prompt_tokens)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", str(model_dir), "--port", str(port),
                                 "--max-concurrency", "64", "--max-batch-size", "64", "--served-model-name", "m",
                                 "--set", f"serve.pack_weights={args.pack_weights}"]
                                + (["--compile"] if args.compile else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(6000):
                try:
                    if httpx.get(url + "/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            asyncio.run(level(url, 1, 1))  # warm-up: the first request pays one-off costs
            rows = [asyncio.run(level(url, c, args.requests_per_client)) for c in (1, 4, 16, 64)]
            long_rows = [asyncio.run(level(url, c, 2, LONG_TOKENS)) for c in (1, 16)]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        second, measure_s = predict(cfg, rows + long_rows, prompt_tokens)  # the server has stopped: both alone
        predicted = {k: (v + second[k]) / 2 for k, v in first.items()}
        params = sum(p.numel() for p in build_model(cfg.model, cfg.tokenizer.vocab_size, 0, 0, seed=0).parameters())
        print(f"cpu: {cpu_line()}; model: {args.model} ({params / 1e6:.1f} M parameters, fp32); decode step: "
              f"{'compiled' if args.compile else 'eager'}; serve.pack_weights {args.pack_weights}; prompt {prompt_tokens} tokens")
        print(f"{'conc':>4} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'tok/s':>8} {'errors':>6} "
              f"{'plan':>8} {'measured/plan':>13}")
        for r in rows + long_rows:
            if r is long_rows[0]:
                print(f"{LONG_TOKENS}-token completions:")
            plan = predicted[(r["concurrency"], r["max_tokens"])]
            print(f"{r['concurrency']:4d} {r['ttft_p50_ms']:8.1f}ms {r['ttft_p99_ms']:8.1f}ms {r['itl_p50_ms']:7.1f}ms "
                  f"{r['itl_p99_ms']:7.1f}ms {r['tokens_per_s']:8.0f} {r['errors']:6d} {plan:8.0f} "
                  f"{r['tokens_per_s'] / plan:13.2f}")
        spread = max(abs(first[k] - second[k]) / predicted[k] for k in predicted)
        print("plan: llmkit plan --serve's CPU model (the server's decode step and forward timed on a few-layer "
              f"model, {measure_s:.1f} s), "
              f"the mean of a measurement before and one after the load (they differ by up to {100 * spread:.0f}%)"
              f"{'; the server ran the compiled step' if args.compile else ''}")
        by = {r["concurrency"]: r["tokens_per_s"] for r in rows}
        print(f"aggregate tokens/s, concurrency 16 / 1: {by[16] / by[1]:.1f}x (target >= 8x); errors in total: "
              f"{sum(r['errors'] for r in rows)}")
        longs = {r["concurrency"]: r["tokens_per_s"] for r in long_rows}
        print(f"{LONG_TOKENS}-token completions, concurrency 16 / 1: {longs[16] / longs[1]:.1f}x")
        print(f"HTTP layer alone (instant engine), one stream: {http_layer_rate(model_dir):.0f} tokens/s")


if __name__ == "__main__":
    main()
