"""Prefix caching through the real server: requests sharing a long system prompt reuse its KV
(`/metrics` shows the hits and the cached tokens), and answer exactly as a server without the
cache does (greedy tokens equal, log-probabilities within 1e-4 in fp32)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import start_server, stop_server

SYSTEM = " ".join(f"Rule {i}: answer questions about the Python language briefly and exactly." for i in range(12))
QUESTIONS = ["What is a list?", "What does the for statement do?", "Explain generators.", "What is a tuple?"]


def _ask(url: str, question: str) -> dict[str, Any]:
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "t", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 16, "temperature": 0, "logprobs": True, "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def _metrics(url: str) -> dict[str, float]:
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return {k: float(v) for k, v in (ln.split(" ") for ln in lines if ln.startswith("llmkit_prefix_cache"))}


def test_shared_system_prompt_hits_and_answers_the_same(long_model_dir: Path) -> None:
    cached = start_server(long_model_dir)
    plain = start_server(long_model_dir, "--set", "serve.prefix_cache_mb=0")
    try:
        with_cache = [_ask(cached.url, q) for q in QUESTIONS]
        without = [_ask(plain.url, q) for q in QUESTIONS]
        metrics = _metrics(cached.url)
        assert _metrics(plain.url) == {}
        kv = [float(ln.split(" ")[1]) for ln in httpx.get(cached.url + "/metrics", timeout=10).text.splitlines()
              if ln.startswith("llmkit_kv_cache_bytes ")]
    finally:
        stop_server(cached)
        stop_server(plain)
    for a, b in zip(with_cache, without):
        assert a["message"]["content"] == b["message"]["content"]
        lp_a = [t["logprob"] for t in a["logprobs"]["content"]]
        lp_b = [t["logprob"] for t in b["logprobs"]["content"]]
        assert len(lp_a) == len(lp_b) == 16 and max(abs(x - y) for x, y in zip(lp_a, lp_b)) < 1e-4
    assert metrics["llmkit_prefix_cache_cached_tokens"] > 0.5 * (metrics["llmkit_prefix_cache_queried_tokens"]
                                                                  * (len(QUESTIONS) - 1) / len(QUESTIONS))
    assert 0 < metrics["llmkit_prefix_cache_hit_rate"] < 1
    assert 0 < metrics["llmkit_prefix_cache_bytes"] <= metrics["llmkit_prefix_cache_budget_bytes"] == 256 * 2**20
    config = json.loads((long_model_dir / "final" / "config.json").read_text())
    per_position = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * (
        config["hidden_size"] // config["num_attention_heads"]) * 4 + 8  # keys and values in fp32, the ownership
    assert len(kv) == 1 and 0 < kv[0] <= per_position * 16 * (2048 + 2)  # the batch's KV: at most slots x context


def test_a_dropped_unstreamed_request_is_stopped_and_forgotten(long_model_dir: Path) -> None:
    """A client that goes away before a non-streamed answer is done: the server stops generating it,
    counts it out, and logs no error (its disconnect path once raised inside its own cleanup:
    "aclose(): asynchronous generator is already running", found by benchmarks/serve_soak.py)."""
    import time

    server = start_server(long_model_dir)
    body = {"model": "t", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Go on."}],
            "max_tokens": 1500, "ignore_eos": True, "temperature": 0}
    try:
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.5))
        deadline = time.monotonic() + 20
        gauges: dict[str, float] = {}
        while time.monotonic() < deadline:
            lines = httpx.get(server.url + "/metrics", timeout=10).text.splitlines()
            gauges = {k: float(v) for k, v in (ln.split(" ") for ln in lines
                                               if ln.startswith(("llmkit_active_requests", "llmkit_engine_requests")))}
            if gauges == {"llmkit_active_requests": 0.0, "llmkit_engine_requests": 0.0}:
                break
            time.sleep(0.2)
        assert gauges == {"llmkit_active_requests": 0.0, "llmkit_engine_requests": 0.0}
    finally:
        stop_server(server)
    log = server.proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
