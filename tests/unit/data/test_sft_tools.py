"""SFT examples with tools: OpenAI messages with tool_calls and tool results, ShareGPT's
function_call/observation turns, LLaMA-Factory's tools as JSON text; rendered through the chat
template's tools support, trained on the assistant's calls and text only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmkit.data.sft import encode_example, examples_of, segments
from llmkit.errors import UsageError

LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look up a topic.",
                                           "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}}}}
OPENAI = {"tools": [LOOKUP], "messages": [
    {"role": "user", "content": "What does for do?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"topic\": \"for\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "It iterates."},
    {"role": "assistant", "content": "It iterates over a sequence."}]}
SHAREGPT = {"tools": json.dumps([LOOKUP["function"]]), "conversations": [
    {"from": "human", "value": "What does for do?"},
    {"from": "function_call", "value": json.dumps({"name": "lookup", "arguments": {"topic": "for"}})},
    {"from": "observation", "value": "It iterates."},
    {"from": "gpt", "value": "It iterates over a sequence."}]}


def _one(obj):  # type: ignore[no-untyped-def]
    return next(examples_of(iter([("line 1", obj)])))


def test_openai_and_sharegpt_tool_examples_read_the_same() -> None:
    _, shape_a, msgs_a, tools_a = _one(OPENAI)
    _, shape_b, msgs_b, tools_b = _one(SHAREGPT)
    assert (shape_a, shape_b) == ("messages", "sharegpt")
    assert tools_a == tools_b == [LOOKUP]
    strip = [{k: v for k, v in m.items() if k != "tool_call_id"} for m in msgs_a]
    assert strip == msgs_b
    assert msgs_a[1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": {"topic": "for"}}


def test_calls_and_answers_are_trained_tool_results_are_not(tokenizer) -> None:
    _, _, msgs, tools = _one(OPENAI)
    ids, mask = encode_example(tokenizer, msgs, tools)
    trained = tokenizer.decode([int(i) for i, m in zip(ids, mask) if m])
    assert trained == ('<tool_call>\n{"name": "lookup", "arguments": {"topic": "for"}}\n</tool_call><|im_end|>\n'
                       "It iterates over a sequence.<|im_end|>\n")
    whole = tokenizer.decode(ids.tolist())
    assert whole == tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False)
    assert "<tools>" in whole and '"name": "lookup"' in whole and "<tool_response>\nIt iterates.\n</tool_response>" in whole
    assert [t for _, t in segments(tokenizer, msgs, tools)] == [False, True, False, True]


def test_the_trained_call_is_what_the_server_parses(tokenizer) -> None:
    from llmkit.serving.toolcalls.base import parser_for

    _, _, msgs, tools = _one(OPENAI)
    ids, mask = encode_example(tokenizer, msgs, tools)
    first_turn = tokenizer.decode([int(i) for i, m in zip(ids, mask) if m]).split("<|im_end|>")[0]
    content, calls = parser_for(tokenizer.chat_template).parse(first_turn, {"lookup"})
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("lookup", {"topic": "for"})]


@pytest.mark.parametrize("change, match", [
    (lambda o: o["messages"][1]["tool_calls"][0]["function"].update(name="rm"), "not in the example's tools"),
    (lambda o: o["messages"][1]["tool_calls"][0]["function"].update(arguments="{oops"), "not valid JSON"),
    (lambda o: o["messages"][1]["tool_calls"][0]["function"].update(arguments="[1]"), "must be a JSON object"),
    (lambda o: o.update(tools="not json"), "not valid JSON"),
    (lambda o: o.update(tools=[{"description": "no name"}]), "without a string 'name'"),
    (lambda o: o["messages"][2].pop("content"), "field 'content' is missing"),
])
def test_bad_tool_examples_name_the_line(change, match: str) -> None:
    obj = json.loads(json.dumps(OPENAI))
    change(obj)
    with pytest.raises(UsageError, match=match) as err:
        _one(obj)
    assert "line 1" in str(err.value.summary)


def test_tools_with_a_template_without_tool_support_are_refused(tokenizer) -> None:
    from llmkit.data.tokenizer import PLAIN_CHAT_TEMPLATE

    _, _, msgs, tools = _one(OPENAI)
    saved = tokenizer.chat_template
    tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    try:
        with pytest.raises(UsageError, match="no tool support"):
            encode_example(tokenizer, msgs, tools)
    finally:
        tokenizer.chat_template = saved


def test_a_tool_call_turn_without_text_is_not_an_empty_answer(tokenizer) -> None:
    from llmkit.data.sft import check_example
    from llmkit.data.tokenizer import turn_end_ids

    _, _, msgs, tools = _one(OPENAI)
    ids, mask = encode_example(tokenizer, msgs, tools)
    assert check_example(msgs, ids, mask, 4096, turn_end_ids(tokenizer), lambda t: tokenizer.decode([t])) == []


def test_embedded_tool_conversations_are_seeded_and_held_out_phrasings_are_new() -> None:
    from llmkit.data.phrasings import HELD_OUT_FORMS, TRAIN_FORMS
    from llmkit.data.toolchats import embedded_tool_examples, held_out_conversations

    a, b = embedded_tool_examples(1), embedded_tool_examples(1)
    assert a == b and a != embedded_tool_examples(2)
    calls = [m for ex in a for m in ex["messages"] if m.get("tool_calls")]
    assert len(calls) > 400 and all(c["tool_calls"][0]["function"]["name"] == "lookup" for c in calls)
    questions = {ex["messages"][0]["content"] for ex in a}
    held = held_out_conversations()
    assert held and not questions & {conv[0]["content"] for conv, _ in held}
    assert not set(TRAIN_FORMS) & set(HELD_OUT_FORMS)
    assert any(topic == "for" for _, topic in held)
    assert np.mean([topic in conv[0]["content"] for conv, topic in held]) == 1.0  # the argument is in the question
