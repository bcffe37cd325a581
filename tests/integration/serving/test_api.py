"""The server against the official openai client, parity with `llmkit generate`, and S1-S7, S12."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server


def post(server: Server, path: str, body: object, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def assert_error(resp: httpx.Response, status: int, param: str | None = None) -> dict:  # type: ignore[type-arg]
    assert resp.status_code == status, resp.text[:500]
    assert len(resp.content) <= 16_384
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in err["message"] and ".py" not in err["message"]
    assert not re.search(r"(/[\w.-]+){3,}", err["message"].replace("/v1/", ""))  # no file paths
    if param is not None:
        assert err["param"] == param
    return err


def test_openai_client_completions_chat_and_streaming(server: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["t"]
    c = client.completions.create(model="t", prompt="The for statement", max_tokens=8, temperature=0)
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens <= 8
    chat = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                          temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="t", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=6, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [chat.choices[0].finish_reason]
    streamed = list(client.completions.create(model="t", prompt="A class", max_tokens=5, temperature=0, stream=True))
    plain = client.completions.create(model="t", prompt="A class", max_tokens=5, temperature=0)
    assert "".join(ch.choices[0].text for ch in streamed) == plain.choices[0].text


def test_greedy_output_equals_llmkit_generate(server: Server, model_dir) -> None:  # type: ignore[no-untyped-def]
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams
    from llmkit.model.load import load_for_inference

    model, tok, _ = load_for_inference(model_dir, device="cpu")
    for prompt in ("The while statement", "x = 1"):
        local = generate(model, tok, [tok.encode(prompt)], [SamplingParams(max_new_tokens=12, temperature=0)])[0]
        remote = post(server, "/v1/completions", {"model": "t", "prompt": prompt, "max_tokens": 12, "temperature": 0})
        assert remote.json()["choices"][0]["text"] == local.text
        assert remote.json()["choices"][0]["finish_reason"] == local.finish_reason


def test_n_choices_and_seeds(server: Server) -> None:
    body = {"model": "t", "prompt": "The", "max_tokens": 6, "temperature": 1.0, "n": 3, "seed": 7}
    a, b = post(server, "/v1/completions", body).json(), post(server, "/v1/completions", body).json()
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]


def test_s1_prompt_longer_than_context(server: Server) -> None:
    long_prompt = " ".join(f"w{i}" for i in range(200))  # far more than 64 tokens
    assert_error(post(server, "/v1/completions", {"model": "t", "prompt": long_prompt}), 400, "prompt")
    huge = "a" * (64 * 10 * 200)
    t0 = time.monotonic()
    err = assert_error(post(server, "/v1/completions", {"model": "t", "prompt": huge}), 400, "prompt")
    assert time.monotonic() - t0 < 5 and err["code"] == "context_length_exceeded"
    msgs = [{"role": "user", "content": long_prompt}]
    assert_error(post(server, "/v1/chat/completions", {"model": "t", "messages": msgs}), 400, "messages")
    assert server.alive()


def test_s2_max_tokens(server: Server) -> None:
    for bad in (0, -1):
        assert_error(post(server, "/v1/completions", {"model": "t", "prompt": "x", "max_tokens": bad}), 400, "max_tokens")
    # documented: more than the room left in the context is cut to that room, finish_reason "length"
    for big in (10**9, 64):
        body = {"model": "t", "prompt": "x", "max_tokens": big, "temperature": 0, "ignore_eos": True}
        out = post(server, "/v1/completions", body)
        assert out.status_code == 200
        choice = out.json()["choices"][0]
        assert out.json()["usage"]["completion_tokens"] <= 63
        assert choice["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("content, ctype", [
    (b"not json", "application/json"), (b"[1, 2]", "application/json"), (b"null", "application/json"),
    (b'{"model": "t", "prompt": "x"', "application/json"), (b'{"model": "t", "prompt": "x"}', "text/plain"),
    (b"[" * 100_000 + b"]" * 100_000, "application/json"), (b"", "application/json"),
])
def test_s3_malformed_bodies(server: Server, content: bytes, ctype: str) -> None:
    resp = httpx.post(server.url + "/v1/completions", content=content, headers={"content-type": ctype}, timeout=60)
    assert_error(resp, 400)
    assert server.alive()


@pytest.mark.parametrize("body, param", [
    ({"model": "t", "prompt": "x", "temperature": "hot"}, "temperature"),
    ({"model": "t", "messages": {}}, "messages"),
    ({"model": "t", "prompt": "x", "n": 1.5}, "n"),
    ({"model": "t", "prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"model": "t", "prompt": "x", "stop": [1, 2]}, "stop"),
    ({"model": 5, "prompt": "x"}, "model"),
])
def test_s4_wrong_types(server: Server, body: dict, param: str) -> None:  # type: ignore[type-arg]
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert_error(post(server, path, body), 400, param)


def test_s4_huge_numbers_and_bounded_error_bodies(server: Server) -> None:
    raw = b'{"model": "t", "prompt": "x", "temperature": 1' + b"0" * 400 + b"}"
    assert_error(httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"}),
                 400, "temperature")
    err = assert_error(post(server, "/v1/completions", {"model": "t", "prompt": "x", "stop": ["s" * 500_000]}), 400)
    assert len(err["message"]) < 4000


@pytest.mark.parametrize("raw", [
    b'{"model": "t", "prompt": "x", "temperature": -0.5}', b'{"model": "t", "prompt": "x", "temperature": 2.5}',
    b'{"model": "t", "prompt": "x", "temperature": NaN}', b'{"model": "t", "prompt": "x", "temperature": Infinity}',
    b'{"model": "t", "prompt": "x", "top_p": 0}', b'{"model": "t", "prompt": "x", "top_p": 1.5}',
    b'{"model": "t", "prompt": "x", "n": 1000000}',
])
def test_s5_out_of_range_sampling(server: Server, raw: bytes) -> None:
    t0 = time.monotonic()
    resp = httpx.post(server.url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(resp, 400)
    assert time.monotonic() - t0 < 2


@pytest.mark.parametrize("model", ["nope", "../../etc/passwd", "", "m" * 10_000])
def test_s6_unknown_models(server: Server, model: str) -> None:
    resp = post(server, "/v1/completions", {"model": model, "prompt": "x"})
    if len(model) > 256:
        assert_error(resp, 400, "model")  # too long to be any model name
    else:
        assert_error(resp, 404, "model")


def test_s7_huge_body_and_headers(server: Server) -> None:
    big = b'{"model": "t", "prompt": "' + b"a" * 10_000_000 + b'"}'
    resp = httpx.post(server.url + "/v1/completions", content=big, headers={"content-type": "application/json"},
                      timeout=60)
    assert_error(resp, 413)
    try:
        resp = httpx.get(server.url + "/health", headers={"x-big": "h" * 200_000}, timeout=30)
        assert resp.status_code in (400, 413, 431)
    except httpx.HTTPError:
        pass  # the server may just close the connection: also fine, as long as it lives on
    assert server.alive()
    ok = post(server, "/v1/completions", {"model": "t", "prompt": "x", "max_tokens": 2})
    assert ok.status_code == 200


def test_unknown_fields_accepted_and_routes_404(server: Server) -> None:
    ok = post(server, "/v1/completions", {"model": "t", "prompt": "x", "max_tokens": 2, "logit_bias": {}, "foo": 1})
    assert ok.status_code == 200
    assert_error(httpx.get(server.url + "/v1/nothing"), 404)
    assert_error(httpx.get(server.url + "/v1/completions"), 405)


bodies = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
fields = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from(["t", "x"]) | st.text(max_size=5), "prompt": st.text(max_size=30) | bodies,
    "max_tokens": st.integers(-3, 8) | bodies, "temperature": st.floats(-1, 3) | bodies, "top_p": bodies,
    "n": st.integers(-1, 3) | bodies, "stop": bodies, "stream": st.booleans() | bodies, "seed": bodies,
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "bot"]),
                                                "content": st.text(max_size=20) | bodies}), max_size=3) | bodies,
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=fields | bodies, chat=st.booleans())
def test_s12_fuzzed_bodies_never_5xx(server: Server, body: object, chat: bool) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    try:
        content = json.dumps(body).encode()
    except (ValueError, TypeError):
        return
    resp = httpx.post(server.url + path, content=content, headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code == 200:
        data = resp.text if resp.headers["content-type"].startswith("text/event-stream") else resp.json()
        if isinstance(data, dict):
            assert data["object"] in ("text_completion", "chat.completion") and data["choices"]
            assert set(data["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
        else:
            assert data.rstrip().endswith("data: [DONE]")
    else:
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


def test_s7_chunked_body_over_the_limit(server: Server) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"model": "t", "prompt": "'
        for _ in range(40):
            yield b"a" * 65536  # 2.6 MB in all, sent without a Content-Length
        yield b'"}'

    resp = httpx.post(server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                      timeout=60)
    assert_error(resp, 413)
    assert server.alive()
