"""S8-S11 (engine errors, disconnects, overload, draining) and X1-X3 (bind, auth, path tricks)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmkit.config.schema import ServeConfig
from llmkit.errors import ConfigError
from llmkit.serving.app import ALLOW_UNAUTHENTICATED, ROUTES, canonical_path
from llmkit.serving.server import check_bind, vllm_command

from .conftest import Server, start_server, stop_server

pytestmark = pytest.mark.slow  # real servers started and stopped

# Routes a default server refuses to a caller with the key (serve.allow_adapter_loading is off).
SWITCHED_OFF = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})

BODY = {"model": "t", "prompt": "The for statement", "max_tokens": 40, "temperature": 0, "ignore_eos": True}


def gauge(server: Server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def test_s8_engine_error_mid_stream(model_dir: Path) -> None:
    server = start_server(model_dir, env={"LLMKIT_FAULT": "engine:raise@4"})
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json={**BODY, "stream": True}, timeout=60) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
        payloads = [line[6:] for line in lines]
        assert payloads[-1] != "[DONE]" and "[DONE]" not in payloads
        last = json.loads(payloads[-1])
        assert set(last["error"]) == {"message", "type", "param", "code"} and last["error"]["type"] == "server_error"
        assert sum("error" in json.loads(p) for p in payloads) == 1
        assert len(payloads) >= 3  # some tokens were streamed before the failure
        assert gauge(server, "llmkit_stream_errors_total") == 1
        ok = httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 3}, timeout=60)
        assert ok.status_code == 200  # the next request succeeds
    finally:
        stop_server(server)


def test_s9_many_streams_some_disconnect(server: Server) -> None:
    async def one(client: httpx.AsyncClient, i: int) -> str | None:
        body = {**BODY, "stream": True, "max_tokens": 30}
        async with client.stream("POST", "/v1/completions", json=body) as resp:
            assert resp.status_code == 200
            finish = None
            seen = 0
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                seen += 1
                chunk = json.loads(line[6:])
                finish = chunk["choices"][0]["finish_reason"] or finish
                if i % 20 == 0 and seen == 3:
                    return "disconnected"  # leaves the stream mid-way: the client closes it
            return finish

    async def run() -> list[str | None]:
        limits = httpx.Limits(max_connections=70)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run())
    assert results.count("disconnected") == 4
    assert all(r == "length" for i, r in enumerate(results) if i % 20)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (gauge(server, "llmkit_active_requests") or gauge(server, "llmkit_engine_requests")):
        time.sleep(0.1)
    assert gauge(server, "llmkit_active_requests") == 0 and gauge(server, "llmkit_engine_requests") == 0


def test_s10_overload_gets_429_never_5xx(model_dir: Path) -> None:
    server = start_server(model_dir, "--max-concurrency", "2", "--max-queue", "1", "--max-batch-size", "2")
    try:
        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {**BODY, "max_tokens": 60}
                return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(12)))

        responses = asyncio.run(run())
        codes = [r.status_code for r in responses]
        assert all(c in (200, 429) for c in codes) and codes.count(200) >= 3 and codes.count(429) >= 1
        for r in responses:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_exceeded"
            else:
                assert r.json()["choices"][0]["finish_reason"] == "length"
    finally:
        stop_server(server)


def test_s11_sigterm_drains_in_flight_requests(model_dir: Path) -> None:
    # each decode step sleeps 50 ms, so the 10 requests are surely in flight when SIGTERM arrives
    server = start_server(model_dir, "--drain-timeout", "60", env={"LLMKIT_FAULT": "engine:sleep=0.05"})
    results: list[int] = []

    def client() -> None:
        r = httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 60}, timeout=120)
        results.append(r.status_code if r.status_code != 200 else int(r.json()["usage"]["completion_tokens"] == 60) * 200)

    threads = [threading.Thread(target=client) for _ in range(10)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and gauge(server, "llmkit_active_requests") < 10:
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    ready = httpx.get(server.url + "/ready", timeout=10)
    late = httpx.post(server.url + "/v1/completions", json=BODY, timeout=10)
    for t in threads:
        t.join(timeout=120)
    assert ready.status_code == 503
    assert late.status_code == 503 and late.json()["error"]["type"] == "service_unavailable"
    assert results == [200] * 10  # every in-flight request finished, whole
    assert server.proc.wait(timeout=30) == 0


def test_x1_default_bind_and_public_bind_rules(model_dir: Path) -> None:
    assert ServeConfig().host == "127.0.0.1"
    with pytest.raises(ConfigError, match="without an API key"):
        check_bind(ServeConfig(host="0.0.0.0"), None)
    assert "WITHOUT authentication" in (check_bind(ServeConfig(host="0.0.0.0", allow_unauthenticated=True), None) or "")
    assert check_bind(ServeConfig(host="0.0.0.0"), "k") is None
    out = subprocess.run([sys.executable, "-m", "llmkit", "serve", str(model_dir), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "without an API key" in out.stderr  # refused before binding anything


KEY = "test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(model_dir: Path):  # type: ignore[no-untyped-def]
    s = start_server(model_dir, "--api-key-env", "LLMKIT_TEST_KEY", env={"LLMKIT_TEST_KEY": KEY})
    yield s
    stop_server(s)


def test_x2_every_route_is_classified_and_denied_without_key(keyed: Server, model_dir: Path) -> None:
    from llmkit.serving.app import State, create_app

    app = create_app(State(engine=None, tokenizer=None, model_name="t", defaults=None, config=ServeConfig()))  # type: ignore[arg-type]
    paths = {r.path for r in app.routes}
    assert paths == set(ROUTES), "a new route must be added to ROUTES and classified for auth"
    for path in ROUTES:
        method = "POST" if path.startswith("/v1/") and path != "/v1/models" else "GET"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            resp = httpx.request(method, keyed.url + path, headers=headers, json={"model": "t", "prompt": "x"})
            if path in ALLOW_UNAUTHENTICATED:
                assert resp.status_code == 200
            else:
                assert resp.status_code == 401, (path, headers, resp.status_code)
                assert resp.json()["error"]["code"] == "invalid_api_key" and KEY not in resp.text
        body = {"model": "t", "max_tokens": 2, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}
        good = httpx.request(method, keyed.url + path, headers={"Authorization": f"Bearer {KEY}"}, json=body)
        if path in SWITCHED_OFF:  # past the key, then refused by the config switch that is off by default
            assert good.status_code == 403 and good.json()["error"]["code"] == "forbidden", (path, good.text[:300])
        else:
            assert good.status_code == 200, (path, good.text[:300])


@pytest.mark.parametrize("raw", ["//v1/models", "/v1/../v1/models", "/v1%2Fmodels", "/v1/models/", "/./v1/models",
                                 "/health/../v1/models", "/%2e%2e/v1/models"])
def test_x3_path_tricks_get_the_canonical_decision(keyed: Server, raw: str) -> None:
    assert canonical_path(raw) == "/v1/models"
    with httpx.Client() as client:
        req = client.build_request("GET", keyed.url + "/")
        req.url = req.url.copy_with(raw_path=raw.encode())
        resp = client.send(req)
    assert resp.status_code == 401


def test_vllm_command_carries_the_options(tmp_path: Path) -> None:
    cfg = ServeConfig(host="127.0.0.1", port=9000, api_key_env="MY_KEY", max_batch_size=32, dtype="bf16")
    cmd = vllm_command(tmp_path / "final", cfg, "quickstart")
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[:3] == ["vllm", "serve", str(tmp_path / "final")]
    assert cmd[cmd.index("--port") + 1] == "9000" and cmd[cmd.index("--max-num-seqs") + 1] == "32"
    assert cmd[cmd.index("--api-key") + 1] == "$MY_KEY"  # the name, expanded at exec time; never the value
    assert "--enforce-eager" not in cmd  # serve.compile auto: vLLM's own compilation and CUDA graphs
    assert "--enforce-eager" in vllm_command(tmp_path, ServeConfig(compile=False), "m")
    assert "--enforce-eager" not in vllm_command(tmp_path, ServeConfig(compile=True), "m")
    out = subprocess.run([sys.executable, "-m", "llmkit", "serve", str(tmp_path), "--engine", "vllm"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (2, 3) and "Traceback" not in out.stderr


def _answers_as_eager_decoding(model_dir: Path, prompts: list[str], *flags: str, ready_within: float = 90) -> str:
    """Start ``llmkit serve *flags``; check that it answers each prompt (greedy, 16 tokens) exactly as
    llmkit's eager, unpacked decoding does, for the first alone and for all of them at once
    (decoded together); return the server's log."""
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    model, tok, _ = load_for_inference(model_dir, device="cpu")
    expected = [c.text for c in generate(model, tok, [tok.encode(p, add_special_tokens=False) for p in prompts],
                                         [SamplingParams(max_new_tokens=16, temperature=0)] * len(prompts))]
    server = start_server(model_dir, *flags, ready_within=ready_within)
    try:
        def ask(prompt: str) -> str:
            r = httpx.post(server.url + "/v1/completions", timeout=120,
                           json={"model": "t", "prompt": prompt, "max_tokens": 16, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        assert ask(prompts[0]) == expected[0]
        with ThreadPoolExecutor(len(prompts)) as pool:
            assert list(pool.map(ask, prompts)) == expected
    finally:
        stop_server(server)
    return server.proc.stderr.read()  # type: ignore[union-attr]


def test_packed_weights_serve_what_unpacked_decoding_gives(model_dir: Path, tmp_path: Path) -> None:
    """`serve --pack-weights` (every projection multiplied by its oneDNN-packed copy, in the decode
    step and in the prefill) answers what llmkit's unpacked decoding gives, for one stream and for
    several arriving together (one prefill); with --engine vllm it is refused, not ignored."""
    log = _answers_as_eager_decoding(model_dir, ["The for statement", "A class", "def main", "import os"],
                                     "--pack-weights")
    assert "projections packed for oneDNN" in log, log[-2000:]
    out = subprocess.run([sys.executable, "-m", "llmkit", "serve", str(tmp_path), "--engine", "vllm", "--pack-weights"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "serve.pack_weights: true applies to the llmkit engine" in out.stderr, out.stderr


def test_per_request_timeout(model_dir: Path) -> None:
    server = start_server(model_dir, "--set", "serve.request_timeout_s=0.5", env={"LLMKIT_FAULT": "engine:sleep=0.05"})
    try:
        slow = httpx.post(server.url + "/v1/completions", json={**BODY, "max_tokens": 60}, timeout=60)
        err = slow.json()["error"]
        assert slow.status_code == 504 and "timed out" in err["message"]
        with httpx.stream("POST", server.url + "/v1/completions", json={**BODY, "max_tokens": 60, "stream": True},
                          timeout=60) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
        assert "timed out" in json.loads(lines[-1][6:])["error"]["message"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and gauge(server, "llmkit_engine_requests"):
            time.sleep(0.1)
        assert gauge(server, "llmkit_engine_requests") == 0  # timed-out requests stopped generating
    finally:
        stop_server(server)


def test_compiled_decode_step_serves_what_eager_decoding_gives(model_dir: Path) -> None:
    """`serve --compile` compiles the decode step before it reports ready, then answers exactly what
    llmkit's eager decoding gives, for one stream and for several decoded together."""
    log = _answers_as_eager_decoding(model_dir, ["The for statement", "A class", "def main"], "--compile",
                                     ready_within=600)
    assert "decode step compiled in" in log and "decoding eagerly" not in log, log[-2000:]
