"""Structured outputs through the official `openai` client: `response_format` json_schema and
json_object, decoded under the schema's grammar. The model is barely trained: the constraint, not
the model, makes every answer valid (schemas bound their strings so that a weak model ends them)."""

from __future__ import annotations

import json
import threading
from typing import Any, Literal, Optional

import httpx
import pytest
from pydantic import BaseModel, ConfigDict, Field

from .conftest import Server

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false (a weak model would add keys)
    label: str = Field(max_length=6)
    ok: bool


class Record(BaseModel):
    """Nested objects, an enum, arrays with bounds, an optional field and a string with a pattern."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["loop", "branch", "class"]
    code: str = Field(pattern=r"^[A-Z]{2}[0-9]{2}$")
    tags: list[Literal["a", "b", "c"]] = Field(min_length=1, max_length=3)
    parts: list[Part] = Field(min_length=1, max_length=2)
    note: Optional[str] = Field(None, max_length=5)
    size: int = Field(ge=0, le=999)


@pytest.fixture(scope="module")
def client(long_server: Server) -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=long_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("temperature, seed", [(0, None), (1.0, 1), (1.0, 2)])
def test_parse_returns_a_valid_object(client: Any, temperature: float, seed: int | None) -> None:
    out = client.chat.completions.parse(model="t", messages=[{"role": "user", "content": "Describe the for statement."}],
                                        response_format=Record, max_tokens=300, temperature=temperature, seed=seed)
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Record)
    assert Record.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_schema_with_n_choices_and_streaming(client: Any) -> None:
    schema = Record.model_json_schema()
    fmt = {"type": "json_schema", "json_schema": {"name": "record", "schema": schema}}
    out = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}], response_format=fmt,
                                         n=3, max_tokens=300, temperature=1.0, seed=4)
    for choice in out.choices:
        jsonschema.validate(json.loads(choice.message.content), schema)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="t", messages=[{"role": "user", "content": "x"}], response_format=fmt, max_tokens=300, stream=True,
        temperature=0.9, seed=5) if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_json_object_mode(client: Any) -> None:
    out = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}],
                                         response_format={"type": "json_object"}, max_tokens=200, temperature=0)
    text = out.choices[0].message.content
    assert text.startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("schema, part", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "bogus"}}}, "bogus"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "/$defs/missing"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(open"}}}, "unclosed group"),
    ({"type": "strng"}, "strng"),
])
def test_a_schema_that_cannot_be_compiled_is_a_400_naming_the_part(long_server: Server, schema: dict, part: str) -> None:
    r = httpx.post(long_server.url + "/v1/chat/completions", json={
        "model": "t", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format" and part in err["message"]


def test_bad_response_formats_are_400s(long_server: Server) -> None:
    base = {"model": "t", "messages": [{"role": "user", "content": "x"}]}
    cases = [({"response_format": {"type": "xml"}}, "response_format"),
             ({"response_format": {"type": "json_schema"}}, "response_format"),
             ({"response_format": {"type": "json_object"}, "ignore_eos": True}, "ignore_eos")]
    for extra, param in cases:
        r = httpx.post(long_server.url + "/v1/chat/completions", json={**base, **extra}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
    r = httpx.post(long_server.url + "/v1/completions", json={"model": "t", "prompt": "x",
                                                                "response_format": {"type": "json_object"}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


def test_constrained_and_free_requests_share_the_batch(client: Any, long_server: Server) -> None:
    """A free greedy request answers the same alone and beside constrained requests."""
    ask = {"model": "t", "messages": [{"role": "user", "content": "What is a loop?"}], "max_tokens": 24, "temperature": 0}
    alone = client.chat.completions.create(**ask).choices[0].message.content
    results: list[Any] = []

    def constrained() -> None:
        results.append(client.chat.completions.parse(model="t", messages=[{"role": "user", "content": "x"}],
                                                     response_format=Record, max_tokens=300, temperature=1, seed=9))

    threads = [threading.Thread(target=constrained) for _ in range(4)]
    for t in threads:
        t.start()
    beside = client.chat.completions.create(**ask).choices[0].message.content
    for t in threads:
        t.join()
    assert beside == alone
    assert len(results) == 4 and all(isinstance(r.choices[0].message.parsed, Record) for r in results)
