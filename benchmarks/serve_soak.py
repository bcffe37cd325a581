"""Soak: a real `llmkit serve` under 16 streams of mixed requests for a long time.

16 clients send, one after another, a mix of plain chat completions, streamed ones, tool calls
(`tool_choice` required and auto) and JSON-schema outputs, all with one of two long shared system
prompts (so the prefix cache is hit, filled and evicted); 5% of the requests are dropped by their
client mid-answer. Every 30 s it reads the server's resident memory (/proc) and /metrics. At the
end it prints the count of each status, the 5xx count (target 0), the resident memory's growth
after the first minute (target under 5%) and the largest prefix-cache size seen against its budget
(target: within it). The model is the tiny llama of benchmarks/serve_load.py with a 1,024-token
context; the server is started with `serve.prefix_cache_mb` small enough that eviction happens.

Usage: python benchmarks/serve_soak.py [--minutes 20] [--streams 16] [--cache-mb 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_line  # noqa: E402
from serve_load import MODELS, free_port, make_model, model_config  # noqa: E402

SYSTEMS = [" ".join(f"Rule {i}: answer about Python {kind}." for i in range(40)) for kind in ("briefly", "exactly")]
TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look up a topic.", "parameters": {
    "type": "object", "properties": {"topic": {"type": "string", "maxLength": 12}}, "required": ["topic"],
    "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["loop", "branch"]}, "size": {"type": "integer",
          "minimum": 0, "maximum": 99}}, "required": ["kind", "size"], "additionalProperties": False}


def body(rng: random.Random) -> tuple[str, dict]:
    kind = rng.choice(["plain", "stream", "tool_required", "tool_auto", "json"])
    out = {"model": "soak", "max_tokens": rng.choice([16, 32, 64]), "temperature": rng.choice([0, 0.8]),
           "messages": [{"role": "system", "content": rng.choice(SYSTEMS)},
                        {"role": "user", "content": f"Question {rng.randrange(10**6)}: what does for do?"}]}
    if kind == "stream":
        out["stream"] = True
    elif kind.startswith("tool"):
        out.update(tools=[TOOL], tool_choice="required" if kind == "tool_required" else "auto", max_tokens=64)
    elif kind == "json":
        out.update(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}, max_tokens=64)
    return kind, out


async def client(url: str, seed: int, until: float, statuses: Counter) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while time.monotonic() < until:
            kind, payload = body(rng)
            drop = rng.random() < 0.05
            try:
                async with http.stream("POST", "/v1/chat/completions", json=payload) as resp:
                    async for _ in resp.aiter_bytes():
                        if drop:
                            break  # the client goes away mid-answer
                statuses["dropped" if drop else resp.status_code] += 1
            except httpx.HTTPError as exc:
                statuses[f"client error {type(exc).__name__}"] += 1


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cache_bytes(url: str) -> tuple[float, float, float]:
    """The prefix cache's bytes and budget, and the running batch's KV cache bytes, from /metrics
    ((-1, -1, -1) when /metrics did not answer in 30 s)."""
    try:
        lines = httpx.get(url + "/metrics", timeout=30).text.splitlines()
    except httpx.HTTPError:
        return -1.0, -1.0, -1.0
    values = dict(ln.split(" ") for ln in lines if ln.startswith("llmkit_") and " " in ln)
    return (float(values.get("llmkit_prefix_cache_bytes", 0)), float(values.get("llmkit_prefix_cache_budget_bytes", 0)),
            float(values.get("llmkit_kv_cache_bytes", 0)))


async def soak(url: str, pid: int, minutes: float, streams: int) -> None:
    statuses: Counter = Counter()
    start = time.monotonic()
    until = start + 60 * minutes
    tasks = [asyncio.ensure_future(client(url, s, until, statuses)) for s in range(streams)]
    samples: list[tuple[float, int]] = []
    largest = budget = 0.0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(min(30, max(1, until - time.monotonic())))
        used, seen_budget, kv = await asyncio.to_thread(cache_bytes, url)
        if used < 0:
            statuses["/metrics did not answer"] += 1
        budget = max(budget, seen_budget)
        largest = max(largest, used)
        samples.append((time.monotonic() - start, rss(pid)))
        print(f"{samples[-1][0] / 60:5.1f} min: RSS {samples[-1][1] / 2**20:7.1f} MiB, prefix cache {used / 2**20:.2f} "
              f"MiB, batch KV cache {kv / 2**20:.1f} MiB, {sum(statuses.values())} requests", flush=True)
    await asyncio.gather(*tasks)
    after_first = [m for t, m in samples if t >= 60] or [m for _, m in samples]
    growth = after_first[-1] / after_first[0] - 1
    errors = sum(n for s, n in statuses.items() if isinstance(s, int) and s >= 500)
    print(f"statuses: {dict(statuses)}")
    print(f"5xx: {errors} (target 0); RSS growth after the first minute: {100 * growth:+.1f}% (target under 5%); "
          f"prefix cache largest {largest / 2**20:.2f} MiB of a {budget / 2**20:.2f} MiB budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--cache-mb", type=float, default=4)
    args = parser.parse_args()
    print(cpu_line())
    MODELS["tiny"] = {**MODELS["tiny"], "max_position_embeddings": 1024}
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp), model_config("tiny"))
        port = free_port()
        # the server's log goes to a file: a pipe nobody reads fills up and blocks the server's writes
        log_file = open(Path(tmp) / "server.log", "w+")  # noqa: SIM115 - read back at the end
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", tmp, "--port", str(port), "--served-model-name",
                                 "soak", "--max-concurrency", "32", "--set", f"serve.prefix_cache_mb={args.cache_mb}"],
                                stdout=subprocess.DEVNULL, stderr=log_file, text=True, env=dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            print(f"server ready; {args.streams} streams for {args.minutes} min")
            asyncio.run(soak(url, proc.pid, args.minutes, args.streams))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log_file.seek(0)
            err = log_file.read()
            log_file.close()
            tracebacks = err.count("Traceback")
            print(f"server log: {tracebacks} tracebacks, {err.count('WARNING')} warnings" + (
                "\n" + err[-3000:] if tracebacks else ""))
            # what the warnings say, numbers and quoted text masked, most frequent first
            kinds = Counter(re.sub(r"\d+|'[^']*'|\"[^\"]*\"", "#", ln.split("WARNING", 1)[1])[:100]
                            for ln in err.splitlines() if "WARNING" in ln)
            for kind, n in kinds.most_common(5):
                print(f"  {n} x WARNING{kind}")


if __name__ == "__main__":
    main()
