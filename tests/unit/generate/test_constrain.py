"""Constrained decoding on a random model: the grammar, not the model, makes the output valid; rows
without a grammar decode as if the constrained rows were not there; a failing grammar ends its row alone."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from llmkit.generate import constrain  # noqa: E402
from llmkit.generate.batch import BatchDecoder  # noqa: E402
from llmkit.generate.constrain import GrammarError, check_grammar, json_schema_grammar, lark_grammar, lark_json  # noqa: E402
from llmkit.generate.decode import generate  # noqa: E402
from llmkit.generate.sampling import SamplingParams  # noqa: E402

from ...tiny import tiny_llama  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["loop", "branch", "class"]},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,4}$"}, "minItems": 1, "maxItems": 3},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                   "additionalProperties": False},
    },
    "required": ["name", "kind", "tags", "count", "nested"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return tiny_llama(tmp_path_factory.mktemp("tok"))


def test_every_sampled_answer_is_valid_json_of_the_schema(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    grammar = json_schema_grammar(SCHEMA)
    prompts = [tok.encode("The for statement")] * 6
    params = [SamplingParams(max_new_tokens=200, temperature=1.0, seed=s, grammar=grammar) for s in range(5)]
    params.append(SamplingParams(max_new_tokens=200, temperature=0, grammar=grammar, repetition_penalty=1.3))
    for out in generate(model, tok, prompts, params):
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out.text), SCHEMA)


def test_json_mode_gives_an_object(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    grammar = json_schema_grammar(None)
    out = generate(model, tok, [tok.encode("x")], [SamplingParams(max_new_tokens=300, temperature=0.7, seed=1,
                                                                 grammar=grammar)])[0]
    if out.finish_reason == "stop":  # a random model may run out of tokens inside a long string
        assert isinstance(json.loads(out.text), dict)
    else:
        assert out.text.startswith("{")


def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    plain = [SamplingParams(max_new_tokens=30, temperature=0), SamplingParams(max_new_tokens=30, temperature=1, seed=3)]
    prompts = [tok.encode("The while statement"), tok.encode("class")]
    alone = generate(model, tok, prompts, plain)
    grammar = json_schema_grammar(SCHEMA)
    mixed = generate(model, tok, [prompts[0], tok.encode("x"), prompts[1]],
                     [plain[0], SamplingParams(max_new_tokens=60, temperature=0, grammar=grammar), plain[1]])
    assert [m.token_ids for m in (mixed[0], mixed[2])] == [a.token_ids for a in alone]
    assert mixed[1].text.startswith("{")


def test_a_failing_grammar_ends_its_row_alone(model_and_tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = model_and_tokenizer
    grammar = json_schema_grammar(SCHEMA)
    real = constrain.Constraint.fill
    calls = {"n": 0}

    def flaky(self, bitmask, row):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise GrammarError("injected")
        return real(self, bitmask, row)

    monkeypatch.setattr(constrain.Constraint, "fill", flaky)
    decoder = BatchDecoder(model, tok)
    decoder.add([tok.encode("x"), tok.encode("y")], [SamplingParams(max_new_tokens=40, temperature=0, grammar=grammar),
                                                     SamplingParams(max_new_tokens=10, temperature=0)], ["g", "p"])
    events = []
    while decoder:
        events += decoder.step()
    errors = [e for e in events if e.finish_reason == "error"]
    assert [e.key for e in errors] == ["g"] and "injected" in errors[0].error
    assert [e.finish_reason for e in events if e.key == "p"][-1] in ("length", "stop")


def test_tool_call_grammar_in_lark(model_and_tokenizer) -> None:
    model, tok = model_and_tokenizer
    args = {"type": "object", "properties": {"q": {"type": "string", "maxLength": 6}}, "required": ["q"],
            "additionalProperties": False}
    grammar = lark_grammar('start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: '
                           + lark_json({"type": "object", "properties": {"name": {"const": "lookup"}, "arguments": args},
                                        "required": ["name", "arguments"], "additionalProperties": False}))
    for seed in range(3):
        out = generate(model, tok, [tok.encode("x")], [SamplingParams(max_new_tokens=80, temperature=1, seed=seed,
                                                                     grammar=grammar)])[0]
        assert out.finish_reason == "stop"
        body = out.text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>")
        call = json.loads(body)
        assert call["name"] == "lookup" and len(call["arguments"]["q"]) <= 6


@pytest.mark.parametrize("schema, part", [
    ({"type": "object", "properties": {"x": {"type": "string", "format": "bogus"}}}, "bogus"),
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/nope"}}}, "/$defs/nope"),
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "(unclosed"}}}, "unclosed"),
])
def test_a_schema_the_engine_cannot_compile_names_the_part(model_and_tokenizer, schema, part) -> None:
    _, tok = model_and_tokenizer
    with pytest.raises(GrammarError, match=part.replace("$", r"\$")):
        check_grammar(json_schema_grammar(schema), tok)


def test_ignore_eos_with_a_grammar_is_refused() -> None:
    from llmkit.errors import UsageError

    with pytest.raises(UsageError, match="ignore_eos"):
        SamplingParams(grammar="x", ignore_eos=True)


def test_allowed_tokens_unpacks_bits() -> None:
    mask = torch.tensor([[0b101, 0], [-1, 1]], dtype=torch.int32)
    allowed = constrain.allowed_tokens(mask, 70)
    assert allowed.shape == (2, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2]
    assert allowed[1].nonzero().flatten().tolist() == list(range(33))
