"""Every OpenAI field llmkit's server implements, through the official `openai` client, against the
model run directly; and every known field it does not implement refused with a 400 naming it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Server, start_server, stop_server

PROMPT = "The for statement is used to iterate"


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def local(model_dir: Path) -> tuple[Any, Any]:
    from llmkit.model.load import load_for_inference

    model, tok, _ = load_for_inference(model_dir, device="cpu")
    return model, tok


def _forward_log_probs(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)


def _greedy(model: Any, ids: list[int], steps: int, adjust: Any = None) -> list[int]:
    """Greedy decoding by plain forward passes; ``adjust(logits, generated)`` changes the logits."""
    import torch

    out: list[int] = []
    for _ in range(steps):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        if adjust is not None:
            logits = adjust(logits, out)
        out.append(int(logits.argmax()))
    return out


def test_echo_logprobs_equal_a_direct_forward_pass(client: Any, local: tuple[Any, Any]) -> None:
    model, tok = local
    ids = tok.encode(PROMPT, add_special_tokens=False)
    c = client.completions.create(model="t", prompt=PROMPT, max_tokens=0, echo=True, logprobs=3, temperature=0)
    choice = c.choices[0]
    assert choice.text == PROMPT and c.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
    direct = _forward_log_probs(model, ids)
    worst = max(abs(lp.token_logprobs[j] - float(direct[j - 1, ids[j]])) for j in range(1, len(ids)))
    print(f"\necho logprobs vs direct forward: largest difference {worst:.2e} over {len(ids) - 1} tokens")
    assert worst < 1e-4
    assert "".join(lp.tokens) == PROMPT and lp.text_offset[0] == 0
    assert all(PROMPT[o:].startswith(t) for o, t in zip(lp.text_offset, lp.tokens))
    for j in range(1, len(ids)):
        best = max(lp.top_logprobs[j].values())
        assert len(lp.top_logprobs[j]) <= 3 and abs(best - float(direct[j - 1].max())) < 1e-4


def test_generated_logprobs_and_echo_with_generation(client: Any, local: tuple[Any, Any]) -> None:
    model, tok = local
    ids = tok.encode(PROMPT, add_special_tokens=False)
    c = client.completions.create(model="t", prompt=PROMPT, max_tokens=6, logprobs=2, temperature=0, echo=True,
                                  extra_body={"ignore_eos": True})
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 6 and c.choices[0].text.startswith(PROMPT)
    generated = tok.encode(c.choices[0].text[len(PROMPT):], add_special_tokens=False)
    direct = _forward_log_probs(model, ids + generated[:6])
    for k in range(6):  # greedy: each generated token is the top alternative, with the forward pass's logprob
        pos = len(ids) + k
        assert abs(lp.token_logprobs[pos] - float(direct[pos - 1].max())) < 1e-4
        assert max(lp.top_logprobs[pos].values()) == lp.token_logprobs[pos]
    assert lp.text_offset[len(ids)] == len(PROMPT)


def test_streamed_logprobs_match_the_whole_response(client: Any) -> None:
    body = dict(model="t", prompt=PROMPT, max_tokens=8, logprobs=1, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**body).choices[0].logprobs
    chunks = list(client.completions.create(**body, stream=True))
    streamed = [x for ch in chunks if ch.choices[0].logprobs for x in ch.choices[0].logprobs.token_logprobs]
    assert streamed == whole.token_logprobs and len(streamed) == 8
    chat = dict(model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
                logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    one = client.chat.completions.create(**chat).choices[0].logprobs.content
    parts = [x for ch in client.chat.completions.create(**chat, stream=True)
             if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.content]
    assert [(p.token, p.logprob) for p in parts] == [(p.token, p.logprob) for p in one] and len(one) == 6
    for item in one:
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob == item.logprob  # greedy
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token or item.token.startswith("bytes:")


def test_prompt_lists_are_batched_in_order(client: Any, local: tuple[Any, Any]) -> None:
    _, tok = local
    prompts = ["The while statement", "x = 1", "A class is"]
    many = client.completions.create(model="t", prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in many.choices] == list(range(6))
    for i, p in enumerate(prompts):
        one = client.completions.create(model="t", prompt=p, max_tokens=5, temperature=0).choices[0].text
        assert many.choices[2 * i].text == one and many.choices[2 * i + 1].text == one
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    by_ids = client.completions.create(model="t", prompt=ids, max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == [many.choices[2 * i].text for i in range(3)]
    assert by_ids.usage.prompt_tokens == sum(map(len, ids))


def test_penalties_and_logit_bias_equal_their_definitions(client: Any, local: tuple[Any, Any]) -> None:
    import torch

    model, tok = local
    ids = tok.encode(PROMPT, add_special_tokens=False)

    def remote(**kw: Any) -> list[int]:
        text = client.completions.create(model="t", prompt=PROMPT, max_tokens=10, temperature=0,
                                         extra_body={"ignore_eos": True}, **kw).choices[0].text
        return tok.encode(text, add_special_tokens=False)

    def penalized(presence: float, frequency: float) -> Any:
        def adjust(logits: Any, out: list[int]) -> Any:
            counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float() \
                if out else torch.zeros_like(logits)
            return logits - counts * frequency - (counts > 0).float() * presence
        return adjust

    plain = _greedy(model, ids, 10)
    for presence, frequency in ((1.5, 0.0), (0.0, 2.0), (0.7, 0.7)):
        expected = tok.encode(tok.decode(_greedy(model, ids, 10, penalized(presence, frequency))),
                              add_special_tokens=False)
        assert remote(presence_penalty=presence, frequency_penalty=frequency) == expected
    banned = plain[0]
    assert banned not in remote(logit_bias={str(banned): -100})
    forced = tok.encode(" class", add_special_tokens=False)[0]
    assert set(remote(logit_bias={str(forced): 100})) == {forced}


@pytest.mark.parametrize(("path", "extra", "param"), [
    ("/v1/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("/v1/chat/completions", {"tool_choice": "required"}, "tool_choice"),  # without tools
    ("/v1/completions", {"response_format": {"type": "json_object"}}, "response_format"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, "messages"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"audio": {"voice": "alloy"}}, "audio"),
    ("/v1/chat/completions", {"store": True}, "store"),
    ("/v1/completions", {"best_of": 3}, "best_of"),
    ("/v1/completions", {"suffix": "end"}, "suffix"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ("/v1/completions", {"logit_bias": {"999999": 5}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"abc": 5}}, "logit_bias"),
    ("/v1/completions", {"max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": ["a"] * 40}, "prompt"),
    ("/v1/completions", {"prompt": ["a"] * 10, "n": 8}, "n"),
])
def test_known_fields_not_implemented_are_refused(server: Server, path: str, extra: dict, param: str) -> None:  # type: ignore[type-arg]
    body = {"model": "t", "max_tokens": 2}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "x"})
    body.update(extra)
    resp = httpx.post(server.url + path, json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_off_values_are_accepted(server: Server) -> None:
    body = {"model": "t", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2,
            "response_format": {"type": "text"}, "tool_choice": "none", "store": False, "user": "u1"}
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_unknown_fields_are_logged_once_at_warning(model_dir: Path) -> None:
    server = start_server(model_dir)
    try:
        for _ in range(3):
            ok = httpx.post(server.url + "/v1/completions", json={"model": "t", "prompt": "x", "max_tokens": 1,
                                                                   "mirostat_tau": 5, "guided_json": {}}, timeout=60)
            assert ok.status_code == 200
    finally:
        stop_server(server)
    err = server.proc.stderr.read()  # type: ignore[union-attr]
    lines = [line for line in err.splitlines() if "ignored unknown request fields" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "guided_json, mirostat_tau" in lines[0], err[-2000:]


def test_logprobs_are_finite_and_normalized(server: Server) -> None:
    resp = httpx.post(server.url + "/v1/completions", json={"model": "t", "prompt": PROMPT, "max_tokens": 3,
                                                            "logprobs": 5, "temperature": 1.0, "seed": 3}, timeout=60)
    lp = resp.json()["choices"][0]["logprobs"]
    for value, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert math.isfinite(value) and value <= 0 and len(top) == 5
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
    assert json.dumps(lp)  # plain JSON
