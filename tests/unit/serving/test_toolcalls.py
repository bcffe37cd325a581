"""The tool-call formats: each parser reads its format's calls, leaves prose alone, calls a garbled
call garbled, holds back a call's start while streaming, and its grammar makes a random model
write calls it reads back."""

from __future__ import annotations

import json
import logging
from typing import get_args

import pytest

from llmkit.registry import TOOL_PARSERS, load
from llmkit.serving.toolcalls.base import Garbled, parser_for
from llmkit.serving.toolcalls.use import ToolStream, ToolUse

from ...tiny import tiny_llama

NAMES = {"lookup", "add"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
             "type": "object", "properties": {"statement": {"type": "string", "maxLength": 8}}, "required": ["statement"],
             "additionalProperties": False}}},
         {"type": "function", "function": {"name": "add", "parameters": {
             "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"],
             "additionalProperties": False}}}]


def parser(name: str):  # type: ignore[no-untyped-def]
    return load(TOOL_PARSERS, name, "tool-call parser", "PARSER")


# (parser, answer, content, [(name, arguments)])
READ = [
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "lookup", "arguments": {"statement": "for"}}\n</tool_call>',
     "Let me look.", [("lookup", {"statement": "for"})]),
    ("hermes", '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n<tool_call>\n'
               '{"name": "lookup", "arguments": "{\\"statement\\": \\"if\\"}"}\n</tool_call>',
     None, [("add", {"a": 1}), ("lookup", {"statement": "if"})]),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 2}}', None, [("add", {"a": 2})]),  # cut before its end tag
    ("llama3_json", '{"name": "lookup", "parameters": {"statement": "while"}}', None, [("lookup", {"statement": "while"})]),
    ("llama3_json", '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {"a": 2}}',
     None, [("add", {"a": 1}), ("add", {"a": 2})]),
    ("llama3_json", '{"name": "lookup", "parameters": {"statement": "a;b}"}}', None, [("lookup", {"statement": "a;b}"})]),
    ("mistral", '[TOOL_CALLS][{"name": "lookup", "arguments": {"statement": "try"}}]', None,
     [("lookup", {"statement": "try"})]),
    ("mistral", '[{"name": "add", "arguments": {"a": 3}}, {"name": "add", "arguments": {"a": 4}}]', None,
     [("add", {"a": 3}), ("add", {"a": 4})]),
    ("mistral", 'Sure. [TOOL_CALLS]lookup[ARGS]{"statement": "del"}', "Sure.", [("lookup", {"statement": "del"})]),
]


@pytest.mark.parametrize("name, text, content, calls", READ)
def test_each_format_reads_its_calls(name: str, text: str, content: str | None, calls: list) -> None:
    got_content, got = parser(name).parse(text, NAMES)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert all(c.id.startswith("call_") for c in got) and len({c.id for c in got}) == len(got)


@pytest.mark.parametrize("name", list(TOOL_PARSERS))
def test_prose_is_not_a_call(name: str) -> None:
    assert parser(name).parse("The for statement iterates.", NAMES) == ("The for statement iterates.", [])


GARBLED = [
    ("hermes", '<tool_call>\n{"name": "lookup", "arguments": {"statement": \n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": [1]}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call> and then some prose'),
    ("llama3_json", '{"name": "add", "parameters": {"a": 1}'),
    ("llama3_json", '{"name": 3}'),
    ("mistral", '[TOOL_CALLS]{"name": "add"}'),
    ("mistral", '[TOOL_CALLS]lookup{"statement": "x"}'),
]


@pytest.mark.parametrize("name, text", GARBLED)
def test_a_garbled_call_is_garbled(name: str, text: str) -> None:
    with pytest.raises(Garbled):
        parser(name).parse(text, NAMES)


def test_under_auto_a_garbled_call_is_text_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    use = ToolUse(parser("hermes"), frozenset(NAMES), "auto")
    text = '<tool_call>\n{"name": "rm", "arguments": {}}\n</tool_call>'
    with caplog.at_level(logging.WARNING, logger="llmkit.serving"):
        assert use.finish(text, "stop") == (text, [], "stop")
    assert "could not be read" in caplog.text


def test_parallel_false_keeps_the_first_call() -> None:
    use = ToolUse(parser("hermes"), frozenset(NAMES), "auto", parallel=False)
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    content, calls, reason = use.finish(text, "stop")
    assert reason == "tool_calls" and [json.loads(c.arguments) for c in calls] == [{"a": 1}]


@pytest.mark.parametrize("name, pieces, streamed", [
    ("hermes", ["Let me ", "check. <tool", "_call>\n{\"name\": \"add\", ", "\"arguments\": {\"a\": 1}}\n</tool_call>"],
     "Let me check."),
    ("hermes", ["Just text, <tool", "s are nice>"], "Just text, <tools are nice>"),
    ("llama3_json", ["{\"name\": \"add\", ", "\"parameters\": {\"a\": 1}}"], ""),
    ("llama3_json", ["Hello", " there"], "Hello there"),
    ("mistral", ["Ok [TOOL_", "CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1}}]"], "Ok"),
])
def test_streaming_holds_back_where_a_call_may_begin(name: str, pieces: list[str], streamed: str) -> None:
    stream = ToolStream(ToolUse(parser(name), frozenset(NAMES), "auto"))
    sent = "".join(stream.add(p) for p in pieces)
    rest, calls, reason = stream.end("stop")
    assert sent + rest == streamed
    assert (reason == "tool_calls") == bool(calls)


def test_template_detection() -> None:
    from llmkit.data.tokenizer import CHAT_TEMPLATE, PLAIN_CHAT_TEMPLATE

    assert parser_for(CHAT_TEMPLATE).name == "hermes"
    assert parser_for(PLAIN_CHAT_TEMPLATE) is None and parser_for(None) is None
    llama = "{% if tools %}{{ tools }}{% endif %}<|start_header_id|>ipython<|end_header_id|><|eot_id|>"
    assert parser_for(llama).name == "llama3_json"
    assert parser_for("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]").name == "mistral"
    assert parser_for("{{ tools }} anything", "mistral").name == "mistral"


def test_the_config_offers_every_registered_parser() -> None:
    from llmkit.config.schema import ServeConfig

    assert set(get_args(ServeConfig.model_fields["tool_parser"].annotation)) == {"auto", *TOOL_PARSERS}


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return tiny_llama(tmp_path_factory.mktemp("tok"), seed=3)


@pytest.mark.parametrize("name", list(TOOL_PARSERS))
@pytest.mark.parametrize("parallel", [False, True])
def test_each_formats_grammar_makes_calls_its_parser_reads(model_and_tokenizer, name: str, parallel: bool) -> None:
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    from llmkit.generate.decode import generate
    from llmkit.generate.sampling import SamplingParams

    model, tok = model_and_tokenizer
    p = parser(name)
    grammar = p.grammar(TOOLS, parallel, tok)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(3):
        out = generate(model, tok, [tok.encode("x")], [SamplingParams(max_new_tokens=400, temperature=1, seed=seed,
                                                                     grammar=grammar)])[0]
        assert out.finish_reason == "stop", out.text
        content, calls = p.parse(out.text, NAMES)
        assert content is None and calls and (parallel or len(calls) == 1)
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_tools_to_a_template_without_tool_support_is_a_400(model_and_tokenizer) -> None:
    from llmkit.config.schema import GenerateConfig
    from llmkit.data.tokenizer import PLAIN_CHAT_TEMPLATE
    from llmkit.serving.protocol import ChatCompletionRequest, RequestError

    _, tok = model_and_tokenizer
    req = ChatCompletionRequest.model_validate({"model": "t", "messages": [{"role": "user", "content": "hi"}],
                                                "tools": TOOLS})
    assert req.to_engine_request(tok, GenerateConfig(), 4096, 64).tools.parser.name == "hermes"
    saved, tok.chat_template = tok.chat_template, PLAIN_CHAT_TEMPLATE
    try:
        with pytest.raises(RequestError) as err:
            req.to_engine_request(tok, GenerateConfig(), 4096, 64)
    finally:
        tok.chat_template = saved
    assert err.value.param == "tools" and "no tool support" in err.value.message
