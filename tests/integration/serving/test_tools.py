"""Tool calling through the official `openai` client against a real server: calls forced by
`tool_choice` (decoded under the call grammar, so a barely trained model still makes valid
calls), streamed as `tool_calls` deltas, conversations with calls and results, and the bad input
that is a 400 naming its field."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from .conftest import Server

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "Look up a Python statement in the documentation.",
    "parameters": {"type": "object", "properties": {"statement": {"type": "string", "maxLength": 10}},
                   "required": ["statement"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                    "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                   "required": ["a", "b"], "additionalProperties": False}}}
TOOLS = [LOOKUP, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What does the for statement do?"}]


@pytest.fixture(scope="module")
def client(long_server: Server) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=long_server.url + "/v1", api_key="unused", max_retries=0)


def _valid(call: Any) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_always_returns_valid_calls(client: Any, seed: int) -> None:
    """Parallel calls allowed: after each call the grammar allows another or the end of the turn."""
    out = client.chat.completions.create(model="t", messages=ASK, tools=TOOLS, tool_choice="required",
                                         max_tokens=800, temperature=1.0, seed=seed)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        _valid(call)


def test_a_named_function_is_the_one_called(client: Any) -> None:
    out = client.chat.completions.create(model="t", messages=ASK, tools=TOOLS, max_tokens=200, temperature=0.8, seed=1,
                                         tool_choice={"type": "function", "function": {"name": "add"}})
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["add"]
    _valid(calls[0])


def test_parallel_tool_calls_false_gives_one_call(client: Any) -> None:
    for seed in range(3):
        out = client.chat.completions.create(model="t", messages=ASK, tools=TOOLS, tool_choice="required",
                                             parallel_tool_calls=False, max_tokens=200, temperature=1.0, seed=seed)
        assert len(out.choices[0].message.tool_calls) == 1


def test_streamed_calls_assemble_in_the_clients_stream_helper(client: Any) -> None:
    with client.chat.completions.stream(model="t", messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=800, temperature=0.9, seed=7) as stream:
        kinds = {type(ev).__name__ for ev in stream}
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        _valid(call)
    assert "FunctionToolCallArgumentsDoneEvent" in kinds


def test_streamed_chunks_have_openais_shape(long_server: Server) -> None:
    body = {"model": "t", "messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 800,
            "temperature": 0, "stream": True, "parallel_tool_calls": False}  # greedy, this model repeats calls
    with httpx.stream("POST", long_server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0] for c in chunks]
    calls = [d["delta"]["tool_calls"][0] for d in deltas if "tool_calls" in d["delta"]]
    assert calls and [c["index"] for c in calls] == list(range(len(calls)))
    assert all(c["type"] == "function" and c["id"] and c["function"]["name"] in SCHEMAS for c in calls)
    assert deltas[-1]["finish_reason"] == "tool_calls"
    assert not any(d["delta"].get("content") for d in deltas)  # a forced call is never prose


def test_a_conversation_with_calls_and_results(client: Any) -> None:
    first = client.chat.completions.create(model="t", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=800, temperature=0, parallel_tool_calls=False)
    message = first.choices[0].message
    history = ASK + [message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": "It iterates over the items of a sequence."}
        for c in message.tool_calls]
    final = client.chat.completions.create(model="t", messages=history, tools=TOOLS, tool_choice="none",
                                           max_tokens=12, temperature=0)
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].finish_reason in ("stop", "length")


def test_auto_answers_text_or_valid_calls(client: Any) -> None:
    for seed in range(4):
        out = client.chat.completions.create(model="t", messages=ASK, tools=TOOLS, max_tokens=60,
                                             temperature=1.0, seed=seed)
        choice = out.choices[0]
        if choice.finish_reason == "tool_calls":
            for call in choice.message.tool_calls:
                _valid(call)
        else:
            assert choice.message.tool_calls is None and isinstance(choice.message.content, str)


def _post(server: Server, **body: Any) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={"model": "t", "messages": ASK, **body}, timeout=60)


def test_bad_tool_requests_are_400s_naming_the_field(long_server: Server) -> None:
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
    pattern = {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "(x"}}}}}
    cases = [({"tools": [LOOKUP, bad_schema]}, "tools[1].function.parameters"),
             ({"tools": [pattern]}, "tools[0].function.parameters"),
             ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
             ({"tool_choice": "required"}, "tool_choice"),
             ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
             ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
             ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format")]
    for extra, param in cases:
        r = _post(long_server, **extra)
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["error"]["param"] == param, (extra, r.json())
    r = httpx.post(long_server.url + "/v1/completions", json={"model": "t", "prompt": "x", "tools": TOOLS}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert long_server.alive()
