"""A property over the whole request schema: no body makes the server answer 5xx or fail a stream,
and the server is healthy afterwards (10,000 bodies by default, in the slow set;
LLMKIT_FUZZ_EXAMPLES sets the count)."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server

pytestmark = pytest.mark.slow  # 10,000 request bodies

EXAMPLES = int(os.environ.get("LLMKIT_FUZZ_EXAMPLES", "10000"))

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
ids = st.integers(-3, 700)
number = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**30), 10**30)
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio", ""]) | junk},
                             optional={"text": st.text(max_size=12) | junk, "image_url": junk})
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | junk,
                                 "content": st.text(max_size=24) | st.lists(part, max_size=2) | junk},
                                optional={"name": junk, "tool_calls": junk})
FIELDS: dict[str, Any] = {
    "model": st.just("t") | st.just("t") | junk,
    "prompt": st.text(max_size=40) | st.lists(st.text(max_size=12), max_size=4) | st.lists(ids, max_size=8)
    | st.lists(st.lists(ids, max_size=5), max_size=4) | junk,
    "messages": st.lists(message, max_size=3) | junk,
    "max_tokens": st.integers(-2, 10) | junk, "max_completion_tokens": st.integers(-2, 10) | junk,
    "temperature": number | junk, "top_p": number | junk, "top_k": st.integers(-3, 10**25) | junk,
    "repetition_penalty": number | junk, "presence_penalty": number | junk, "frequency_penalty": number | junk,
    "logit_bias": st.dictionaries(ids.map(str) | st.text(max_size=5), number | junk, max_size=4) | junk,
    "n": st.integers(-1, 10) | junk, "stream": st.booleans() | junk,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | junk}) | junk,
    "stop": st.text(max_size=6) | st.lists(st.text(max_size=6), max_size=5) | junk,
    "seed": st.integers(-(10**20), 10**20) | junk, "echo": st.booleans() | junk,
    "logprobs": st.integers(-1, 7) | st.booleans() | junk, "top_logprobs": st.integers(-1, 22) | junk,
    "best_of": st.integers(-1, 4) | junk, "suffix": st.text(max_size=5) | junk, "user": st.text(max_size=5) | junk,
    "tools": junk, "tool_choice": junk, "ignore_eos": st.booleans() | junk,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])}) | junk,
}
GOOD: dict[str, Any] = {  # values a real client sends: the bodies that reach the engine
    "max_tokens": st.integers(1, 6), "temperature": st.floats(0, 2), "top_p": st.floats(0.05, 1),
    "top_k": st.integers(-1, 50), "repetition_penalty": st.floats(0.5, 2), "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2), "n": st.integers(1, 3), "stream": st.booleans(),
    "logit_bias": st.dictionaries(st.integers(0, 511).map(str), st.floats(-100, 100), max_size=3),
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=2), "seed": st.integers(0, 1000),
    "echo": st.booleans(), "logprobs": st.integers(0, 5), "ignore_eos": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
}


def _mostly_good(name: str) -> Any:
    good = GOOD.get(name)
    return st.one_of(*([good] * 6), FIELDS[name]) if good is not None else FIELDS[name]


completion = st.fixed_dictionaries(
    {"model": st.just("t"), "prompt": st.text(min_size=1, max_size=30) | st.lists(st.integers(0, 511), min_size=1,
                                                                                   max_size=8)},
    optional={k: _mostly_good(k) for k in GOOD})
chat_body = st.fixed_dictionaries(
    {"model": st.just("t"), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system"]), "content": st.text(min_size=1, max_size=20)}), min_size=1,
        max_size=2)},
    optional={**{k: _mostly_good(k) for k in GOOD if k not in ("echo", "logprobs")},
              "logprobs": st.booleans(), "top_logprobs": st.integers(0, 5) | FIELDS["top_logprobs"]})
bodies = completion | chat_body | st.fixed_dictionaries({}, optional=FIELDS) | junk


@pytest.mark.slow
def test_no_body_breaks_the_server(server: Server) -> None:
    client = httpx.Client(base_url=server.url, timeout=120)
    seen = {"2xx": 0, "4xx": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(body=bodies, chat=st.booleans())
    def one(body: object, chat: bool) -> None:
        try:
            content = json.dumps(body).encode()
        except (ValueError, TypeError, RecursionError):
            return
        if isinstance(body, dict) and ("messages" in body) != ("prompt" in body):
            chat = "messages" in body  # a well-formed body goes to its endpoint; junk to either
        resp = client.post("/v1/chat/completions" if chat else "/v1/completions", content=content,
                           headers={"content-type": "application/json"})
        assert resp.status_code < 500, (body, resp.text[:300])
        seen["2xx" if resp.status_code < 300 else "4xx"] += 1
        if resp.status_code != 200:
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        elif resp.headers["content-type"].startswith("text/event-stream"):
            assert resp.text.rstrip().endswith("data: [DONE]") and '"error"' not in resp.text, (body, resp.text[-300:])
        else:
            data = resp.json()
            assert data["choices"] and data["usage"]["total_tokens"] >= data["usage"]["prompt_tokens"]

    one()
    print(f"\nfuzz: {sum(seen.values())} bodies, {seen['2xx']} answered 200, {seen['4xx']} refused with 4xx, 0 5xx")
    assert seen["2xx"] > EXAMPLES // 50  # the strategy reaches generation, not only validation errors
    assert server.alive()
    ok = client.post("/v1/completions", json={"model": "t", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200
